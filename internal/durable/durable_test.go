package durable_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/walferry/walferry/internal/durable"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, content := range []string{"first", "second, longer"} {
		if err := durable.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != content {
			t.Errorf("read back %q, %v; want %q", b, err, content)
		}
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&^0o640 != 0 {
		t.Errorf("mode: %v, %v", fi, err)
	}
	if _, err := os.Stat(p + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	// A failure leaves neither the file nor its temporary.
	missing := filepath.Join(dir, "no", "f")
	if err := durable.WriteFile(missing, []byte("x"), 0o600); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("write into a missing directory: %v", err)
	}
}

func TestRenameAndSync(t *testing.T) {
	dir := t.TempDir()
	from, to := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(from, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := durable.Rename(from, to); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(to); err != nil {
		t.Error(err)
	}
	for _, p := range []string{to, dir} {
		if err := durable.Sync(p); err != nil {
			t.Errorf("Sync(%s): %v", p, err)
		}
	}
	if err := durable.Sync(from); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Sync of a missing file: %v", err)
	}
}
