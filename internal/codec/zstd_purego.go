//go:build !cgo || walferry_purego

package codec

import (
	"bufio"
	"io"

	"github.com/klauspost/compress/zstd"
)

// ZstdImplementation names the zstd code this binary was built with (for
// `walferry version`): the pure-Go one in builds without cgo.
func ZstdImplementation() string { return "pure Go (github.com/klauspost/compress/zstd)" }

// zstdWindow is the encoder's window and the decoder's limit, as libzstd's
// (internal/libzstd.MaxWindowLog).
const zstdWindow = 8 << 20

// zstdEncoder is the zstd compressor of this build.
type zstdEncoder = *zstd.Encoder

// newZstdEncoder returns an encoder for level (1..22, mapped to the
// pure-Go encoder's four speeds).
func newZstdEncoder(level int) (zstdEncoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow),
		// The frame's content checksum (XXH64 of the raw bytes, about 1%
		// of the encoder's time) lets readers verify the content without
		// hashing it again with SHA-256 (reader.go).
		zstd.WithEncoderCRC(true),
		zstd.WithZeroFrames(true),
	)
}

// zstdDecoder is the pure-Go zstd decoder as a pooledDecoder: its Reset
// reads the frame header and can fail.
type zstdDecoder struct{ *zstd.Decoder }

func (d zstdDecoder) Drain() *bufio.Reader    { return nil }
func (d zstdDecoder) start(r io.Reader) error { return d.Reset(r) }
func (d zstdDecoder) stop()                   { _ = d.Reset(nil) }

// newZstdDecoder returns a decoder limited to an 8 MiB window.
func newZstdDecoder() (zstdDecoder, error) {
	zr, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(zstdWindow),
		zstd.WithDecoderMaxMemory(zstdWindow),
	)
	return zstdDecoder{zr}, err
}
