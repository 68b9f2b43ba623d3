package codec

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"strconv"
	"testing"
)

// fuzzReadLimit caps what a fuzzed object may decode to: a tiny input can
// legitimately describe gigabytes of zeros, which is bounded in memory but not
// in time.
const fuzzReadLimit = 32 << 20

// fuzzKey is the key FuzzReader offers for encrypted inputs.
func fuzzKey(t testing.TB) *Key { return testKey(t, 7) }

// readFuzzed decodes obj and checks the Reader's contract: no panic, and a
// clean io.EOF only with content that matches the trailer.
func readFuzzed(t *testing.T, c *Codec, obj []byte, keys KeyResolver) {
	r, err := c.NewReader(bytes.NewReader(obj), keys)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrNoKey) &&
			!errors.Is(err, ErrNotEncrypted) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Fatalf("NewReader: unclassified error %v", err)
		}
		return
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, fuzzReadLimit))
	if n == fuzzReadLimit {
		return // too long to finish; nothing went wrong so far
	}
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Read: error %v does not match ErrCorrupt", err)
		}
		if r.Sum() != "" {
			t.Fatalf("Sum() = %q after a failed read", r.Sum())
		}
		return
	}
	// A clean EOF: the data must be exactly what the trailer describes.
	var sum [32]byte
	h.Sum(sum[:0])
	if r.Sum() != FormatSum(sum) || r.RawSize() != n {
		t.Fatalf("clean EOF but Sum %s / RawSize %d, computed %s / %d", r.Sum(), r.RawSize(), FormatSum(sum), n)
	}
	info, err := ReadInfo(bytes.NewReader(obj), int64(len(obj)), keys)
	if err != nil {
		t.Fatalf("Reader accepted the object, ReadInfo refused it: %v", err)
	}
	if info.Sum != r.Sum() || info.RawSize != n {
		t.Fatalf("ReadInfo %+v disagrees with the Reader (%s, %d)", info, r.Sum(), n)
	}
}

// FuzzReader feeds arbitrary bytes to NewReader, both as a whole object and,
// so that the fuzzer gets past the checksums, as the compressed body of a
// correctly framed object of every compression (exercising the decompressors
// on hostile input).
func FuzzReader(f *testing.F) {
	key := fuzzKey(f)
	raw := walLike(5000, 51)
	for _, cb := range combos(f) {
		opts := cb.opts
		opts.Key = nil
		if cb.opts.Key != nil {
			opts.Key = key
		}
		opts.recordLg = minChunkLg
		obj, _ := encode(f, nil, raw, opts, 0)
		f.Add(obj)
		f.Add(obj[:len(obj)/2])
		empty, _ := encode(f, nil, nil, opts, 0)
		f.Add(empty)
		// The compressed stream alone, as the body-fuzzing half uses it.
		var stream bytes.Buffer
		for _, rec := range splitRecords(f, obj)[1:] {
			if cb.opts.Key == nil && rec[0]&0x80 == 0 {
				stream.Write(rec[4 : len(rec)-4])
			}
		}
		if stream.Len() > 0 {
			f.Add(stream.Bytes())
		}
	}
	f.Add([]byte("WFRY"))
	f.Add([]byte("WFRY\x02\x10aaaaaaaaaaaaaa"))
	f.Add([]byte{})
	c := New()
	f.Fuzz(func(t *testing.T, data []byte) {
		readFuzzed(t, c, data, nil)
		readFuzzed(t, c, data, key)
		sum := sha256.Sum256(nil)
		for _, comp := range []Compression{None, LZ4, Zstd, Gzip} {
			readFuzzed(t, c, frameStream(comp, minChunkLg, data, int64(len(data)), sum), nil)
		}
	})
}

// FuzzReadInfo: ReadInfo never panics and only accepts what a Reader accepts.
func FuzzReadInfo(f *testing.F) {
	key := fuzzKey(f)
	for _, opts := range []Options{{Compression: Zstd}, {Compression: LZ4, Key: key}} {
		opts.recordLg = minChunkLg
		obj, _ := encode(f, nil, walLike(3000, 52), opts, 0)
		f.Add(obj, int64(0))
		f.Add(obj, int64(-5))
	}
	f.Fuzz(func(t *testing.T, data []byte, delta int64) {
		size := int64(len(data))
		if delta < 0 && -delta < size {
			size += delta // claim a shorter object than stored
		}
		for _, keys := range []KeyResolver{nil, key} {
			_, err := ReadInfo(bytes.NewReader(data), size, keys)
			if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) && !errors.Is(err, ErrNoKey) &&
				!errors.Is(err, ErrNotEncrypted) && !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("ReadInfo: unclassified error %v", err)
			}
		}
	})
}

func FuzzParseCompression(f *testing.F) {
	for _, s := range []string{"none", "lz4", "zstd", "gzip", "zstd:19", "gzip:9", "lz4:1", "ZSTD:3", "zstd:", ":", "zstd:0x10", " gzip "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, level, err := ParseCompression(s)
		if err != nil {
			return
		}
		if !c.valid() || checkLevel(c, level) != nil {
			t.Fatalf("ParseCompression(%q) = %v, %d: not a valid combination", s, c, level)
		}
		spec := c.String()
		if level != 0 {
			spec += ":" + strconv.Itoa(level)
		}
		c2, level2, err := ParseCompression(spec)
		if err != nil || c2 != c || level2 != level {
			t.Fatalf("ParseCompression(%q) = %v, %d; its canonical form %q parses as %v, %d, %v", s, c, level, spec, c2, level2, err)
		}
		if (Options{Compression: c, Level: level}).Validate() != nil {
			t.Fatalf("ParseCompression(%q) result fails Options.Validate", s)
		}
	})
}

// FuzzRoundTrip: whatever the content, write pattern and options, what is read
// back is what was written.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello"), uint8(0), uint8(0), false, uint16(0))
	f.Add(walLike(4000, 53), uint8(1), uint8(0), true, uint16(100))
	f.Add(walLike(9000, 54), uint8(2), uint8(19), false, uint16(4096))
	f.Add(randomBytes(3000, 55), uint8(3), uint8(9), true, uint16(1))
	f.Add([]byte{}, uint8(2), uint8(0), true, uint16(0))
	key := fuzzKey(f)
	c := New()
	f.Fuzz(func(t *testing.T, data []byte, comp, level uint8, encrypt bool, step uint16) {
		opts := Options{Compression: Compression(comp % 4)}
		if lo, hi := opts.Compression.levelRange(); hi > 0 {
			opts.Level = int(level) % (hi + 1)
			if opts.Level != 0 && opts.Level < lo {
				opts.Level = lo
			}
		}
		if opts.Compression == LZ4 && opts.Level > 3 {
			opts.Level = 3 // lz4 HC at high levels is slow; levels are covered by TestLevels
		}
		if encrypt {
			opts.Key = key
		}
		opts.recordLg = minChunkLg + int(level)%3
		st := int(step)
		if step == 0xffff {
			st = -1 // through ReadFrom
		}
		obj, w := encode(t, c, data, opts, st)
		if want := FormatSum(sha256.Sum256(data)); w.Sum() != want {
			t.Fatalf("Writer.Sum = %s, want %s", w.Sum(), want)
		}
		got, r, err := decode(c, obj, keysFor(opts))
		if err != nil {
			t.Fatalf("decode %+v: %v", opts, err)
		}
		if !bytes.Equal(got, data) || r.Sum() != w.Sum() {
			t.Fatalf("round trip %+v changed the data", opts)
		}
	})
}
