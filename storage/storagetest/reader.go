package storagetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Reader yields a deterministic pseudo-random byte stream of a fixed size.
// Byte i of the stream depends only on the seed and i, so any range can be
// regenerated without holding the object in memory, and two seeds give
// unrelated streams. Reader implements io.Reader, io.Seeker and io.ReaderAt;
// wrap it with OnlyReader to hide the extras from a backend.
type Reader struct {
	base int64 // mixed seed
	size int64
	off  int64
}

// NewReader returns a Reader of size bytes derived from seed.
func NewReader(seed uint64, size int64) *Reader {
	return &Reader{base: int64(splitmix(seed)), size: size}
}

// Size returns the stream's total length.
func (r *Reader) Size() int64 { return r.size }

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	n, err := r.ReadAt(p, r.off)
	r.off += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

// ReadAt implements io.ReaderAt.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("storagetest: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	var err error
	if rem := r.size - off; int64(len(p)) > rem {
		p = p[:rem]
		err = io.EOF
	}
	n := len(p)
	word := off / 8
	// Leading partial word.
	if skip := int(off % 8); skip != 0 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], r.word(word))
		c := copy(p, b[skip:])
		p = p[c:]
		word++
	}
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, r.word(word))
		p = p[8:]
		word++
	}
	if len(p) > 0 {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], r.word(word))
		copy(p, b[:])
	}
	return n, err
}

// Seek implements io.Seeker.
func (r *Reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("storagetest: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("storagetest: negative position")
	}
	r.off = offset
	return offset, nil
}

func (r *Reader) word(i int64) uint64 {
	return splitmix(uint64(r.base) + uint64(i)*0x9e3779b97f4a7c15)
}

// splitmix is the SplitMix64 finaliser: a cheap bijective 64-bit mixer.
func splitmix(z uint64) uint64 {
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// Bytes returns the whole stream for seed and size. Use it for small
// objects only.
func Bytes(seed uint64, size int64) []byte {
	b := make([]byte, size)
	_, _ = NewReader(seed, size).ReadAt(b, 0)
	return b
}

// Digest returns the hex SHA-256 of the stream for seed and size, computed
// in constant memory.
func Digest(seed uint64, size int64) string {
	h := sha256.New()
	_, _ = io.Copy(h, OnlyReader(NewReader(seed, size)))
	return hex.EncodeToString(h.Sum(nil))
}

// OnlyReader hides every method of r but Read, so a backend sees a plain
// stream (as it would from a pipe) rather than a seekable file.
func OnlyReader(r io.Reader) io.Reader { return onlyReader{r} }

type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// Verify reads r to its end and compares it with the stream for seed and
// size, in constant memory. The error names the first differing offset, the
// byte counts and both SHA-256 digests.
func Verify(r io.Reader, seed uint64, size int64) error {
	c := &comparer{want: NewReader(seed, size), got: sha256.New(), wantSum: sha256.New(), first: -1}
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(c, OnlyReader(r), buf); err != nil {
		return fmt.Errorf("read after %d bytes: %w", c.n, err)
	}
	// Hash whatever of the expected stream was not compared.
	if _, err := io.Copy(c.wantSum, OnlyReader(c.want)); err != nil {
		return err
	}
	gotSum, wantSum := hex.EncodeToString(c.got.Sum(nil)), hex.EncodeToString(c.wantSum.Sum(nil))
	switch {
	case c.n != size:
		return fmt.Errorf("got %d bytes (sha256 %s), want %d bytes (sha256 %s); first difference at offset %d",
			c.n, gotSum, size, wantSum, c.firstOrEnd(size))
	case gotSum != wantSum || c.first >= 0:
		return fmt.Errorf("content differs from offset %d: got sha256 %s, want %s", c.first, gotSum, wantSum)
	}
	return nil
}

// comparer is an io.Writer checking what it is given against want.
type comparer struct {
	want    *Reader
	got     hash.Hash
	wantSum hash.Hash
	n       int64
	first   int64 // first differing offset, -1 when none yet
	scratch []byte
}

func (c *comparer) Write(p []byte) (int, error) {
	c.got.Write(p)
	if cap(c.scratch) < len(p) {
		c.scratch = make([]byte, len(p))
	}
	w := c.scratch[:len(p)]
	m, _ := io.ReadFull(c.want, w)
	c.wantSum.Write(w[:m])
	if c.first < 0 && !bytes.Equal(p[:m], w[:m]) {
		for i := 0; i < m; i++ {
			if p[i] != w[i] {
				c.first = c.n + int64(i)
				break
			}
		}
	}
	if c.first < 0 && m < len(p) {
		c.first = c.n + int64(m)
	}
	c.n += int64(len(p))
	return len(p), nil
}

func (c *comparer) firstOrEnd(size int64) int64 {
	if c.first >= 0 {
		return c.first
	}
	return min(c.n, size)
}
