// Package pgcontrol reads a data directory's global/pg_control and
// PG_VERSION: it checks the control file (layout version, byte order,
// float format, CRC-32C) and gives the cluster's identity. It imports only
// the standard library, so walferry-hook reads the identity without
// linking pgx; package pg decodes the rest of the file on top of it and
// re-exports what is here.
package pgcontrol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Path is the control file's path inside a data directory.
const Path = "global/pg_control"

// Size is the physical size of global/pg_control (PG_CONTROL_FILE_SIZE);
// only its first few hundred bytes are used.
const Size = 8192

// Offsets of the fields this package reads, the same in every supported
// layout. Derived from ControlFileData in src/include/catalog/pg_control.h
// with 8-byte alignment of 64-bit fields (every 64-bit platform PostgreSQL
// supports); package pg has the others.
const (
	OffSystemIdentifier = 0
	OffControlVersion   = 8
	OffCatalogVersion   = 12
	OffFloatFormat      = 208
	OffWALSegSize       = 228
)

// floatFormatValue is FLOATFORMAT_VALUE, stored to detect a foreign layout.
const floatFormatValue = 1234567.0

// Layout gives the byte offsets of ControlFileData's fields that differ
// between pg_control versions (13 and later, 64-bit builds).
type Layout struct {
	WALLevelInCheckpoint bool // CheckPoint.wal_level at 60 (17+)
	CharSignedness       int  // offset of default_char_signedness, or -1
	Nonce                int
	CRC                  int
}

// layouts maps pg_control_version to its layout.
var layouts = map[uint32]Layout{
	1300: {CharSignedness: -1, Nonce: 256, CRC: 288},                              // 13, 14, 15, 16
	1700: {WALLevelInCheckpoint: true, CharSignedness: -1, Nonce: 256, CRC: 288},  // 17
	1800: {WALLevelInCheckpoint: true, CharSignedness: 256, Nonce: 257, CRC: 292}, // 18
}

// releaseCatalogVersions are the catalog versions of released majors that
// share pg_control version 1300, newest last.
var releaseCatalogVersions = []struct {
	major   int
	catalog uint32
}{
	{13, 202007201},
	{14, 202107181},
	{15, 202209061},
	{16, 202307071},
}

// MajorFromControlVersion infers the PostgreSQL major version from
// pg_control_version and catalog_version_no. It is exact for released
// versions; a development or beta build maps to the release whose catalog
// version is the first at or above its own.
func MajorFromControlVersion(controlVersion, catalogVersion uint32) (int, error) {
	switch controlVersion {
	case 1300:
		for _, r := range releaseCatalogVersions {
			if catalogVersion <= r.catalog {
				return r.major, nil
			}
		}
		return 16, nil
	case 1700:
		return 17, nil
	case 1800:
		return 18, nil
	}
	return 0, fmt.Errorf("pg: unsupported pg_control version %d: walferry reads PostgreSQL 13 to 18", controlVersion)
}

// ErrCRC is returned (wrapped) when the control file's CRC does not match
// its content.
var ErrCRC = errors.New("control file CRC mismatch")

// File is a control file whose version, byte order, float format and CRC
// were checked.
type File struct {
	Data    []byte // the bytes read, at least up to the CRC
	Order   binary.ByteOrder
	Version uint32 // pg_control_version
	Layout  Layout
}

// Uint32 and Uint64 read the field at off in the file's byte order.
func (f *File) Uint32(off int) uint32 { return f.Order.Uint32(f.Data[off:]) }
func (f *File) Uint64(off int) uint64 { return f.Order.Uint64(f.Data[off:]) }

// SystemIdentifier, CatalogVersion and WALSegmentSize (xlog_seg_size,
// bytes) are the fields of the same names.
func (f *File) SystemIdentifier() uint64 { return f.Uint64(OffSystemIdentifier) }
func (f *File) CatalogVersion() uint32   { return f.Uint32(OffCatalogVersion) }
func (f *File) WALSegmentSize() uint32   { return f.Uint32(OffWALSegSize) }

// DetectLayout finds the byte order in which pg_control_version names a
// supported layout. b must hold at least OffControlVersion+4 bytes.
func DetectLayout(b []byte) (binary.ByteOrder, Layout, uint32, error) {
	for _, order := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
		v := order.Uint32(b[OffControlVersion:])
		if l, ok := layouts[v]; ok {
			return order, l, v, nil
		}
	}
	v := binary.LittleEndian.Uint32(b[OffControlVersion:])
	return nil, Layout{}, 0, fmt.Errorf("pg: unsupported pg_control version %d: walferry reads PostgreSQL 13 to 18", v)
}

// Parse checks the bytes of a pg_control file (at least the used part;
// normally all 8192 bytes): it detects the byte order, checks the layout
// version, the CRC-32C and the float-format sentinel, and fails with a
// clear error on a short, foreign or corrupt file.
func Parse(b []byte) (*File, error) {
	if len(b) < OffCatalogVersion+4 {
		return nil, fmt.Errorf("pg: control file is %d bytes, too short to hold a version", len(b))
	}
	order, layout, version, err := DetectLayout(b)
	if err != nil {
		return nil, err
	}
	if len(b) < layout.CRC+4 {
		return nil, fmt.Errorf("pg: control file is %d bytes, shorter than the %d bytes of pg_control version %d", len(b), layout.CRC+4, version)
	}
	want := order.Uint32(b[layout.CRC:])
	if got := crc32.Checksum(b[:layout.CRC], crc32.MakeTable(crc32.Castagnoli)); got != want {
		return nil, fmt.Errorf("pg: %w: computed %08X, stored %08X (corrupt file, or read while being written)", ErrCRC, got, want)
	}
	if f := math.Float64frombits(order.Uint64(b[OffFloatFormat:])); f != floatFormatValue {
		return nil, fmt.Errorf("pg: control file float format check failed (got %v): written by an incompatible build (32-bit or other alignment?)", f)
	}
	return &File{Data: b, Order: order, Version: version, Layout: layout}, nil
}

// readAttempts is how often ReadFile rereads a file whose CRC does not
// match: a running server rewrites pg_control in place, so a read can race
// with a write.
const readAttempts = 3

// ReadFile reads and checks the control file at path.
func ReadFile(path string) (*File, error) {
	var lastErr error
	for range readAttempts {
		b, err := readHead(path, Size)
		if err != nil {
			return nil, fmt.Errorf("pg: read control file %s: %w", path, err)
		}
		f, err := Parse(b)
		if err == nil {
			return f, nil
		}
		lastErr = fmt.Errorf("pg: control file %s: %w", path, err)
		if !errors.Is(err, ErrCRC) {
			break
		}
	}
	return nil, lastErr
}

// readHead reads up to n bytes from the start of path.
func readHead(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	got, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:got], nil
}

// ReadDataDir reads dataDir's global/pg_control and PG_VERSION, and
// returns the control file and the major version of PG_VERSION, which is
// authoritative and must agree with the control file's version.
func ReadDataDir(dataDir string) (*File, int, error) {
	f, err := ReadFile(filepath.Join(dataDir, Path))
	if err != nil {
		return nil, 0, err
	}
	major, err := ReadPGVersion(dataDir)
	if err != nil {
		return nil, 0, err
	}
	if err := CheckMajor(major, f.Version); err != nil {
		return nil, 0, fmt.Errorf("pg: data directory %s: %w", dataDir, err)
	}
	return f, major, nil
}

// CheckMajor fails when pg_control version controlVersion does not belong
// to the major version major.
func CheckMajor(major int, controlVersion uint32) error {
	ok := false
	switch controlVersion {
	case 1300:
		ok = major >= 13 && major <= 16
	case 1700:
		ok = major == 17
	case 1800:
		ok = major == 18
	}
	if !ok {
		return fmt.Errorf("PG_VERSION says %d but pg_control version %d does not belong to that major", major, controlVersion)
	}
	return nil
}

// ReadPGVersion returns the major version in dataDir/PG_VERSION ("15").
func ReadPGVersion(dataDir string) (int, error) {
	path := filepath.Join(dataDir, "PG_VERSION")
	b, err := readHead(path, 64)
	if err != nil {
		return 0, fmt.Errorf("pg: read %s: %w", path, err)
	}
	major, err := ParsePGVersion(b)
	if err != nil {
		return 0, fmt.Errorf("pg: %s: %w", path, err)
	}
	return major, nil
}

// ParsePGVersion parses the content of a PG_VERSION file: a major version
// ("15") followed by a newline; pre-10 versions ("9.6") give 9.
func ParsePGVersion(b []byte) (int, error) {
	s := strings.TrimSpace(string(bytes.TrimRight(b, "\x00")))
	major, _, _ := strings.Cut(s, ".")
	n, err := strconv.Atoi(major)
	if err != nil || n <= 0 || len(major) > 3 {
		return 0, fmt.Errorf("invalid PG_VERSION content %q", s)
	}
	return n, nil
}

// Identity is what tells one cluster from another: what a repository
// records and what the hooks hand the daemon.
type Identity struct {
	SystemIdentifier uint64
	Major            int   // from PG_VERSION
	WALSegmentSize   int64 // bytes, as recorded (not validated)
}

// ReadIdentity reads the identity of the cluster in dataDir, as
// ReadDataDir checks it.
func ReadIdentity(dataDir string) (Identity, error) {
	f, major, err := ReadDataDir(dataDir)
	if err != nil {
		return Identity{}, err
	}
	return Identity{SystemIdentifier: f.SystemIdentifier(), Major: major, WALSegmentSize: int64(f.WALSegmentSize())}, nil
}
