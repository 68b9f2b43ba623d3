package codec

import (
	"bytes"
	"compress/gzip"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

var update = flag.Bool("update", false, "rewrite the golden objects in testdata/")

// goldenContent is the raw content of every golden object.
func goldenContent() []byte { return walLike(20_000, 42) }

// TestGolden decodes objects written by an earlier walferry: every future
// version must still read them. With -update it rewrites them.
func TestGolden(t *testing.T) {
	raw := goldenContent()
	key := testKey(t, 7)
	for _, cb := range combos(t) {
		path := filepath.Join("testdata", "golden", cb.name+".wfo")
		if *update {
			opts := cb.opts
			opts.recordLg = 12
			obj, _ := encode(t, nil, raw, opts, 0)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, obj, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		obj, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGolden -update to create it)", err)
		}
		got, _, err := decode(nil, obj, keysFor(cb.opts))
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: decode err %v, content equal %v", path, err, bytes.Equal(got, raw))
		}
		// The independent decoder written from docs/object-format.md agrees.
		var k *Key
		if cb.opts.Key != nil {
			k = key
		}
		got, err = referenceDecode(obj, k)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: reference decode err %v, content equal %v", path, err, bytes.Equal(got, raw))
		}
	}
}

// TestReferenceDecoder checks freshly written objects with the decoder below.
func TestReferenceDecoder(t *testing.T) {
	raw := walLike(300_000, 43)
	for _, cb := range combos(t) {
		obj, _ := encode(t, nil, raw, cb.opts, 0)
		got, err := referenceDecode(obj, cb.opts.Key)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("%s: reference decode err %v, content equal %v", cb.name, err, bytes.Equal(got, raw))
		}
	}
}

// referenceDecode decodes an object following docs/object-format.md step by
// step, using none of the package's code except for the master key's bytes.
// It holds everything in memory: it documents the format, it is not a reader.
func referenceDecode(obj []byte, key *Key) ([]byte, error) {
	be := binary.BigEndian
	crcTab := crc32.MakeTable(crc32.Castagnoli)
	if len(obj) < 56 || string(obj[:4]) != "WFRY" || obj[4] != 1 || obj[5] != 56 {
		return nil, errors.New("not a version 1 object")
	}
	hdr := obj[:56]
	hcrc := be.Uint32(hdr[52:])
	if crc32.Checksum(hdr[:52], crcTab) != hcrc {
		return nil, errors.New("header crc")
	}
	comp, flags, recSize := hdr[6], hdr[7], 1<<hdr[8]
	var aead cipher.AEAD
	if flags&1 != 0 {
		if key == nil {
			return nil, errors.New("encrypted")
		}
		sub, err := hkdf.Key(sha256.New, key.mat().secret[:], hdr[20:52], "walferry object v1\x00"+string(hdr), 32)
		if err != nil {
			return nil, err
		}
		block, _ := aes.NewCipher(sub)
		aead, _ = cipher.NewGCM(block)
	}
	var stream []byte
	p := obj[56:]
	for i := uint64(0); ; i++ {
		if len(p) < 4 {
			return nil, errors.New("truncated")
		}
		word := be.Uint32(p)
		n := int(word & 0x7fffffff)
		check := 4
		if aead != nil {
			check = 16
		}
		if len(p) < 4+n+check || n > recSize {
			return nil, errors.New("bad record")
		}
		payload := p[4 : 4+n]
		if aead != nil {
			nonce := be.AppendUint64(make([]byte, 4), i)
			ad := be.AppendUint32(be.AppendUint64(nil, i), word)
			var err error
			if payload, err = aead.Open(nil, nonce, p[4:4+n+16], ad); err != nil {
				return nil, fmt.Errorf("record %d: %w", i, err)
			}
		} else {
			pre := be.AppendUint32(be.AppendUint64(be.AppendUint32(nil, hcrc), i), word)
			if crc32.Checksum(append(pre, payload...), crcTab) != be.Uint32(p[4+n:]) {
				return nil, fmt.Errorf("record %d crc", i)
			}
		}
		p = p[4+n+check:]
		if word&0x80000000 == 0 {
			stream = append(stream, payload...)
			continue
		}
		if len(p) != 0 || n != 48 || be.Uint64(payload[8:]) != i {
			return nil, errors.New("bad trailer")
		}
		var raw []byte
		var err error
		switch comp {
		case 0:
			raw = stream
		case 1:
			raw, err = io.ReadAll(lz4.NewReader(bytes.NewReader(stream)))
		case 2:
			var d *zstd.Decoder
			if d, err = zstd.NewReader(nil); err == nil {
				raw, err = d.DecodeAll(stream, nil)
				d.Close()
			}
		case 3:
			var zr *gzip.Reader
			if zr, err = gzip.NewReader(bytes.NewReader(stream)); err == nil {
				raw, err = io.ReadAll(zr)
			}
		}
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(raw)
		if uint64(len(raw)) != be.Uint64(payload[0:]) || !bytes.Equal(sum[:], payload[16:48]) {
			return nil, errors.New("raw length or checksum mismatch")
		}
		return raw, nil
	}
}

// frameStream wraps an arbitrary compressed stream in a valid unencrypted
// object body: records with correct CRCs and a trailer claiming rawSize and
// sum. It lets tests (and the fuzzer) feed hostile input to decompressors.
func frameStream(comp Compression, recordLg int, stream []byte, rawSize int64, sum [32]byte) []byte {
	h := &header{compression: comp, chunkSize: 1 << recordLg}
	h.encode()
	var out bytes.Buffer
	out.Write(h.raw[:])
	fw := frameWriter{dst: &out, hdrCRC: h.crc, chunk: h.chunkSize, check: crcSize, buf: make([]byte, recordBufSize(h.chunkSize))}
	_, _ = fw.Write(stream)
	_ = fw.finish(&trailer{rawSize: rawSize, sum: sum})
	return out.Bytes()
}

// TestDecompressorBombs: compressed streams that ask for huge windows or
// blocks are refused (ErrCorrupt) before allocating what they ask for.
func TestDecompressorBombs(t *testing.T) {
	zstdFrame := func(windowLog byte) []byte {
		// magic, frame header descriptor (window descriptor present, no
		// content size), window descriptor, one last raw block of 1 byte.
		return []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (windowLog - 10) << 3, 0x09, 0x00, 0x00, 'x'}
	}
	tests := []struct {
		name   string
		comp   Compression
		stream []byte
	}{
		{"zstd 2 GiB window", Zstd, zstdFrame(31)},
		{"zstd 64 MiB window", Zstd, zstdFrame(26)},
		// lz4 frame: magic, FLG (version 01, block independence), BD with a
		// reserved block size code 7, header checksum byte.
		{"lz4 bad block size", LZ4, []byte{0x04, 0x22, 0x4d, 0x18, 0x60, 0x70, 0x73, 0xff, 0xff, 0xff, 0x7f}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := frameStream(tt.comp, defaultChunkLg, tt.stream, 1, [32]byte{})
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, _, err := decode(nil, obj, nil)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 24<<20 {
				t.Errorf("decoding allocated %d MiB", alloc>>20)
			}
		})
	}
	// Sanity: an 8 MiB window (what our encoder uses at most) is accepted.
	obj := frameStream(Zstd, defaultChunkLg, zstdFrame(23), 1, sha256.Sum256([]byte("x")))
	if got, _, err := decode(nil, obj, nil); err != nil || string(got) != "x" {
		t.Errorf("8 MiB window: %q, %v", got, err)
	}
}

// TestMemoryBounded streams 64 MiB through a pooled Writer and Reader and
// checks that the bytes allocated do not grow with the object.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 64 MiB per combination")
	}
	const size = 64 << 20
	chunk := walLike(1<<20, 44)
	c := New()
	for _, cb := range combos(t) {
		t.Run(cb.name, func(t *testing.T) {
			run := func() {
				pr, pw := io.Pipe()
				go func() {
					w, err := c.NewWriter(pw, cb.opts)
					if err != nil {
						pw.CloseWithError(err)
						return
					}
					for range size / len(chunk) {
						if _, err := w.Write(chunk); err != nil {
							pw.CloseWithError(err)
							return
						}
					}
					pw.CloseWithError(w.Close())
				}()
				r, err := c.NewReader(pr, keysFor(cb.opts))
				if err != nil {
					t.Fatal(err)
				}
				n, err := io.CopyBuffer(io.Discard, r, make([]byte, 256<<10))
				if err != nil || n != size {
					t.Fatalf("copied %d, err %v", n, err)
				}
			}
			run() // warm the pools
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			run()
			runtime.ReadMemStats(&after)
			// Pools may have been emptied by a GC in between, so allow for
			// re-creating every encoder and decoder once; what must not
			// happen is allocation proportional to the 64 MiB.
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("a 64 MiB round trip allocated %d KiB", alloc>>10)
			if alloc > 40<<20 {
				t.Errorf("a 64 MiB round trip allocated %d MiB", alloc>>20)
			}
		})
	}
}
