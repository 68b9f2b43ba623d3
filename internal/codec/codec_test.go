package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

// testKey returns a fixed master key (never use fixed keys outside tests).
func testKey(t testing.TB, b byte) *Key {
	t.Helper()
	k, err := NewKey(bytes.Repeat([]byte{b}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// combo is one compression x encryption combination.
type combo struct {
	name string
	opts Options
}

func combos(t testing.TB) []combo {
	key := testKey(t, 7)
	var out []combo
	for _, c := range []Compression{None, LZ4, Zstd, Gzip} {
		out = append(out,
			combo{c.String(), Options{Compression: c}},
			combo{c.String() + "+aes", Options{Compression: c, Key: key}})
	}
	return out
}

// encode encodes raw with opts in writes of at most step bytes (0: one write,
// negative: io.Copy through Writer.ReadFrom).
func encode(t testing.TB, c *Codec, raw []byte, opts Options, step int) ([]byte, *Writer) {
	t.Helper()
	var buf bytes.Buffer
	w, err := c.NewWriter(&buf, opts)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	if step < 0 { // through Writer.ReadFrom
		if _, err := io.Copy(w, struct{ io.Reader }{bytes.NewReader(raw)}); err != nil {
			t.Fatalf("ReadFrom: %v", err)
		}
		raw = nil
	}
	if step <= 0 {
		step = len(raw) + 1
	}
	for p := raw; len(p) > 0; {
		n := min(step, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes(), w
}

// decode reads the whole object through Reader.WriteTo; err is nil when the
// object verified.
func decode(c *Codec, obj []byte, keys KeyResolver) ([]byte, *Reader, error) {
	r, err := c.NewReader(bytes.NewReader(obj), keys)
	if err != nil {
		return nil, nil, err
	}
	var out bytes.Buffer
	_, err = io.Copy(&out, r)
	return out.Bytes(), r, err
}

// decodeRead reads the whole object with Read calls of at most step bytes;
// err is nil when Read returned io.EOF.
func decodeRead(c *Codec, obj []byte, keys KeyResolver, step int) ([]byte, *Reader, error) {
	r, err := c.NewReader(bytes.NewReader(obj), keys)
	if err != nil {
		return nil, nil, err
	}
	var out []byte
	buf := make([]byte, step)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, r, nil
		}
		if err != nil {
			return out, r, err
		}
	}
}

// keysFor returns the resolver matching opts (nil for unencrypted objects).
func keysFor(opts Options) KeyResolver {
	if opts.Key == nil {
		return nil
	}
	return opts.Key
}

func TestRoundTrip(t *testing.T) {
	sizes := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"one", []byte{42}},
		{"text", []byte("hello, walferry\n")},
		{"record-1", walLike(1<<16-1, 1)},
		{"record", walLike(1<<16, 2)},
		{"record+1", walLike(1<<16+1, 3)},
		{"random", randomBytes(300_000, 4)},
		{"wal-5MiB", walLike(5<<20+7, 5)},
	}
	c := New()
	for _, cb := range combos(t) {
		for _, sz := range sizes {
			for _, step := range []int{0, -1, 1000, 65536} {
				if step > 0 && len(sz.data) > 1<<20 {
					continue // small writes of big objects add time, not coverage
				}
				t.Run(fmt.Sprintf("%s/%s/step%d", cb.name, sz.name, step), func(t *testing.T) {
					obj, w := encode(t, c, sz.data, cb.opts, step)
					want := FormatSum(sha256.Sum256(sz.data))
					if got := w.Sum(); got != want {
						t.Errorf("Writer.Sum = %s, want %s", got, want)
					}
					if got := w.RawSize(); got != int64(len(sz.data)) {
						t.Errorf("Writer.RawSize = %d, want %d", got, len(sz.data))
					}
					if got := w.StoredSize(); got != int64(len(obj)) {
						t.Errorf("Writer.StoredSize = %d, want %d", got, len(obj))
					}
					got, r, err := decode(c, obj, keysFor(cb.opts))
					if err != nil {
						t.Fatalf("decode: %v", err)
					}
					if !bytes.Equal(got, sz.data) {
						t.Fatalf("decoded %d bytes, differ from the %d written", len(got), len(sz.data))
					}
					got2, r2, err := decodeRead(c, obj, keysFor(cb.opts), 3000)
					if err != nil || !bytes.Equal(got2, sz.data) || r2.Sum() != want {
						t.Fatalf("decode with Read: err %v, equal %v, sum %s", err, bytes.Equal(got2, sz.data), r2.Sum())
					}
					if r.Sum() != want || r.RawSize() != int64(len(sz.data)) {
						t.Errorf("Reader.Sum, RawSize = %s, %d; want %s, %d", r.Sum(), r.RawSize(), want, len(sz.data))
					}
					if r.Compression() != cb.opts.Compression {
						t.Errorf("Reader.Compression = %v, want %v", r.Compression(), cb.opts.Compression)
					}
					if wantID := cb.opts.Key.ID(); r.KeyID() != wantID {
						t.Errorf("Reader.KeyID = %q, want %q", r.KeyID(), wantID)
					}
					info, err := ReadInfo(bytes.NewReader(obj), int64(len(obj)), keysFor(cb.opts))
					if err != nil {
						t.Fatalf("ReadInfo: %v", err)
					}
					wantInfo := Info{Version: 1, Compression: cb.opts.Compression, Encrypted: cb.opts.Key != nil,
						KeyID: cb.opts.Key.ID(), RecordSize: 1 << 16, RawSize: int64(len(sz.data)), Sum: want, StoredSize: int64(len(obj))}
					if info != wantInfo {
						t.Errorf("ReadInfo = %+v, want %+v", info, wantInfo)
					}
				})
			}
		}
	}
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestLevels(t *testing.T) {
	raw := walLike(200_000, 9)
	c := New()
	for _, alg := range []Compression{LZ4, Zstd, Gzip} {
		lo, hi := alg.levelRange()
		for level := 0; level <= hi; level++ {
			if level > 0 && level < lo {
				continue
			}
			t.Run(fmt.Sprintf("%s:%d", alg, level), func(t *testing.T) {
				obj, _ := encode(t, c, raw, Options{Compression: alg, Level: level}, 0)
				got, _, err := decode(c, obj, nil)
				if err != nil || !bytes.Equal(got, raw) {
					t.Fatalf("round trip: err %v, equal %v", err, bytes.Equal(got, raw))
				}
			})
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		opts Options
		ok   bool
	}{
		{Options{}, true},
		{Options{Compression: Zstd, Level: 19}, true},
		{Options{Compression: Zstd, Level: 23}, false},
		{Options{Compression: Gzip, Level: 10}, false},
		{Options{Compression: LZ4, Level: -1}, false},
		{Options{Compression: None, Level: 1}, false},
		{Options{Compression: 4}, false},
	}
	for _, tt := range tests {
		err := tt.opts.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tt.opts, err, tt.ok)
		}
		if _, err2 := NewWriter(io.Discard, tt.opts); (err2 == nil) != tt.ok {
			t.Errorf("NewWriter(%+v) = %v, want ok=%v", tt.opts, err2, tt.ok)
		}
	}
}

// TestConcurrentCodec shares one Codec among goroutines (run with -race).
func TestConcurrentCodec(t *testing.T) {
	c := New()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 6 {
				cb := combos(t)[(g+i)%8]
				raw := walLike(100_000+g*1000+i, uint64(g*10+i))
				var buf bytes.Buffer
				w, err := c.NewWriter(&buf, cb.opts)
				if err != nil {
					errs <- err
					return
				}
				if _, err := w.Write(raw); err != nil {
					errs <- err
					return
				}
				if err := w.Close(); err != nil {
					errs <- err
					return
				}
				got, _, err := decode(c, buf.Bytes(), keysFor(cb.opts))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, raw) {
					errs <- fmt.Errorf("%s: round trip differs", cb.name)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestNilCodec(t *testing.T) {
	raw := walLike(200_000, 11)
	for _, cb := range combos(t) {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, cb.opts)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(&buf, keysFor(cb.opts))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("%s: err %v, equal %v", cb.name, err, bytes.Equal(got, raw))
		}
	}
}

func TestWriterLifecycle(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Options{Compression: Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if w.Sum() != "" {
		t.Errorf("Sum before Close = %q, want empty", w.Sum())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

// failingWriter fails after limit bytes.
type failingWriter struct {
	limit int
	n     int
}

var errDisk = errors.New("disk full")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n+len(p) > f.limit {
		k := f.limit - f.n
		f.n = f.limit
		return k, errDisk
	}
	f.n += len(p)
	return len(p), nil
}

func TestWriterDestinationError(t *testing.T) {
	raw := randomBytes(500_000, 12)
	for _, cb := range combos(t) {
		for _, limit := range []int{0, 10, 56, 1000, 100_000} {
			t.Run(fmt.Sprintf("%s/%d", cb.name, limit), func(t *testing.T) {
				w, err := New().NewWriter(&failingWriter{limit: limit}, cb.opts)
				if err != nil {
					if !errors.Is(err, errDisk) {
						t.Fatalf("NewWriter = %v, want errDisk", err)
					}
					return
				}
				_, werr := w.Write(raw)
				cerr := w.Close()
				if !errors.Is(werr, errDisk) && !errors.Is(cerr, errDisk) {
					t.Fatalf("Write = %v, Close = %v; want errDisk from one", werr, cerr)
				}
				if w.Sum() != "" {
					t.Errorf("Sum after failure = %q, want empty", w.Sum())
				}
			})
		}
	}
}

// errReader returns data, then a non-EOF error.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		return n, e.err
	}
	return n, err
}

func TestReaderSourceErrorNotCorrupt(t *testing.T) {
	raw := walLike(300_000, 13)
	netErr := errors.New("connection reset by peer")
	for _, cb := range combos(t) {
		obj, _ := encode(t, nil, raw, cb.opts, 0)
		for _, cut := range []int{100, len(obj) / 2, len(obj) - 1, len(obj)} {
			r, err := NewReader(&errReader{bytes.NewReader(obj[:cut]), netErr}, keysFor(cb.opts))
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, r)
			if !errors.Is(err, netErr) || errors.Is(err, ErrCorrupt) {
				t.Errorf("%s cut %d: err = %v, want the source error, not ErrCorrupt", cb.name, cut, err)
			}
		}
	}
}

func TestReaderClose(t *testing.T) {
	c := New()
	obj, _ := encode(t, c, walLike(400_000, 14), Options{Compression: Zstd}, 0)
	r, err := c.NewReader(bytes.NewReader(obj), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close = %v, want ErrClosed", err)
	}
	if r.Sum() != "" {
		t.Errorf("Sum of an unfinished read = %q, want empty", r.Sum())
	}
	// The codec still works after an abandoned read.
	if _, _, err := decode(c, obj, nil); err != nil {
		t.Fatal(err)
	}
}

func TestWriteToDestinationError(t *testing.T) {
	raw := walLike(2<<20, 15)
	for _, cb := range combos(t) {
		obj, _ := encode(t, nil, raw, cb.opts, 0)
		for _, limit := range []int{0, 1000, 300_000, 2<<20 - 1} {
			r, err := NewReader(bytes.NewReader(obj), keysFor(cb.opts))
			if err != nil {
				t.Fatal(err)
			}
			n, err := r.WriteTo(&failingWriter{limit: limit})
			if !errors.Is(err, errDisk) || errors.Is(err, ErrCorrupt) {
				t.Errorf("%s limit %d: WriteTo = %d, %v; want errDisk", cb.name, limit, n, err)
			}
			if n != int64(limit) {
				t.Errorf("%s: WriteTo reported %d bytes written, want %d", cb.name, n, limit)
			}
			if _, err2 := r.Read(make([]byte, 10)); !errors.Is(err2, errDisk) {
				t.Errorf("%s: Read after failed WriteTo = %v, want the same error", cb.name, err2)
			}
		}
	}
}

// TestReadThenWriteTo mixes both ways of reading one object.
func TestReadThenWriteTo(t *testing.T) {
	raw := walLike(1<<20, 16)
	for _, cb := range combos(t) {
		obj, _ := encode(t, nil, raw, cb.opts, 0)
		r, err := NewReader(bytes.NewReader(obj), keysFor(cb.opts))
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 12345)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatal(err)
		}
		var rest bytes.Buffer
		if _, err := r.WriteTo(&rest); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(append(head, rest.Bytes()...), raw) || r.Sum() != FormatSum(sha256.Sum256(raw)) {
			t.Errorf("%s: Read then WriteTo changed the data", cb.name)
		}
		if n, err := r.WriteTo(&rest); n != 0 || err != nil {
			t.Errorf("%s: WriteTo after the end = %d, %v; want 0, nil", cb.name, n, err)
		}
	}
}

// TestNoRawSum: an object written without the content SHA-256 reads back
// whole, says it has no sum, and still fails on a flipped byte.
func TestNoRawSum(t *testing.T) {
	raw := bytes.Repeat([]byte("walferry backup data "), 50000)
	for _, comp := range []Compression{None, LZ4, Zstd, Gzip} {
		var buf bytes.Buffer
		zw, err := NewWriter(&buf, Options{Compression: comp, NoRawSum: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zw.Write(raw); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		if zw.Sum() != "" {
			t.Errorf("%s: writer Sum %q, want none", comp, zw.Sum())
		}
		stored := buf.Bytes()
		zr, err := NewReader(bytes.NewReader(stored), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(zr)
		if err != nil || !bytes.Equal(got, raw) || zr.Sum() != "" {
			t.Fatalf("%s: read %d bytes, err %v, sum %q", comp, len(got), err, zr.Sum())
		}
		info, err := ReadInfo(bytes.NewReader(stored), int64(len(stored)), nil)
		if err != nil || info.Sum != "" || info.RawSize != int64(len(raw)) {
			t.Fatalf("%s: info %+v, %v", comp, info, err)
		}
		bad := bytes.Clone(stored)
		bad[len(bad)/2] ^= 0x40
		zr, err = NewReader(bytes.NewReader(bad), nil)
		if err == nil {
			_, err = io.Copy(io.Discard, zr)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: flipped byte: %v, want ErrCorrupt", comp, err)
		}
	}
}
