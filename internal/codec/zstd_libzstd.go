//go:build cgo && !walferry_purego

package codec

import (
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

// newZstdDecoder returns a libzstd decoder; it refuses windows above
// 8 MiB, which bounds its memory.
func newZstdDecoder() (plainDecoder[*libzstd.Decoder], error) {
	zr, err := libzstd.NewDecoder()
	return plainDecoder[*libzstd.Decoder]{zr}, err
}
