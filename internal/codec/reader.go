package codec

import (
	"crypto/cipher"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Reader decodes one object: Read returns the raw bytes while verifying every
// record, and the final Read returns io.EOF only after the trailer verified
// (raw length and SHA-256 match, nothing follows the trailer). Any damage is
// reported as an error matching ErrCorrupt, possibly after some (unverified)
// bytes were already returned.
//
// So treat the bytes as provisional until io.EOF: write them to a temporary
// file, and fsync and rename it into place only after Read returned io.EOF;
// on any other error, delete it. Never hand PostgreSQL a file whose read did
// not end in io.EOF.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	c       *Codec
	h       *header
	fr      frameReader
	dec     decompressor
	src     io.Reader // dec, or &fr when uncompressed
	release func()
	content rawContent
	hasSum  bool // the trailer holds the raw SHA-256 (no Options.NoRawSum)
	// inStream: the compressed stream checks its own raw content (a zstd
	// frame with its content checksum, a gzip member's CRC-32), verified by
	// the decompressor; the trailer's SHA-256 is then not recomputed.
	inStream bool
	err      error // sticky; io.EOF after a verified end
	closed   bool
}

// NewReader is (*Codec)(nil).NewReader: a Reader that pools nothing.
func NewReader(r io.Reader, keys KeyResolver) (*Reader, error) {
	var c *Codec
	return c.NewReader(r, keys)
}

// NewReader reads and verifies the object header from r and returns a Reader
// for the object's raw bytes. It fails fast, before reading the body:
//   - ErrCorrupt when the header is damaged or r does not hold an object,
//   - ErrUnsupportedVersion for a newer format version,
//   - ErrNoKey when the object is encrypted and keys holds no key,
//   - ErrWrongKey when it is encrypted under a key keys does not have,
//   - ErrNotEncrypted when keys holds a key (any resolver other than nil, a
//     nil *Key or an empty Keys) but the object is not encrypted: with
//     encryption configured, unauthenticated objects are refused. Read objects
//     that are legitimately unencrypted (the repository metadata that holds
//     the key salt) with nil keys.
//
// r is read sequentially up to its end (a Reader checks that nothing follows
// the trailer) and never closed.
func (c *Codec) NewReader(r io.Reader, keys KeyResolver) (*Reader, error) {
	h, err := readHeader(r)
	if err != nil {
		return nil, err
	}
	aead, err := resolveKey(h, keys)
	if err != nil {
		return nil, err
	}
	zr := &Reader{c: c, h: h, hasSum: !h.noRawSum}
	zr.fr = frameReader{
		src:    r,
		hdrCRC: h.crc,
		aead:   aead,
		chunk:  h.chunkSize,
		check:  h.checkSize(),
		offset: headerSize,
		buf:    c.getBuf(recordBufSize(h.chunkSize)),
	}
	return zr, nil
}

// Read reads raw bytes. It returns io.EOF only once the whole object has been
// read and verified; see the Reader documentation.
func (zr *Reader) Read(p []byte) (int, error) {
	if zr.err != nil {
		return 0, zr.err
	}
	if err := zr.ready(); err != nil {
		return 0, err
	}
	n, err := zr.src.Read(p)
	if n > 0 {
		zr.content.add(p[:n])
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		err = zr.finish()
	default:
		err = zr.classify(err)
	}
	zr.stop(err)
	return n, err
}

// ready makes the Reader readable: not closed, its stream started (at the
// first read, so that opening an object costs nothing until it is read).
func (zr *Reader) ready() error {
	if zr.closed {
		return ErrClosed
	}
	if zr.src == nil {
		if err := zr.start(); err != nil {
			zr.stop(err)
			return err
		}
	}
	return nil
}

// WriteTo writes the raw bytes to w and returns nil once the object verified,
// the same contract as reading to io.EOF: on an error, what was written to w
// must be discarded. io.Copy uses it. It decompresses in pipeBufSize pieces,
// hashing each piece on another core while decompressing the next.
// An error from w is returned as is (not ErrCorrupt) and ends the Reader.
func (zr *Reader) WriteTo(w io.Writer) (int64, error) {
	if zr.err != nil {
		if zr.err == io.EOF {
			return 0, nil
		}
		return 0, zr.err
	}
	if err := zr.ready(); err != nil {
		return 0, err
	}
	var bufs [2][]byte
	bufs[0], bufs[1] = zr.c.getPipeBuf(), zr.c.getPipeBuf()
	defer zr.c.putPipeBuf(bufs[0])
	defer zr.c.putPipeBuf(bufs[1])

	var total int64
	var prev []byte            // decoded piece not yet written
	var hashed <-chan struct{} // closed when prev is hashed; nil if hashed inline
	flush := func() error {    // wait for prev's hash, then write prev
		if hashed != nil {
			<-hashed
			hashed = nil
		}
		if len(prev) == 0 {
			return nil
		}
		piece := prev
		prev = nil
		m, err := w.Write(piece)
		total += int64(m)
		if err == nil && m < len(piece) {
			err = io.ErrShortWrite
		}
		return err
	}
	for i := 0; ; i ^= 1 {
		// Decode the next piece while the previous one is being hashed.
		n, rerr := readFull(zr.src, bufs[i])
		if err := flush(); err != nil {
			zr.stop(err)
			return total, err
		}
		if n > 0 {
			prev = bufs[i][:n]
			hashed = zr.content.addConcurrently(prev)
		}
		if rerr == nil {
			continue
		}
		if err := flush(); err != nil {
			zr.stop(err)
			return total, err
		}
		if rerr == io.EOF {
			rerr = zr.finish()
		} else {
			rerr = zr.classify(rerr)
		}
		zr.stop(rerr)
		if rerr == io.EOF {
			return total, nil
		}
		return total, rerr
	}
}

// readFull reads from r until buf is full or r fails; unlike io.ReadFull it
// returns r's error (io.EOF included) as is.
func readFull(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// start sets up the decompressor (gzip reads its header right away) and
// decides how the raw content is verified: by the compressed stream's own
// content check when it has one, else by the trailer's SHA-256.
func (zr *Reader) start() error {
	if zr.h.compression == None {
		zr.src = &zr.fr
		zr.startHash()
		return nil
	}
	if err := zr.peekStream(); err != nil {
		return err
	}
	zr.startHash()
	dec, release, err := zr.c.getDecompressor(zr.h.compression, &zr.fr)
	if err != nil {
		return zr.classify(err)
	}
	zr.dec, zr.src, zr.release = dec, dec, release
	return nil
}

// peekStream reads the first record (without consuming it) to learn
// whether the compressed stream checks its raw content itself. A gzip
// member always ends with the CRC-32 and length of its content, which the
// decompressor verifies. A zstd frame does when its header's
// Content_Checksum_flag is set (RFC 8878 3.1.1.1.1.5: XXH64 of the content,
// verified by the decoder); walferry writes one frame per object, with the
// checksum since the objects of 2026-11. lz4 frames are written without
// their optional checksum (xxh32 costs a third of lz4's speed), so lz4
// objects are checked by SHA-256 as before.
func (zr *Reader) peekStream() error {
	switch zr.h.compression {
	case Gzip:
		zr.inStream = true
	case Zstd:
		for len(zr.fr.data) == 0 && zr.fr.err == nil {
			zr.fr.err = zr.fr.next()
		}
		if zr.fr.err != nil && zr.fr.err != io.EOF {
			return zr.fr.err
		}
		d := zr.fr.data
		zr.inStream = len(d) >= 5 && binary.LittleEndian.Uint32(d) == zstdMagic && d[4]&zstdChecksumFlag != 0
	}
	return nil
}

// The start of a zstd frame: magic number, then the frame header
// descriptor, whose bit 2 is the Content_Checksum_flag.
const (
	zstdMagic        = 0xFD2FB528
	zstdChecksumFlag = 1 << 2
)

// startHash hashes the raw content when the trailer's SHA-256 is what
// verifies it.
func (zr *Reader) startHash() {
	if zr.hasSum && !zr.inStream {
		zr.content.hash = sha256.New()
	}
}

// classify turns an error out of the decompressor into the error to report:
// the record layer's own error when it failed (corruption or a read error of
// the source), otherwise the compressed stream itself is invalid.
func (zr *Reader) classify(err error) error {
	if zr.fr.err != nil && zr.fr.err != io.EOF {
		return zr.fr.err
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return corruptf("%s stream invalid after %d raw bytes: %v", zr.h.compression, zr.content.size, err)
}

// finish runs after the decompressor (or the record layer) reported the end of
// the stream: nothing may be left, and the trailer must match what was read.
func (zr *Reader) finish() error {
	if zr.dec != nil {
		// Everything the decompressor did not consume must be empty: first
		// its own read-ahead buffer, then the remaining records.
		if br := zr.dec.Drain(); br != nil && br.Buffered() > 0 {
			return corruptf("%d bytes of data after the end of the %s stream", br.Buffered(), zr.h.compression)
		}
		var one [1]byte
		n, err := io.ReadFull(&zr.fr, one[:])
		if n > 0 {
			return corruptf("data after the end of the %s stream", zr.h.compression)
		}
		if err != io.EOF {
			return zr.classify(err)
		}
	}
	if zr.fr.err != io.EOF {
		// Not reachable: the record layer has reported its end.
		return corruptf("stream ended before the trailer")
	}
	t := &zr.fr.trailer
	if t.rawSize != zr.content.size {
		return corruptf("length mismatch: trailer says %d raw bytes, read %d", t.rawSize, zr.content.size)
	}
	switch {
	case zr.content.hash != nil:
		zr.content.finish()
	case zr.inStream:
		// The decompressor verified the content against the stream's own
		// check; the trailer's SHA-256 is the writer's, authenticated by
		// the trailer record's check.
		zr.content.sum = t.sum
	}
	if subtle.ConstantTimeCompare(zr.content.sum[:], t.sum[:]) != 1 {
		return corruptf("checksum mismatch: stored %s computed %s", FormatSum(t.sum), FormatSum(zr.content.sum))
	}
	return io.EOF
}

// stop records the terminal state and gives pooled resources back. The
// decompressor's release resets it, which makes it reusable whatever state a
// damaged stream left it in.
func (zr *Reader) stop(err error) {
	zr.err = err
	if zr.release != nil {
		zr.release()
	}
	zr.release = nil
	zr.dec = nil
	zr.src = nil
	zr.c.putBuf(zr.fr.buf)
	zr.fr.buf = nil
	zr.fr.data = nil
}

// Close releases the Reader's pooled resources. It does not close the
// underlying reader. Reading after Close returns ErrClosed unless the Reader
// already ended (then the same io.EOF or error). Close always returns nil.
func (zr *Reader) Close() error {
	if zr.closed {
		return nil
	}
	zr.closed = true
	if zr.err == nil {
		zr.stop(nil)
	}
	return nil
}

// Sum returns "sha256:<hex>" of the raw bytes once Read returned io.EOF, and
// "" before, or when the object was written without it (Options.NoRawSum).
func (zr *Reader) Sum() string {
	if zr.err != io.EOF || !zr.hasSum {
		return ""
	}
	return FormatSum(zr.content.sum)
}

// RawSize returns the number of raw bytes returned by Read so far; after
// io.EOF, the verified raw length of the object.
func (zr *Reader) RawSize() int64 { return zr.content.size }

// Compression returns the object's compression algorithm.
func (zr *Reader) Compression() Compression { return zr.h.compression }

// KeyID returns the id of the key the object is encrypted with, or "" when
// it is not encrypted.
func (zr *Reader) KeyID() string {
	if !zr.h.encrypted {
		return ""
	}
	return zr.h.keyIDString()
}

// frameReader verifies records and yields their payloads: the compressed
// stream. After the trailer record verified, and the source ended right
// after it, Read returns io.EOF.
type frameReader struct {
	src     io.Reader
	hdrCRC  uint32
	aead    cipher.AEAD
	chunk   int
	check   int
	buf     []byte
	data    []byte // unread payload
	index   uint64 // index of the next record
	offset  int64  // object offset of the next record
	short   bool   // a data record shorter than chunk was seen: it must be the last
	trailer trailer
	err     error // sticky; io.EOF after the trailer
	nonce   [nonceSize]byte
	ad      [12]byte
	pre     [16]byte
	one     [1]byte
}

func (fr *frameReader) Read(p []byte) (int, error) {
	for len(fr.data) == 0 {
		if fr.err != nil {
			return 0, fr.err
		}
		fr.err = fr.next()
	}
	n := copy(p, fr.data)
	fr.data = fr.data[n:]
	return n, nil
}

// next reads and verifies one record.
func (fr *frameReader) next() error {
	if fr.buf == nil {
		return ErrClosed
	}
	off := fr.offset
	if _, err := io.ReadFull(fr.src, fr.buf[:recordHeaderSize]); err != nil {
		if err == io.EOF {
			return corruptf("truncated: object ends at offset %d after record %d without a trailer: %w", off, fr.index, io.ErrUnexpectedEOF)
		}
		return readErr(err, "record header", off)
	}
	word := binary.BigEndian.Uint32(fr.buf)
	isTrailer := word&trailerBit != 0
	n := int(word &^ trailerBit)
	switch {
	case isTrailer && n != trailerSize:
		return corruptf("record %d at offset %d: trailer length %d, want %d", fr.index, off, n, trailerSize)
	case !isTrailer && (n == 0 || n > fr.chunk):
		return corruptf("record %d at offset %d: length %d out of range 1..%d", fr.index, off, n, fr.chunk)
	case !isTrailer && fr.short:
		return corruptf("record %d at offset %d follows a short record", fr.index, off)
	}
	rec := fr.buf[recordHeaderSize : recordHeaderSize+n+fr.check]
	if _, err := io.ReadFull(fr.src, rec); err != nil {
		return readErr(err, fmt.Sprintf("record %d", fr.index), off+recordHeaderSize)
	}
	fr.offset += int64(recordHeaderSize + len(rec))
	payload := rec[:n]
	if fr.aead != nil {
		if _, err := fr.aead.Open(payload[:0], recordNonce(&fr.nonce, fr.index), rec, recordAD(&fr.ad, fr.index, word)); err != nil {
			return corruptf("record %d at offset %d: authentication failed (damaged or tampered)", fr.index, off)
		}
	} else {
		stored := binary.BigEndian.Uint32(rec[n:])
		if computed := recordCRC(&fr.pre, fr.hdrCRC, fr.index, word, payload); stored != computed {
			return corruptf("record %d at offset %d: checksum mismatch: stored crc32c:%08x computed crc32c:%08x", fr.index, off, stored, computed)
		}
	}
	if !isTrailer {
		fr.index++
		fr.short = n < fr.chunk
		fr.data = payload
		return nil
	}
	if err := fr.trailer.decode(payload); err != nil {
		return err
	}
	if fr.trailer.records != fr.index {
		return corruptf("trailer counts %d records, read %d", fr.trailer.records, fr.index)
	}
	switch k, err := io.ReadFull(fr.src, fr.one[:]); {
	case k > 0:
		return corruptf("data after the trailer at offset %d", fr.offset)
	case err != io.EOF:
		return fmt.Errorf("codec: read after trailer at offset %d: %w", fr.offset, err)
	}
	return io.EOF
}
