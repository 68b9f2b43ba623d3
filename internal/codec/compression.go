package codec

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Compression names the algorithm that compresses an object's body. The
// numeric values are stored in the object header (see docs/object-format.md)
// and never change.
type Compression uint8

// The supported algorithms. The zero value is None.
const (
	None Compression = 0 // body stored as is
	LZ4  Compression = 1 // LZ4 frame format (github.com/pierrec/lz4/v4)
	Zstd Compression = 2 // Zstandard frames (github.com/klauspost/compress/zstd)
	Gzip Compression = 3 // gzip, RFC 1952 (github.com/klauspost/compress/gzip)
)

// compressionNames are the names String prints and ParseCompression
// accepts, by value.
var compressionNames = [...]string{None: "none", LZ4: "lz4", Zstd: "zstd", Gzip: "gzip"}

// String returns the lower-case name ParseCompression accepts: "none", "lz4",
// "zstd" or "gzip"; an unknown value prints as "compression(N)".
func (c Compression) String() string {
	if !c.valid() {
		return "compression(" + strconv.Itoa(int(c)) + ")"
	}
	return compressionNames[c]
}

func (c Compression) valid() bool { return int(c) < len(compressionNames) }

// ChecksContent reports whether c's stream carries a checksum of the raw
// content that walferry's readers verify: zstd frames (XXH64; walferry's
// writers always set the frame's content checksum) and gzip members
// (CRC-32). For those, an object needs no raw SHA-256 (Options.NoRawSum)
// for its content to be verified on every read.
func (c Compression) ChecksContent() bool { return c == Zstd || c == Gzip }

// maxLevel is the highest level of any algorithm (zstd's).
const maxLevel = 22

// defaultLevel is the level 0 stands for: lz4's fast compressor (0), zstd
// 3, gzip 6.
func (c Compression) defaultLevel() int {
	switch c {
	case Zstd:
		return 3
	case Gzip:
		return 6
	}
	return 0
}

// levelRange returns the explicit levels c accepts; 0 always means the
// algorithm's default and is not part of the range.
func (c Compression) levelRange() (lo, hi int) {
	switch c {
	case LZ4:
		return 1, 9 // lz4 HC levels; 0 is the fast compressor
	case Zstd:
		return 1, maxLevel
	case Gzip:
		return 1, 9
	}
	return 0, 0
}

// ParseCompression parses a compression spec as given on the command line or in
// configuration: "none", "lz4", "zstd", "gzip", optionally followed by ":LEVEL"
// ("zstd:19", "gzip:9", "lz4:9"). Case and surrounding blanks are ignored. The
// returned level is 0 when the spec names none (meaning the algorithm's
// default), otherwise it is within the algorithm's range: lz4 1..9, zstd 1..22,
// gzip 1..9. "none" takes no level.
func ParseCompression(s string) (Compression, int, error) {
	spec := strings.ToLower(strings.TrimSpace(s))
	name, lvl, hasLevel := strings.Cut(spec, ":")
	i := slices.Index(compressionNames[:], name)
	if i < 0 {
		return 0, 0, fmt.Errorf("codec: unknown compression %q (want none, lz4, zstd or gzip, optionally with :LEVEL)", s)
	}
	c := Compression(i)
	if !hasLevel {
		return c, 0, nil
	}
	level, err := strconv.Atoi(lvl)
	if err != nil {
		return 0, 0, fmt.Errorf("codec: compression %q: level %q is not a number", s, lvl)
	}
	if err := checkLevel(c, level); err != nil || level == 0 {
		if err == nil {
			err = fmt.Errorf("codec: compression %q: level 0 is not a level (omit it for the default)", s)
		}
		return 0, 0, err
	}
	return c, level, nil
}

// checkLevel reports whether level is valid for c (0 = default is always valid).
func checkLevel(c Compression, level int) error {
	if level == 0 {
		return nil
	}
	lo, hi := c.levelRange()
	if lo == 0 {
		return fmt.Errorf("codec: compression %s takes no level (got %d)", c, level)
	}
	if level < lo || level > hi {
		return fmt.Errorf("codec: %s level %d out of range %d..%d", c, level, lo, hi)
	}
	return nil
}
