package codec

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"testing"
)

// benchSegment is one 16 MiB WAL-like segment, or the file named by
// WALFERRY_BENCH_SEGMENT (a real WAL segment compresses differently from
// the generated one: compare implementations on real ones).
func benchSegment(b *testing.B) []byte {
	if path := os.Getenv("WALFERRY_BENCH_SEGMENT"); path != "" {
		seg, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		return seg
	}
	return walLike(16<<20, 99)
}

func benchCases(b *testing.B) []combo {
	key := testKey(b, 1)
	return []combo{
		{"none", Options{}},
		{"lz4", Options{Compression: LZ4}},
		{"zstd", Options{Compression: Zstd}},
		{"zstd:1", Options{Compression: Zstd, Level: 1}},
		{"zstd:19", Options{Compression: Zstd, Level: 19}},
		{"gzip", Options{Compression: Gzip}},
		{"gzip:1", Options{Compression: Gzip, Level: 1}},
		{"none+aes", Options{Key: key}},
		{"lz4+aes", Options{Compression: LZ4, Key: key}},
		{"zstd+aes", Options{Compression: Zstd, Key: key}},
	}
}

// BenchmarkEncode measures archive-push's CPU path: one 16 MiB segment
// through a pooled Writer. MB/s is raw bytes per second; ratio% is the stored
// size relative to the raw size.
func BenchmarkEncode(b *testing.B) {
	seg := benchSegment(b)
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			c := New()
			var stored int64
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				w, err := c.NewWriter(io.Discard, bc.opts)
				if err != nil {
					b.Fatal(err)
				}
				// As archive-push does: io.Copy from the segment file.
				if _, err := io.Copy(w, struct{ io.Reader }{bytes.NewReader(seg)}); err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				stored = w.StoredSize()
			}
			b.ReportMetric(100*float64(stored)/float64(len(seg)), "ratio%")
		})
	}
}

// BenchmarkDecode measures archive-get's CPU path: one stored 16 MiB segment
// read, verified and copied out (io.Copy, hence Reader.WriteTo) through a
// pooled Reader.
func BenchmarkDecode(b *testing.B) {
	seg := benchSegment(b)
	for _, bc := range benchCases(b) {
		b.Run(bc.name, func(b *testing.B) {
			c := New()
			obj, _ := encode(b, c, seg, bc.opts, 0)
			b.SetBytes(int64(len(seg)))
			b.ReportAllocs()
			for b.Loop() {
				r, err := c.NewReader(bytes.NewReader(obj), keysFor(bc.opts))
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(seg)) {
					b.Fatalf("read %d, %v", n, err)
				}
			}
		})
	}
}

// BenchmarkSHA256 is the floor every encode and decode pays.
func BenchmarkSHA256(b *testing.B) {
	seg := benchSegment(b)
	b.SetBytes(int64(len(seg)))
	for b.Loop() {
		sha256.Sum256(seg)
	}
}
