package pgcontrol

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The control files of package pg's test data, written by PostgreSQL 15;
// package pg checks every field it decodes against pg_controldata.
var realControlFiles = []string{"pg15-default", "pg15-wal64-checksums", "pg15-wal1-crashed", "pg15-wal1-standby", "pg15-wal1-promoted"}

func testdata(name string) string { return filepath.Join("..", "testdata", name) }

// dataDir makes a data directory holding the control file of name and
// PG_VERSION.
func dataDir(t *testing.T, name, pgVersion string) string {
	t.Helper()
	b, err := os.ReadFile(testdata(name + ".pg_control"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "global"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, Path), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte(pgVersion), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestReadIdentity reads the identity of each real control file and
// compares it with the fields package pg's golden files hold.
func TestReadIdentity(t *testing.T) {
	for _, name := range realControlFiles {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(testdata(name + ".json"))
			if err != nil {
				t.Fatal(err)
			}
			var golden struct {
				SystemIdentifier uint64
				Major            int
				WALSegmentSize   int64
			}
			if err := json.Unmarshal(raw, &golden); err != nil {
				t.Fatal(err)
			}
			got, err := ReadIdentity(dataDir(t, name, "15\n"))
			if err != nil {
				t.Fatal(err)
			}
			want := Identity{SystemIdentifier: golden.SystemIdentifier, Major: golden.Major, WALSegmentSize: golden.WALSegmentSize}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestReadIdentityErrors(t *testing.T) {
	if _, err := ReadIdentity(dataDir(t, "pg15-default", "17\n")); err == nil || !strings.Contains(err.Error(), "PG_VERSION says 17") {
		t.Errorf("PG_VERSION of another layout: %v", err)
	}
	if _, err := ReadIdentity(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("not a data directory: %v, want one wrapping os.ErrNotExist", err)
	}
	dir := dataDir(t, "pg15-default", "15\n")
	b, _ := os.ReadFile(filepath.Join(dir, Path))
	b[OffWALSegSize] ^= 1
	os.WriteFile(filepath.Join(dir, Path), b, 0o600)
	if _, err := ReadIdentity(dir); !errors.Is(err, ErrCRC) {
		t.Errorf("corrupt control file: %v, want ErrCRC", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range realControlFiles {
		b, err := os.ReadFile(testdata(name + ".pg_control"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:320])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		if _, err := MajorFromControlVersion(file.Version, file.CatalogVersion()); err != nil {
			t.Fatalf("accepted pg_control version %d: %v", file.Version, err)
		}
		_ = file.SystemIdentifier() + uint64(file.WALSegmentSize())
	})
}
