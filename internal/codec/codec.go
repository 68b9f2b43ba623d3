// Package codec implements walferry's self-verifying object format: every
// object stored in a repository (WAL segment, backup file, manifest) is a small
// header, the compressed and optionally encrypted body cut into checked
// records, and a trailer carrying the length and SHA-256 of the raw bytes.
//
// Writers and Readers stream: memory per Writer or Reader is bounded by the
// record size (64 KiB) and the compressor's window and block buffers (zstd:
// windows of at most 8 MiB, 2 MiB at level 3 with libzstd; lz4: 64 KiB
// blocks written, at most 4 MiB accepted; gzip: 32 KiB), plus two 256 KiB pieces while io.Copy runs through Writer.ReadFrom
// or Reader.WriteTo; never by the object size.
//
// Every byte of an object is covered by a check. A Reader reports any damage
// (one flipped bit anywhere, truncation, appended bytes) with an error matching
// ErrCorrupt, and returns io.EOF only after the whole object verified. The byte
// layout is documented in docs/object-format.md.
package codec

import (
	"bufio"
	"io"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/pierrec/lz4/v4"
)

// Codec creates Writers and Readers and recycles their compressors,
// decompressors and buffers between objects, which matters when thousands of
// 16 MiB WAL segments go through one process. Resources return to the Codec
// when a Writer is closed, and when a Reader ends (io.EOF or an error) or is
// closed. Idle resources are dropped by the garbage collector like any
// sync.Pool content.
//
// A Codec is safe for concurrent use. The zero Codec is ready to use and must
// not be copied after first use. A nil *Codec is valid too and pools nothing:
// every Writer and Reader allocates its own resources.
type Codec struct {
	writers [Gzip + 1][maxLevel + 1]sync.Pool // compressors by algorithm and level
	readers [Gzip + 1]sync.Pool               // decompressors by algorithm
	bufs    sync.Pool                         // *[]byte record buffers for the default record size
	pipes   sync.Pool                         // *[]byte of pipeBufSize for Writer.ReadFrom, Reader.WriteTo
}

// pipeBufSize is the piece size of Writer.ReadFrom and Reader.WriteTo.
const pipeBufSize = 256 << 10

func (c *Codec) getPipeBuf() []byte {
	if c != nil {
		if p, ok := c.pipes.Get().(*[]byte); ok {
			return *p
		}
	}
	return make([]byte, pipeBufSize)
}

func (c *Codec) putPipeBuf(b []byte) {
	if c != nil && len(b) == pipeBufSize {
		c.pipes.Put(&b)
	}
}

// New returns a Codec with empty pools.
func New() *Codec { return &Codec{} }

func (c *Codec) getBuf(size int) []byte {
	if c != nil && size == recordBufSize(1<<defaultChunkLg) {
		if p, ok := c.bufs.Get().(*[]byte); ok {
			return *p
		}
	}
	return make([]byte, size)
}

func (c *Codec) putBuf(b []byte) {
	if c != nil && len(b) == recordBufSize(1<<defaultChunkLg) {
		c.bufs.Put(&b)
	}
}

// recordBufSize is the buffer that holds one whole record of chunk bytes.
func recordBufSize(chunk int) int { return recordHeaderSize + chunk + tagSize }

// compressor is what every encoder offers.
type compressor interface {
	Write(p []byte) (int, error)
	Close() error
}

// getCompressor returns a compressor for c/level writing to w, and a function
// returning it to the pool. level has been validated.
func (c *Codec) getCompressor(alg Compression, level int, w *frameWriter) (compressor, func(), error) {
	if level == 0 {
		level = alg.defaultLevel()
	}
	var pool *sync.Pool
	if c != nil {
		pool = &c.writers[alg][level]
	}
	switch alg {
	case LZ4:
		return pooledCompressor(pool, w, func() (*lz4.Writer, error) {
			zw := lz4.NewWriter(nil)
			lvl := lz4.Fast
			if level > 0 {
				lvl = lz4.Level1 << (level - 1)
			}
			return zw, zw.Apply(
				lz4.BlockSizeOption(lz4.Block64Kb),
				lz4.ChecksumOption(false), // the object's own checks cover it
				lz4.ConcurrencyOption(1),
				lz4.CompressionLevelOption(lvl),
			)
		})
	case Zstd:
		return pooledCompressor(pool, w, func() (zstdEncoder, error) { return newZstdEncoder(level) })
	case Gzip:
		return pooledCompressor(pool, w, func() (*gzip.Writer, error) { return gzip.NewWriterLevel(nil, level) })
	}
	return nil, func() {}, nil
}

// pooledCompressor takes a compressor from pool (nil for a nil Codec,
// which pools nothing) or makes one, points it at w, and returns it with
// the function that detaches it and puts it back.
func pooledCompressor[T interface {
	compressor
	Reset(io.Writer)
}](pool *sync.Pool, w io.Writer, make func() (T, error)) (compressor, func(), error) {
	zw, err := fromPool(pool, make)
	if err != nil {
		return nil, nil, err
	}
	zw.Reset(w)
	return zw, func() {
		zw.Reset(nil)
		toPool(pool, zw)
	}, nil
}

// fromPool takes a T from pool, or makes one when pool is empty or nil (a
// nil Codec pools nothing).
func fromPool[T any](pool *sync.Pool, make func() (T, error)) (T, error) {
	if pool != nil {
		if v, ok := pool.Get().(T); ok {
			return v, nil
		}
	}
	return make()
}

// toPool puts v back into pool, unless pool is nil.
func toPool(pool *sync.Pool, v any) {
	if pool != nil {
		pool.Put(v)
	}
}

// decompressor reads the raw stream out of a record stream.
type decompressor interface {
	// Read reads decompressed bytes.
	Read(p []byte) (int, error)
	// Drain is the reader that holds whatever the decompressor has not
	// consumed; after the end of the compressed stream it must be empty.
	Drain() *bufio.Reader
}

// pooledDecoder is a decompressor a Codec recycles: start points it at a
// record stream (gzip reads its header there), stop detaches it, which
// resets it whatever state a stream left it in.
type pooledDecoder interface {
	decompressor
	start(r io.Reader) error
	stop()
}

// plainDecoder is a pooledDecoder for a decoder whose Reset cannot fail and
// that keeps nothing read ahead a caller could check (lz4's, libzstd's).
type plainDecoder[D interface {
	Read(p []byte) (int, error)
	Reset(r io.Reader)
}] struct{ d D }

func (p plainDecoder[D]) Read(b []byte) (int, error) { return p.d.Read(b) }
func (p plainDecoder[D]) Drain() *bufio.Reader       { return nil }
func (p plainDecoder[D]) start(r io.Reader) error    { p.d.Reset(r); return nil }
func (p plainDecoder[D]) stop()                      { p.d.Reset(nil) }

// gzipDec reads gzip through a buffer of its own, which Drain returns.
type gzipDec struct {
	zr *gzip.Reader
	br *bufio.Reader
}

func (d *gzipDec) Read(p []byte) (int, error) { return d.zr.Read(p) }
func (d *gzipDec) Drain() *bufio.Reader       { return d.br }
func (d *gzipDec) stop()                      { d.br.Reset(nil) }

func (d *gzipDec) start(r io.Reader) error {
	d.br.Reset(r)
	if err := d.zr.Reset(d.br); err != nil {
		return err // a bad or missing gzip header
	}
	d.zr.Multistream(false)
	return nil
}

// getDecompressor returns a decompressor for alg reading from fr and a
// function that resets it (in whatever state a stream left it) and returns it
// to the pool.
func (c *Codec) getDecompressor(alg Compression, fr *frameReader) (decompressor, func(), error) {
	var pool *sync.Pool
	if c != nil {
		pool = &c.readers[alg]
	}
	switch alg {
	case LZ4:
		return pooledDecompressor(pool, fr, func() (plainDecoder[*lz4.Reader], error) {
			zr := lz4.NewReader(nil)
			return plainDecoder[*lz4.Reader]{zr}, zr.Apply(lz4.ConcurrencyOption(1))
		})
	case Zstd:
		return pooledDecompressor(pool, fr, newZstdDecoder)
	case Gzip:
		return pooledDecompressor(pool, fr, func() (*gzipDec, error) {
			return &gzipDec{zr: new(gzip.Reader), br: bufio.NewReaderSize(nil, 32<<10)}, nil
		})
	}
	return nil, func() {}, nil
}

// pooledDecompressor takes a decoder from pool (nil for a nil Codec) or
// makes one, and starts it on r; the function it returns stops the decoder
// and puts it back. A decoder whose start failed (a bad stream header) is
// stopped and put back at once: the next start begins afresh.
func pooledDecompressor[T pooledDecoder](pool *sync.Pool, r io.Reader, make func() (T, error)) (decompressor, func(), error) {
	d, err := fromPool(pool, make)
	if err != nil {
		return nil, nil, err
	}
	release := func() {
		d.stop()
		toPool(pool, d)
	}
	if err := d.start(r); err != nil {
		release()
		return nil, nil, err
	}
	return d, release, nil
}
