package codec

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Options choose how a Writer stores an object. The zero Options store the
// body uncompressed and unencrypted.
type Options struct {
	// Compression is the body's compression algorithm.
	Compression Compression
	// Level is the compression level; 0 means the algorithm's default
	// (lz4: the fast compressor, zstd: 3, gzip: 6). See ParseCompression for
	// the ranges. None takes no level.
	Level int
	// Key, when not nil, encrypts the object with AES-256-GCM under a subkey
	// derived from Key and a random per-object salt.
	Key *Key

	// NoRawSum leaves out the SHA-256 of the raw content (the trailer holds
	// zeros and a header flag says so): for objects whose content the
	// caller checksums itself at a finer grain (backup data objects, whose
	// manifest has a SHA-256 per 8 MiB of every file), so the bytes are not
	// hashed twice, or whose compressed stream checks the raw content
	// itself (Compression.ChecksContent: WAL files in zstd or gzip). Records
	// keep their CRC-32C or authentication tag.
	NoRawSum bool

	// recordLg overrides the record size (2^recordLg) in tests; 0 = default.
	recordLg int
}

// Validate reports whether the options are usable, naming the bad field.
func (o Options) Validate() error {
	if !o.Compression.valid() {
		return fmt.Errorf("codec: options: unknown compression %d", o.Compression)
	}
	if err := checkLevel(o.Compression, o.Level); err != nil {
		return fmt.Errorf("codec: options: level: %w", err)
	}
	return nil
}

// ErrClosed is returned by Write after Close and by Read after Close.
var ErrClosed = errors.New("codec: use after close")

// Writer encodes one object onto an io.Writer: Write takes the raw bytes,
// Close completes the object. A Writer is not safe for concurrent use.
//
// The destination only holds a valid object once Close returned nil. After any
// error the Writer is unusable and what was written to the destination must be
// discarded (the caller's upload or temp file is aborted). A Writer that is
// abandoned without Close leaks nothing but its pooled resources.
type Writer struct {
	c       *Codec
	opts    Options
	fw      frameWriter
	comp    compressor
	release func()
	content rawContent
	err     error // sticky
	closed  bool
}

// NewWriter is (*Codec)(nil).NewWriter: a Writer that pools nothing.
func NewWriter(w io.Writer, opts Options) (*Writer, error) {
	var c *Codec
	return c.NewWriter(w, opts)
}

// NewWriter validates opts, writes the object header to w and returns a Writer
// for the object's raw bytes. w is never closed by the Writer.
func (c *Codec) NewWriter(w io.Writer, opts Options) (*Writer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	lg := defaultChunkLg
	if opts.recordLg != 0 {
		lg = opts.recordLg
	}
	if opts.Key != nil && opts.Key.mat() == nil {
		return nil, errors.New("codec: options: Key is a zero Key; make keys with NewKey or DeriveKey")
	}
	h := &header{compression: opts.Compression, encrypted: opts.Key != nil, noRawSum: opts.NoRawSum, chunkSize: 1 << lg}
	var aead cipher.AEAD
	if opts.Key != nil {
		copy(h.keyID[:], opts.Key.mat().id[:])
		if _, err := io.ReadFull(rand.Reader, h.salt[:]); err != nil {
			return nil, fmt.Errorf("codec: new writer: object salt: %w", err)
		}
	}
	h.encode()
	if opts.Key != nil {
		var err error
		if aead, err = newAEAD(opts.Key, h); err != nil {
			return nil, err
		}
	}
	zw := &Writer{c: c, opts: opts}
	if !opts.NoRawSum {
		zw.content.hash = sha256.New()
	}
	zw.fw = frameWriter{
		dst:    w,
		hdrCRC: h.crc,
		aead:   aead,
		chunk:  h.chunkSize,
		check:  h.checkSize(),
		buf:    c.getBuf(recordBufSize(h.chunkSize)),
	}
	if err := zw.fw.writeAll(h.raw[:]); err != nil {
		c.putBuf(zw.fw.buf)
		return nil, err
	}
	comp, release, err := c.getCompressor(opts.Compression, opts.Level, &zw.fw)
	if err != nil {
		c.putBuf(zw.fw.buf)
		return nil, fmt.Errorf("codec: new %s compressor: %w", opts.Compression, err)
	}
	zw.comp, zw.release = comp, release
	return zw, nil
}

// Write compresses, encrypts and frames p. Bytes may stay buffered until a
// later Write or Close.
func (zw *Writer) Write(p []byte) (int, error) {
	if zw.closed {
		return 0, ErrClosed
	}
	if zw.err != nil {
		return 0, zw.err
	}
	// p stays valid and unmodified until Write returns, so it may be
	// hashed on another core while this one compresses it.
	hashed := zw.content.addConcurrently(p)
	var n int
	var err error
	if zw.comp != nil {
		n, err = zw.comp.Write(p)
	} else {
		n, err = zw.fw.Write(p)
	}
	if hashed != nil {
		<-hashed
	}
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		zw.fail(err)
		return n, zw.err
	}
	return n, nil
}

// ReadFrom writes everything r holds, in pipeBufSize pieces so that each
// piece's SHA-256 runs on another core while this one compresses it; io.Copy
// uses it. An error reading r is returned as is and leaves the Writer usable;
// an error writing fails the Writer as Write does.
func (zw *Writer) ReadFrom(r io.Reader) (int64, error) {
	if zw.closed {
		return 0, ErrClosed
	}
	if zw.err != nil {
		return 0, zw.err
	}
	buf := zw.c.getPipeBuf()
	defer zw.c.putPipeBuf(buf)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := zw.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, err
		}
	}
}

// fail records the first error, preferring the destination's own error over
// whatever the compressor made of it.
func (zw *Writer) fail(err error) {
	if zw.fw.err != nil {
		err = zw.fw.err
	} else {
		err = fmt.Errorf("codec: %s compress: %w", zw.opts.Compression, err)
	}
	zw.err = err
}

// Close flushes the compressor and the last record, writes the trailer and
// returns the pooled resources. It does not close the destination. After a
// nil return, Sum and RawSize describe the object. Close is idempotent: later
// calls return the first call's result.
func (zw *Writer) Close() error {
	if zw.closed {
		return zw.err
	}
	zw.closed = true
	if zw.err == nil && zw.comp != nil {
		if err := zw.comp.Close(); err != nil {
			zw.fail(err)
		}
	}
	if zw.err == nil {
		zw.content.finish()
		t := trailer{rawSize: zw.content.size, sum: zw.content.sum}
		if err := zw.fw.finish(&t); err != nil {
			zw.err = err
		}
	}
	if zw.release != nil {
		zw.release() // resets the compressor, whatever state it is in
		zw.release = nil
	}
	zw.comp = nil
	zw.c.putBuf(zw.fw.buf)
	zw.fw.buf = nil
	return zw.err
}

// Sum returns "sha256:<hex>" of the raw bytes written, or "" before a
// successful Close or with Options.NoRawSum. Two objects with the same Sum hold the same raw content
// whatever their compression or encryption.
func (zw *Writer) Sum() string {
	if !zw.closed || zw.err != nil || zw.content.hash == nil {
		return ""
	}
	return FormatSum(zw.content.sum)
}

// RawSize returns the number of raw bytes written so far.
func (zw *Writer) RawSize() int64 { return zw.content.size }

// StoredSize returns the number of bytes written to the destination so far;
// after a successful Close, the size of the stored object.
func (zw *Writer) StoredSize() int64 { return zw.fw.written }

// frameWriter cuts the compressed stream into records and writes them.
type frameWriter struct {
	dst     io.Writer
	hdrCRC  uint32
	aead    cipher.AEAD
	chunk   int
	check   int
	buf     []byte // record header | payload | room for the check
	n       int    // payload bytes in buf
	index   uint64 // next record index
	written int64
	err     error
	// scratch space that would escape to the heap once per record if it
	// lived on the stack
	nonce [nonceSize]byte
	ad    [12]byte
	pre   [16]byte
}

func (fw *frameWriter) writeAll(b []byte) error {
	if fw.err != nil {
		return fw.err
	}
	n, err := fw.dst.Write(b)
	fw.written += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		fw.err = fmt.Errorf("codec: write object: %w", err)
	}
	return fw.err
}

// Write buffers compressed bytes, emitting full records.
func (fw *frameWriter) Write(p []byte) (int, error) {
	if fw.err != nil {
		return 0, fw.err
	}
	total := len(p)
	for len(p) > 0 {
		m := copy(fw.buf[recordHeaderSize+fw.n:recordHeaderSize+fw.chunk], p)
		fw.n += m
		p = p[m:]
		if fw.n == fw.chunk {
			if err := fw.emit(0); err != nil {
				return total - len(p), err
			}
		}
	}
	return total, nil
}

// emit writes the buffered payload as record fw.index; flags is 0 for data
// or trailerBit.
func (fw *frameWriter) emit(flags uint32) error {
	word := flags | uint32(fw.n)
	binary.BigEndian.PutUint32(fw.buf, word)
	payload := fw.buf[recordHeaderSize : recordHeaderSize+fw.n]
	if fw.aead != nil {
		fw.aead.Seal(payload[:0], recordNonce(&fw.nonce, fw.index), payload, recordAD(&fw.ad, fw.index, word))
	} else {
		binary.BigEndian.PutUint32(fw.buf[recordHeaderSize+fw.n:], recordCRC(&fw.pre, fw.hdrCRC, fw.index, word, payload))
	}
	err := fw.writeAll(fw.buf[:recordHeaderSize+fw.n+fw.check])
	fw.n = 0
	fw.index++
	return err
}

// finish writes the last partial record and the trailer record.
func (fw *frameWriter) finish(t *trailer) error {
	if fw.n > 0 {
		if err := fw.emit(0); err != nil {
			return err
		}
	}
	if fw.err != nil {
		return fw.err
	}
	t.records = fw.index
	t.encode(fw.buf[recordHeaderSize:])
	fw.n = trailerSize
	return fw.emit(trailerBit)
}
