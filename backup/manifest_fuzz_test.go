package backup

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

var fuzzMeta = repo.Metadata{FormatVersion: 1, SystemID: 7310012345678901234, PGMajor: 15, WALSegmentSize: 16 << 20}

// fuzzSeed is a valid incremental manifest: a file split across its own
// object and its parent's, an empty file, a tablespace.
func fuzzSeed() *Manifest {
	const id, parent = "20261122T111500I", "20261122T101500F"
	own, old := repo.BackupDataKey(id, 1), repo.BackupDataKey(parent, 3)
	sum := strings.Repeat("0f", 32)
	return &Manifest{FormatVersion: 1, ID: id, Type: Incremental, Parent: parent, Mode: "local",
		StartLSN: 0x5F000028, StopLSN: 0x5F000138, Timeline: 1,
		StartWAL: "00000001000000000000005F", StopWAL: "00000001000000000000005F",
		SystemID: fuzzMeta.SystemID, PGVersionNum: 150004, BackupLabel: "START WAL LOCATION: 0/5F000028\n",
		Tablespaces: []Tablespace{{OID: 16390, Name: "fast", Location: "/mnt/fast"}},
		Dirs:        []Dir{{Path: ".", Mode: 0o700}, {Path: "base", Mode: 0o700}, {Path: "pg_tblspc/16390/PG_15_1", Mode: 0o700}},
		Files: []File{
			{Path: "base/5/16398", Size: UnitSize + 8192, Sums: []string{sum, sum}, CRCs: []uint32{1, 2}, Extents: []Extent{
				{Off: 0, Len: 8192, Key: old, At: 0}, {Off: 8192, Len: UnitSize, Key: own, At: 0}}},
			{Path: "pg_tblspc/16390/PG_15_1/5/1", Sums: []string{}},
		},
		Objects: []Object{{Key: own, RawSize: UnitSize, StoredSize: 100, Sum: "sha256:x"}},
	}
}

// FuzzParseManifest: parsing never panics; an accepted manifest keeps
// every file inside the data directory, tiles every file with extents in
// backup data objects at offsets that do not overflow, and parses again
// to itself; a refused one that decodes says which rules it breaks.
func FuzzParseManifest(f *testing.F) {
	seed := fuzzSeed()
	body, err := json.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := parseManifest(body, seed.ID, "test", fuzzMeta); err != nil {
		f.Fatalf("the seed is refused: %v", err)
	}
	f.Add(body)
	for _, edit := range []func(m *Manifest){
		func(m *Manifest) { m.Files[0].Path = "../../etc/passwd" },
		func(m *Manifest) { m.Files[0].Extents[1].Len-- },
		func(m *Manifest) { m.Files[0].Extents[0].At = math.MaxInt64 },
		func(m *Manifest) { m.Files[1].Path = "pg_tblspc/16390" },
	} {
		m := fuzzSeed()
		edit(m)
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := parseManifest(body, fuzzSeed().ID, "test", fuzzMeta)
		var me *ManifestError
		switch {
		case errors.As(err, &me):
			if m == nil || len(me.Issues) == 0 {
				t.Fatalf("a refusal without its manifest or its issues: %v", err)
			}
			for _, is := range me.Issues {
				if is.file < 0 || is.file > len(m.Files) {
					t.Fatalf("issue %q names file %d of %d", is, is.file, len(m.Files))
				}
			}
			return
		case err != nil:
			return
		}
		checkAccepted(t, m)
		again, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := parseManifest(again, m.ID, "test", fuzzMeta)
		if err != nil {
			t.Fatalf("an accepted manifest, written again, is refused: %v", err)
		}
		if third, _ := json.Marshal(m2); !bytes.Equal(again, third) {
			t.Fatalf("an accepted manifest does not parse again to itself:\n%s\n%s", again, third)
		}
	})
}

// checkAccepted checks what restore and verify rely on, without the
// rules' own code.
func checkAccepted(t *testing.T, m *Manifest) {
	t.Helper()
	size, _ := fuzzMeta.SegmentSize()
	if _, s0, err := pg.ParseSegmentName(m.StartWAL, size); err != nil || s0 != size.SegNoOf(m.StartLSN) {
		t.Fatalf("start_wal %q with start LSN %s", m.StartWAL, m.StartLSN)
	}
	for _, f := range m.Files {
		if p := filepath.Join("/data", filepath.FromSlash(f.Path)); !strings.HasPrefix(p, "/data/") || p != "/data/"+f.Path {
			t.Fatalf("file %q lands at %s", f.Path, p)
		}
		var pos int64
		for _, e := range f.Extents {
			if e.Off != pos || e.Len <= 0 || e.At < 0 || e.At+e.Len < e.At {
				t.Fatalf("file %s: extent %+v after %d bytes", f.Path, e, pos)
			}
			if id, ok := repo.BackupIDFromDataKey(e.Key); !ok || id > m.ID {
				t.Fatalf("file %s: extent in %q", f.Path, e.Key)
			}
			pos += e.Len
		}
		if pos != f.Size || int64(len(f.Sums)) != (f.Size+UnitSize-1)/UnitSize {
			t.Fatalf("file %s of %d bytes: extents cover %d, %d sums", f.Path, f.Size, pos, len(f.Sums))
		}
	}
}
