package pg

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func FuzzParseLSN(f *testing.F) {
	for _, s := range []string{"0/0", "16/B374D848", "ffffffff/ffffffff", "0/", "1/2/3", "00000000/00000001", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lsn, err := ParseLSN(s)
		if err != nil {
			return
		}
		text := lsn.String()
		back, err := ParseLSN(text)
		if err != nil {
			t.Fatalf("ParseLSN(%q) -> %v -> %q does not parse: %v", s, lsn, text, err)
		}
		if back != lsn {
			t.Fatalf("round trip %q -> %v -> %q -> %v", s, lsn, text, back)
		}
	})
}

// fuzzSegmentSizes are the sizes every WAL name fuzz input is parsed with.
var fuzzSegmentSizes = []int64{1 << 20, 16 << 20, 64 << 20, 1 << 30}

func FuzzParseWALFileName(f *testing.F) {
	for _, s := range []string{
		"000000010000000000000003", "00000002.history", "000000010000000000000003.00000028.backup",
		"000000010000000000000003.partial", "000000010000000100000FFF", "0000000100000000000000FF",
		"pg_wal/000000010000000000000003", "00000001000000000000000a", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for _, b := range fuzzSegmentSizes {
			size, err := NewWALSegmentSize(b)
			if err != nil {
				t.Fatal(err)
			}
			wf, err := ParseWALFileName(name, size)
			if err != nil {
				continue
			}
			if back := wf.Name(size); back != name {
				t.Fatalf("%s: %q parsed to %+v, which names %q", size, name, wf, back)
			}
			if strings.ContainsAny(name, `/\`) {
				t.Fatalf("%s: accepted a path %q", size, name)
			}
			if wf.TLI == 0 {
				t.Fatalf("%s: accepted timeline 0 in %q", size, name)
			}
			if wf.Kind == KindSegment {
				tli, segNo, err := ParseSegmentName(name, size)
				if err != nil || tli != wf.TLI || segNo != wf.SegNo {
					t.Fatalf("ParseSegmentName(%q) = %d, %d, %v; ParseWALFileName said %+v", name, tli, segNo, err, wf)
				}
				if got := size.SegNoOf(size.StartLSN(segNo)); got != segNo {
					t.Fatalf("%s: segment %d starts at %v, which maps to segment %d", size, segNo, size.StartLSN(segNo), got)
				}
			}
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add("1\t0/3000000\tno recovery target specified\n")
	f.Add("# c\n\n1\t0/3000000\tr\n2\t1/0\tat restore point \"x\"\n")
	f.Add("2 0/0\n1 0/0\n")
	f.Add("1\t0/0\t\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		entries, err := ParseHistory(strings.NewReader(in))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := FormatHistory(&buf, entries); err != nil {
			t.Fatal(err)
		}
		back, err := ParseHistory(&buf)
		if err != nil {
			t.Fatalf("formatted history %q does not parse: %v", buf.String(), err)
		}
		if len(entries) == 0 && len(back) == 0 {
			return
		}
		if !reflect.DeepEqual(back, entries) {
			t.Fatalf("round trip: %+v -> %q -> %+v", entries, buf.String(), back)
		}
	})
}

func FuzzParseControlFile(f *testing.F) {
	for _, name := range realControlFiles {
		b, err := os.ReadFile(filepath.Join("testdata", name+".pg_control"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:320])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(b []byte) {
			c, err := ParseControlFile(b)
			if err != nil {
				return
			}
			if c.Major < 13 {
				t.Fatalf("accepted a control file of major %d", c.Major)
			}
		}
		check(b)
		// Also with a valid CRC, so the fuzzer gets past the checksum.
		if len(b) < offControlVersion+4 {
			return
		}
		if order, layout, _, err := detectLayout(b); err == nil && len(b) >= layout.crc+4 {
			check(withCRC(bytes.Clone(b), layout.crc, order))
		}
	})
}

func FuzzParseControlDataOutput(f *testing.F) {
	for _, name := range realControlFiles {
		b, err := os.ReadFile(filepath.Join("testdata", name+".controldata.txt"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, in string) {
		_, _ = ParseControlDataOutput(strings.NewReader(in))
	})
}

func FuzzParseSizeSetting(f *testing.F) {
	for _, s := range []string{"16MB", "1GB", "8192", "512kB", "-1", "99999999999TB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSizeSetting(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSizeSetting(%q) = %d", s, n)
		}
	})
}
