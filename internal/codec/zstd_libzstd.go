//go:build cgo && !walferry_purego

package codec

import (
	"bufio"

	"github.com/walferry/walferry/internal/libzstd"
)

// ZstdImplementation names the zstd code this binary was built with (for
// `walferry version`): "libzstd 1.5.7" here.
func ZstdImplementation() string { return "libzstd " + libzstd.Version() }

// zstdEncoder is the zstd compressor of this build.
type zstdEncoder = *libzstd.Encoder

// newZstdEncoder returns a libzstd encoder for level (1..22). Its frames
// carry the content checksum, which lets readers verify the content
// without hashing it again with SHA-256 (reader.go).
func newZstdEncoder(level int) (zstdEncoder, error) { return libzstd.NewEncoder(level) }

type zstdDec struct {
	*libzstd.Decoder
}

func (d zstdDec) Drain() *bufio.Reader { return nil }

// getZstdDecompressor returns a pooled libzstd decoder reading fr; it
// refuses windows above 8 MiB, which bounds its memory.
func (c *Codec) getZstdDecompressor(fr *frameReader) (decompressor, func(), error) {
	var zr *libzstd.Decoder
	if c != nil {
		zr, _ = c.zstdR.Get().(*libzstd.Decoder)
	}
	if zr == nil {
		var err error
		if zr, err = libzstd.NewDecoder(); err != nil {
			return nil, nil, err
		}
	}
	zr.Reset(fr)
	return zstdDec{zr}, func() {
		zr.Reset(nil)
		if c != nil {
			c.zstdR.Put(zr)
		}
	}, nil
}
