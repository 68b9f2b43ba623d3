//go:build cgo && !walferry_purego

package libzstd

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// walLike returns n bytes that compress like WAL: runs of repeated records
// with some random bytes in between.
func walLike(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, 0, n)
	rec := make([]byte, 200)
	for len(b) < n {
		for i := range rec[:16] {
			rec[i] = byte(r.Uint32())
		}
		b = append(b, rec...)
	}
	return b[:n]
}

func compress(t *testing.T, level int, raw []byte, chunk int) []byte {
	t.Helper()
	e, err := NewEncoder(level)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	e.Reset(&buf)
	for p := raw; len(p) > 0; {
		n := min(chunk, len(p))
		if _, err := e.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func decompress(compressed []byte, readSize int) ([]byte, error) {
	d, err := NewDecoder()
	if err != nil {
		return nil, err
	}
	d.Reset(bytes.NewReader(compressed))
	var out bytes.Buffer
	p := make([]byte, readSize)
	for {
		n, err := d.Read(p)
		out.Write(p[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 1000, 128 << 10, 3<<20 + 17} {
		for _, level := range []int{1, 3, 19} {
			raw := walLike(size, uint64(size))
			z := compress(t, level, raw, 64<<10)
			for _, readSize := range []int{1 << 20, 4096, 7} {
				if size > 200_000 && readSize == 7 {
					continue // slow, and 4096 already splits blocks
				}
				got, err := decompress(z, readSize)
				if err != nil {
					t.Fatalf("size %d level %d read %d: %v", size, level, readSize, err)
				}
				if !bytes.Equal(got, raw) {
					t.Fatalf("size %d level %d read %d: content differs", size, level, readSize)
				}
			}
		}
	}
}

// The encoder is reused across streams (the codec pools it): every
// stream is a whole frame of its own.
func TestEncoderReuse(t *testing.T) {
	e, err := NewEncoder(3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		raw := walLike(300_000+i, uint64(i))
		var buf bytes.Buffer
		e.Reset(&buf)
		if _, err := e.Write(raw[:1000]); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			e.Reset(&buf) // abandon a stream halfway
			buf.Reset()
		}
		if _, err := e.Write(raw[1000:]); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := decompress(buf.Bytes(), 1<<20)
		want := raw
		if i == 1 {
			want = raw[1000:]
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("stream %d: err %v, equal %v", i, err, bytes.Equal(got, want))
		}
	}
}

// Objects written by the pure-Go encoder (before this package, or by a
// CGO_ENABLED=0 build) read here, and the other way round.
func TestCompatibleWithPureGo(t *testing.T) {
	raw := walLike(5<<20, 7)
	kw, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true), zstd.WithWindowSize(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decompress(kw.EncodeAll(raw, nil), 1<<20)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("pure-Go frame through libzstd: err %v, equal %v", err, bytes.Equal(got, raw))
	}
	kr, err := zstd.NewReader(nil, zstd.WithDecoderMaxWindow(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	got, err = kr.DecodeAll(compress(t, 3, raw, 64<<10), nil)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("libzstd frame through pure Go: err %v, equal %v", err, bytes.Equal(got, raw))
	}
}

// Frames carry the content checksum (header bit) and the decoder checks it.
func TestContentChecksum(t *testing.T) {
	raw := walLike(100_000, 3)
	z := compress(t, 3, raw, 1<<20)
	if z[4]&(1<<2) == 0 {
		t.Fatalf("frame header descriptor %#x: no Content_Checksum_flag", z[4])
	}
	bad := bytes.Clone(z)
	bad[len(bad)-1] ^= 1 // the checksum is the frame's last 4 bytes
	if _, err := decompress(bad, 1<<20); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("flipped checksum: err %v, want a checksum error", err)
	}
}

func TestDecoderRefusesBadInput(t *testing.T) {
	raw := walLike(400_000, 5)
	z := compress(t, 3, raw, 1<<20)
	big, err := zstd.NewWriter(nil, zstd.WithWindowSize(32<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	var bigFrame bytes.Buffer
	big.Reset(&bigFrame)
	if _, err := big.Write(walLike(9<<20, 9)); err != nil {
		t.Fatal(err)
	}
	if err := big.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		input []byte
		want  string
	}{
		{"empty", nil, ErrTruncated.Error()},
		{"truncated", z[:len(z)/2], ErrTruncated.Error()},
		{"cut before checksum", z[:len(z)-2], ErrTruncated.Error()},
		{"garbage after frame", append(bytes.Clone(z), "garbage!"...), "zstd: "},
		{"not zstd", []byte("this is not a zstd frame at all"), "zstd: "},
		{"window over 8 MiB", bigFrame.Bytes(), "zstd: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decompress(tc.input, 1<<20)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
			if errors.Is(err, io.EOF) {
				t.Fatalf("err %v is io.EOF", err)
			}
		})
	}
}

// Levels whose default window is over 8 MiB are capped, so every frame
// walferry writes reads back within the decoders' limit.
func TestWindowCapped(t *testing.T) {
	raw := walLike(10<<20, 11)
	z := compress(t, 22, raw, 1<<20)
	got, err := decompress(z, 1<<20)
	if err != nil || !bytes.Equal(got, raw) {
		t.Fatalf("level 22: err %v, equal %v", err, bytes.Equal(got, raw))
	}
}

func TestVersion(t *testing.T) {
	if v := Version(); !strings.HasPrefix(v, "1.") {
		t.Fatalf("Version() = %q", v)
	}
}

func BenchmarkEncode(b *testing.B) {
	raw := walLike(16<<20, 1)
	e, err := NewEncoder(3)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		e.Reset(io.Discard)
		if _, err := e.Write(raw); err != nil {
			b.Fatal(err)
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
