package replication_test

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/walferry/walferry/internal/pg/replication"
)

// file feeds one file to the sink.
func file(s replication.Sink, name, content string) error {
	return s.File(context.Background(), replication.Entry{Name: name, Mode: 0o640, Size: int64(len(content)),
		ModTime: time.Unix(1700000000, 0)}, strings.NewReader(content))
}

// TestDirSinkStartableOnlyAtEnd: until End, the directory has no
// global/pg_control and no backup_label, so PostgreSQL refuses it; End puts
// them in place, with the files' modes and times.
func TestDirSinkStartableOnlyAtEnd(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "a", "data")
	s, err := replication.NewDirSink(dir, replication.DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Begin(ctx, replication.Start{}))
	must(s.Dir(ctx, replication.Entry{Name: "global", Mode: 0o750}))
	must(s.Dir(ctx, replication.Entry{Name: "base", Mode: 0o700}))
	must(file(s, "global/pg_control", "control"))
	must(file(s, "base/1", "relation"))
	must(file(s, "PG_VERSION", "15\n"))
	must(s.Symlink(ctx, replication.Entry{Name: "link", Target: "elsewhere"}))
	for _, p := range []string{"global/pg_control", "backup_label"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s exists before End (%v)", p, err)
		}
	}
	must(s.End(ctx, replication.Stop{BackupLabel: "START WAL LOCATION: 0/2000028\n"}))
	for p, want := range map[string]string{"global/pg_control": "control", "base/1": "relation", "PG_VERSION": "15\n",
		"backup_label": "START WAL LOCATION: 0/2000028\n"} {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "base/1"))
	if err != nil || fi.Mode() != 0o640 || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("base/1: %v, %v; want mode 0640 and the backup's time", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "global")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("global: %v, %v; want 0750", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "link")); err != nil || target != "elsewhere" {
		t.Errorf("link -> %q, %v", target, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tablespace_map")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("tablespace_map without tablespaces: %v", err)
	}
}

// TestDirSinkFailure: a file whose stream breaks leaves nothing under its
// name (nor a temporary file); Remove deletes what the sink made, up to
// the parents it created.
func TestDirSinkFailure(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dir := filepath.Join(root, "new", "data")
	ts := filepath.Join(root, "ts")
	if err := os.Mkdir(ts, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := replication.NewDirSink(dir, replication.DirOptions{Tablespaces: map[string]string{"/srv/ts": ts}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Begin(ctx, replication.Start{Tablespaces: []replication.Tablespace{{OID: 16400, Location: "/srv/ts"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Dir(ctx, replication.Entry{Name: "pg_tblspc/16400/PG_15", Mode: 0o700}); err != nil {
		t.Fatal(err)
	}
	if err := file(s, "pg_tblspc/16400/PG_15/1", "in the tablespace"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ts, "PG_15", "1")); err != nil || string(b) != "in the tablespace" {
		t.Errorf("tablespace file: %q, %v", b, err)
	}
	broken := io.MultiReader(strings.NewReader("half"), iotest.ErrReader(errors.New("connection reset")))
	err = s.File(ctx, replication.Entry{Name: "big", Mode: 0o600, Size: 100}, broken)
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("File with a broken stream: %v", err)
	}
	if err := file(s, "short", "ab"); err != nil {
		t.Fatal(err)
	}
	if err := s.File(ctx, replication.Entry{Name: "truncated", Mode: 0o600, Size: 10}, strings.NewReader("abc")); err == nil {
		t.Error("a file shorter than its header was accepted")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "short" && e.Name() != "pg_tblspc" {
			t.Errorf("after the failures the directory holds %s", e.Name())
		}
	}
	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "new")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Remove left the directory it created: %v", err)
	}
	if entries, err := os.ReadDir(ts); err != nil || len(entries) != 0 {
		t.Errorf("Remove left %v in the tablespace directory it was given (%v)", entries, err)
	}
}

// TestDirSinkRefusesNonEmpty: a base backup never mixes with other files.
func TestDirSinkRefusesNonEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := replication.NewDirSink(dir, replication.DirOptions{}); !errors.Is(err, fs.ErrExist) {
		t.Errorf("non-empty directory: %v, want fs.ErrExist", err)
	}
	s, err := replication.NewDirSink(filepath.Join(dir, "data"), replication.DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Begin(context.Background(), replication.Start{Tablespaces: []replication.Tablespace{{OID: 1, Location: dir}}})
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("non-empty tablespace directory: %v, want fs.ErrExist", err)
	}
}
