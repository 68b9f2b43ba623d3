package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// smallObjects returns, for every combination, a few small encoded objects
// with 1 KiB records so that they span several records.
func smallObjects(t *testing.T) []struct {
	name string
	opts Options
	raw  []byte
	obj  []byte
} {
	t.Helper()
	var out []struct {
		name string
		opts Options
		raw  []byte
		obj  []byte
	}
	raws := map[string][]byte{
		"empty": nil,
		"wal":   walLike(6000, 21),
		"rand":  randomBytes(2500, 22),
	}
	for _, cb := range combos(t) {
		for _, name := range []string{"empty", "wal", "rand"} {
			opts := cb.opts
			opts.recordLg = minChunkLg
			obj, _ := encode(t, nil, raws[name], opts, 0)
			out = append(out, struct {
				name string
				opts Options
				raw  []byte
				obj  []byte
			}{cb.name + "/" + name, opts, raws[name], obj})
		}
	}
	return out
}

// mustDetect decodes obj and fails unless decoding ends in ErrCorrupt.
// Both ways of reading (WriteTo, as io.Copy uses it, and Read) must tell.
func mustDetect(t *testing.T, c *Codec, obj []byte, keys KeyResolver, what string) {
	t.Helper()
	_, _, err := decode(c, obj, keys)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%s: WriteTo err = %v, want ErrCorrupt", what, err)
	}
	_, _, err = decodeRead(c, obj, keys, 700)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("%s: Read err = %v, want ErrCorrupt", what, err)
	}
}

// TestCorruptionDetected flips every byte of small objects of every
// combination, and every bit of a sample of positions, and requires
// ErrCorrupt from the full read each time.
func TestCorruptionDetected(t *testing.T) {
	c := New()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, o := range smallObjects(t) {
		t.Run(o.name, func(t *testing.T) {
			keys := keysFor(o.opts)
			if got, _, err := decode(c, o.obj, keys); err != nil || !bytes.Equal(got, o.raw) {
				t.Fatalf("intact object: err %v", err)
			}
			obj := bytes.Clone(o.obj)
			for i := range obj {
				if raceEnabled && i%37 != 0 && i >= headerSize && i < len(obj)-80 {
					continue
				}
				for _, mask := range []byte{0xff, byte(1 << rng.IntN(8))} {
					obj[i] ^= mask
					mustDetect(t, c, obj, keys, fmt.Sprintf("byte %d ^ %#02x", i, mask))
					obj[i] ^= mask
				}
			}
			for range 64 {
				i := rng.IntN(len(obj))
				for bit := range 8 {
					obj[i] ^= 1 << bit
					mustDetect(t, c, obj, keys, fmt.Sprintf("byte %d bit %d", i, bit))
					obj[i] ^= 1 << bit
				}
			}
		})
	}
}

// TestTruncationDetected cuts objects at every length, and extends them.
func TestTruncationDetected(t *testing.T) {
	c := New()
	for _, o := range smallObjects(t) {
		t.Run(o.name, func(t *testing.T) {
			keys := keysFor(o.opts)
			for n := range len(o.obj) {
				if raceEnabled && n%37 != 0 && n >= headerSize && n < len(o.obj)-80 {
					continue
				}
				mustDetect(t, c, o.obj[:n], keys, fmt.Sprintf("cut at %d", n))
				_, _, err := decode(c, o.obj[:n], keys)
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("cut at %d of %d: err = %v, want ErrCorrupt", n, len(o.obj), err)
				}
				if n > 0 && !errors.Is(err, io.ErrUnexpectedEOF) && !strings.Contains(err.Error(), "trailer") {
					t.Errorf("cut at %d: err = %v, want it to say truncated", n, err)
				}
			}
			for _, extra := range [][]byte{{0}, {1, 2, 3}, o.obj[:20]} {
				mustDetect(t, c, append(bytes.Clone(o.obj), extra...), keys, fmt.Sprintf("extended by %d", len(extra)))
			}
		})
	}
}

// TestReorderDetected swaps, drops and duplicates whole records.
func TestReorderDetected(t *testing.T) {
	c := New()
	for _, o := range smallObjects(t) {
		recs := splitRecords(t, o.obj)
		if len(recs) < 3 { // header, >= 1 data record, trailer
			continue
		}
		t.Run(o.name, func(t *testing.T) {
			keys := keysFor(o.opts)
			join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
			hdr, data, tr := recs[0], recs[1:len(recs)-1], recs[len(recs)-1]
			cases := map[string][]byte{
				"no trailer":          join(append([][]byte{hdr}, data...)...),
				"trailer twice":       join(append(append([][]byte{hdr}, data...), tr, tr)...),
				"first record twice":  join(append(append([][]byte{hdr, data[0]}, data...), tr)...),
				"last record dropped": join(append(append([][]byte{hdr}, data[:len(data)-1]...), tr)...),
			}
			if len(data) >= 2 {
				sw := append([][]byte{}, data...)
				sw[0], sw[1] = sw[1], sw[0]
				cases["first two swapped"] = join(append(append([][]byte{hdr}, sw...), tr)...)
			}
			for name, obj := range cases {
				mustDetect(t, c, obj, keys, name)
			}
		})
	}
}

// TestSpliceDetected moves records between two objects with identical
// options and sizes.
func TestSpliceDetected(t *testing.T) {
	c := New()
	for _, cb := range combos(t) {
		opts := cb.opts
		opts.recordLg = minChunkLg
		rawA := randomBytes(3000, 31)
		a, _ := encode(t, nil, rawA, opts, 0)
		b, _ := encode(t, nil, randomBytes(3000, 32), opts, 0)
		ra, rb := splitRecords(t, a), splitRecords(t, b)
		for i := 1; i < len(ra); i++ {
			mixed := append([][]byte{}, ra...)
			mixed[i] = rb[i]
			if i == len(ra)-1 && opts.Key == nil && (opts.Compression == Zstd || opts.Compression == Gzip) {
				// Without encryption nothing binds the trailer to the
				// content but the SHA-256, which readers skip when the
				// stream checks its content itself (reader.go,
				// peekStream). Another object's trailer of the same
				// header, length and record count then goes unnoticed,
				// but the content read is still exactly a's, verified.
				got, _, err := decode(c, bytes.Join(mixed, nil), nil)
				if err != nil || !bytes.Equal(got, rawA) {
					t.Errorf("%s: a's content with b's trailer: err %v, content equal %v", cb.name, err, bytes.Equal(got, rawA))
				}
				continue
			}
			mustDetect(t, c, bytes.Join(mixed, nil), keysFor(opts), fmt.Sprintf("%s: record %d from another object", cb.name, i))
		}
	}
}

// splitRecords cuts an object into [header, record..., trailer record].
func splitRecords(t testing.TB, obj []byte) [][]byte {
	t.Helper()
	h, err := readHeader(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	out := [][]byte{obj[:headerSize]}
	for p := obj[headerSize:]; len(p) > 0; {
		word := uint32(p[0])<<24 | uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3])
		n := recordHeaderSize + int(word&^trailerBit) + h.checkSize()
		out = append(out, p[:n])
		p = p[n:]
	}
	return out
}

// TestReadInfoDetectsMetadataDamage: ReadInfo reads only header and trailer,
// so damage there (and any truncation) must be reported.
func TestReadInfoDetectsMetadataDamage(t *testing.T) {
	for _, o := range smallObjects(t) {
		keys := keysFor(o.opts)
		h, err := readHeader(bytes.NewReader(o.obj))
		if err != nil {
			t.Fatal(err)
		}
		tail := recordHeaderSize + trailerSize + h.checkSize()
		obj := bytes.Clone(o.obj)
		var positions []int
		for i := range headerSize {
			positions = append(positions, i)
		}
		for i := len(obj) - tail; i < len(obj); i++ {
			positions = append(positions, i)
		}
		for _, i := range positions {
			obj[i] ^= 0x10
			if _, err := ReadInfo(bytes.NewReader(obj), int64(len(obj)), keys); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: byte %d flipped: ReadInfo err = %v, want ErrCorrupt", o.name, i, err)
			}
			obj[i] ^= 0x10
		}
		for n := range len(obj) {
			if _, err := ReadInfo(bytes.NewReader(obj[:n]), int64(n), keys); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s: cut at %d: ReadInfo err = %v, want ErrCorrupt", o.name, n, err)
			}
		}
	}
}

// TestCorruptMessages pins the wording callers and operators see.
func TestCorruptMessages(t *testing.T) {
	raw := []byte("some WAL bytes")
	obj, _ := encode(t, nil, raw, Options{}, 0)
	// Rewrite the raw byte in the (uncompressed) payload and fix the record
	// CRC, so that only the trailer's SHA-256 can tell.
	forged := forgeRecord(t, obj, func(p []byte) { p[0] ^= 1 })
	_, _, err := decode(nil, forged, nil)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "object corrupt: checksum mismatch: stored sha256:") || !strings.Contains(msg, " computed sha256:") {
		t.Errorf("message = %q", msg)
	}

	_, _, err = decode(nil, []byte("\x00\x00\x00\x00not an object at all, really"), nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "not a walferry object") {
		t.Errorf("bad magic: err = %v", err)
	}
}

// forgeRecord applies edit to the payload of the first data record of an
// unencrypted object and recomputes that record's CRC.
func forgeRecord(t *testing.T, obj []byte, edit func([]byte)) []byte {
	t.Helper()
	out := bytes.Clone(obj)
	h, err := readHeader(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	p := out[headerSize:]
	word := uint32(p[0])<<24 | uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3])
	n := int(word)
	payload := p[recordHeaderSize : recordHeaderSize+n]
	edit(payload)
	crc := recordCRC(new([16]byte), h.crc, 0, word, payload)
	p[recordHeaderSize+n] = byte(crc >> 24)
	p[recordHeaderSize+n+1] = byte(crc >> 16)
	p[recordHeaderSize+n+2] = byte(crc >> 8)
	p[recordHeaderSize+n+3] = byte(crc)
	return out
}

// TestHeaderValidation: headers with a correct CRC but impossible fields, and
// headers of other versions.
func TestHeaderValidation(t *testing.T) {
	base, _ := encode(t, nil, []byte("x"), Options{Compression: LZ4}, 0)
	withCRC := func(h []byte) []byte {
		n := len(h)
		crc := crc32.Checksum(h[:n-4], castagnoli)
		binary.BigEndian.PutUint32(h[n-4:], crc)
		return h
	}
	edit := func(f func(h []byte)) []byte {
		obj := bytes.Clone(base)
		f(obj[:headerSize])
		withCRC(obj[:headerSize])
		return obj
	}
	v2 := func(hlen int, goodCRC bool) []byte {
		h := make([]byte, hlen)
		copy(h, "WFRY")
		h[4], h[5] = 2, byte(hlen)
		if goodCRC {
			withCRC(h)
		}
		return append(h, base[headerSize:]...)
	}
	tests := []struct {
		name string
		obj  []byte
		want error
	}{
		{"unknown compression", edit(func(h []byte) { h[6] = 4 }), ErrCorrupt},
		{"unknown flag", edit(func(h []byte) { h[7] = 2 }), ErrCorrupt},
		{"record size too small", edit(func(h []byte) { h[8] = 9 }), ErrCorrupt},
		{"record size too large", edit(func(h []byte) { h[8] = 21 }), ErrCorrupt},
		{"reserved byte", edit(func(h []byte) { h[10] = 1 }), ErrCorrupt},
		{"key id without encryption", edit(func(h []byte) { h[keyIDOffset] = 1 }), ErrCorrupt},
		{"salt without encryption", edit(func(h []byte) { h[saltOffset+31] = 1 }), ErrCorrupt},
		{"v1 with another header length", edit(func(h []byte) { h[5] = 60 }), ErrCorrupt},
		{"newer version", v2(64, true), ErrUnsupportedVersion},
		{"damaged version byte", v2(64, false), ErrCorrupt},
		{"tiny header length", v2(8, true), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decode(nil, tt.obj, nil)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if tt.want == ErrUnsupportedVersion && errors.Is(err, ErrCorrupt) {
				t.Errorf("newer version reported as corrupt: %v", err)
			}
		})
	}
}

// TestContentCheckVerified: a zstd frame with its content checksum is
// trusted instead of the trailer's SHA-256, so the decoder must verify it;
// a frame without one (objects written before the checksum) falls back to
// the SHA-256. In both cases one altered content byte, with records and
// trailer consistent around it, is ErrCorrupt.
func TestContentCheckVerified(t *testing.T) {
	raw := randomBytes(5000, 41) // incompressible: stored verbatim in raw blocks
	for _, withCRC := range []bool{true, false} {
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(withCRC))
		if err != nil {
			t.Fatal(err)
		}
		stream := zw.EncodeAll(raw, nil)
		at := bytes.Index(stream, raw[1000:1032])
		if at < 0 {
			t.Fatal("content not stored verbatim")
		}
		altered := bytes.Clone(stream)
		altered[at] ^= 0x40
		content := bytes.Clone(raw)
		content[1000] ^= 0x40
		// The trailer is right for what the altered frame decodes to when
		// withCRC is true (only the frame checksum can tell), and for the
		// original content when false (only the SHA-256 can tell).
		sum := sha256.Sum256(content)
		if !withCRC {
			sum = sha256.Sum256(raw)
		}
		obj := frameStream(Zstd, minChunkLg, altered, int64(len(raw)), sum)
		mustDetect(t, New(), obj, nil, fmt.Sprintf("zstd frame checksum %v, one content byte altered", withCRC))

		good := frameStream(Zstd, minChunkLg, stream, int64(len(raw)), sha256.Sum256(raw))
		got, zr, err := decode(New(), good, nil)
		if err != nil || !bytes.Equal(got, raw) || zr.Sum() != FormatSum(sha256.Sum256(raw)) {
			t.Errorf("zstd frame checksum %v, intact: err %v, equal %v, sum %q", withCRC, err, bytes.Equal(got, raw), zr.Sum())
		}
	}
}
