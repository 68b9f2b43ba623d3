package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, d := range []Durability{Durable, Volatile} {
		if err := WriteFile(p, strings.NewReader("one"), 0o640, d); err != nil {
			t.Fatal(err)
		}
		if err := WriteFile(p, strings.NewReader("two"), 0o640, d); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); string(b) != "two" {
			t.Errorf("%v: content %q, want the second write", d, b)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
			t.Errorf("%v: mode %v, want 0640", d, fi.Mode().Perm())
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// A failed write leaves the old file and no temporary file.
func TestWriteFileFailure(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := WriteFile(p, iotestErrReader{boom}, 0o600, Durable); !errors.Is(err, boom) {
		t.Fatalf("WriteFile with a failing reader: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("the old file became %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

// CommitWith's place may refuse (a name already taken): the temporary file
// goes, the existing file stays.
func TestCommitWithRefused(t *testing.T) {
	dir := t.TempDir()
	final := filepath.Join(dir, "f")
	os.WriteFile(final, []byte("first"), 0o600)
	f, tmp, err := CreateTemp(dir, "f-", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("second")
	noReplace := func(tmp, final string) error { return os.Link(tmp, final) }
	if err := CommitWith(f, tmp, final, Durable, noReplace); !errors.Is(err, os.ErrExist) {
		t.Fatalf("CommitWith over an existing name: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(final); string(b) != "first" {
		t.Errorf("the existing file became %q", b)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the temporary file is left: %v", err)
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

func TestWriteOwned(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		uid, gid = 4242, 4243
	}
	if err := WriteOwned(p, []byte("new"), 0o640, uid, gid); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "new" || fi.Mode().Perm() != 0o640 {
		t.Errorf("content %q, mode %v; want new, 0640", b, fi.Mode().Perm())
	}
	if st := fi.Sys().(*syscall.Stat_t); uid >= 0 && (int(st.Uid) != uid || int(st.Gid) != gid) {
		t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	// Its own ids: nothing to change, no privilege needed.
	if os.Geteuid() != 0 {
		if err := WriteOwned(p, []byte("again"), 0o600, os.Geteuid(), os.Getegid()); err != nil {
			t.Error(err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestRenameDurableAndSync(t *testing.T) {
	dir := t.TempDir()
	from, to := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(from, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := RenameDurable(from, to); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(to); err != nil {
		t.Error(err)
	}
	for _, p := range []string{to, dir} {
		if err := Sync(p); err != nil {
			t.Errorf("Sync(%s): %v", p, err)
		}
	}
	if err := Sync(from); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sync of a missing file: %v", err)
	}
}
