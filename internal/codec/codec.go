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
	lz4W  [10]sync.Pool // by level 0..9
	zstdW [23]sync.Pool // by level 1..22
	gzipW [10]sync.Pool // by level 1..9
	lz4R  sync.Pool
	zstdR sync.Pool
	gzipR sync.Pool
	bufs  sync.Pool // *[]byte record buffers for the default record size
	pipes sync.Pool // *[]byte of pipeBufSize for Writer.ReadFrom, Reader.WriteTo
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
	switch alg {
	case LZ4:
		var pool *sync.Pool
		if c != nil {
			pool = &c.lz4W[level]
		}
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
		if level == 0 {
			level = 3
		}
		var pool *sync.Pool
		if c != nil {
			pool = &c.zstdW[level]
		}
		return pooledCompressor(pool, w, func() (zstdEncoder, error) { return newZstdEncoder(level) })
	case Gzip:
		if level == 0 {
			level = 6
		}
		var pool *sync.Pool
		if c != nil {
			pool = &c.gzipW[level]
		}
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
	var zw T
	ok := false
	if pool != nil {
		zw, ok = pool.Get().(T)
	}
	if !ok {
		var err error
		if zw, err = make(); err != nil {
			return nil, nil, err
		}
	}
	zw.Reset(w)
	return zw, func() {
		zw.Reset(nil)
		if pool != nil {
			pool.Put(zw)
		}
	}, nil
}

// decompressor reads the raw stream out of a record stream.
type decompressor interface {
	// Read reads decompressed bytes.
	Read(p []byte) (int, error)
	// Drain is the reader that holds whatever the decompressor has not
	// consumed; after the end of the compressed stream it must be empty.
	Drain() *bufio.Reader
}

type lz4Dec struct {
	*lz4.Reader
}

func (d lz4Dec) Drain() *bufio.Reader { return nil }

type gzipDec struct {
	zr *gzip.Reader
	br *bufio.Reader
}

func (d *gzipDec) Read(p []byte) (int, error) { return d.zr.Read(p) }
func (d *gzipDec) Drain() *bufio.Reader       { return d.br }

// getDecompressor returns a decompressor for alg reading from fr and a
// function that resets it (in whatever state a stream left it) and returns it
// to the pool.
func (c *Codec) getDecompressor(alg Compression, fr *frameReader) (decompressor, func(), error) {
	switch alg {
	case LZ4:
		var zr *lz4.Reader
		if c != nil {
			zr, _ = c.lz4R.Get().(*lz4.Reader)
		}
		if zr == nil {
			zr = lz4.NewReader(nil)
			if err := zr.Apply(lz4.ConcurrencyOption(1)); err != nil {
				return nil, nil, err
			}
		}
		zr.Reset(fr)
		return lz4Dec{zr}, func() {
			zr.Reset(nil)
			if c != nil {
				c.lz4R.Put(zr)
			}
		}, nil
	case Zstd:
		return c.getZstdDecompressor(fr)
	case Gzip:
		var d *gzipDec
		if c != nil {
			d, _ = c.gzipR.Get().(*gzipDec)
		}
		if d == nil {
			d = &gzipDec{zr: new(gzip.Reader), br: bufio.NewReaderSize(nil, 32<<10)}
		}
		d.br.Reset(fr)
		if err := d.zr.Reset(d.br); err != nil {
			// Bad or missing gzip header; the next Reset starts afresh.
			d.br.Reset(nil)
			if c != nil {
				c.gzipR.Put(d)
			}
			return nil, nil, err
		}
		d.zr.Multistream(false)
		return d, func() {
			d.br.Reset(nil)
			if c != nil {
				c.gzipR.Put(d)
			}
		}, nil
	}
	return nil, func() {}, nil
}
