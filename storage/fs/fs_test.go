package fs

import (
	"context"
	"errors"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/storagetest"
)

func newClient(t *testing.T) *Client {
	t.Helper()
	c, err := New(Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		checkNoTemp(t, c.root)
	})
	return c
}

// checkNoTemp fails the test if a temporary file is left under root.
func checkNoTemp(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), tmpPrefix) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newClient(t) })
}

func TestPutIfAbsentWithoutHardLinks(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	c.noLink = true
	const key, writers = "wal/race", 8
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			errs[i] = c.PutIfAbsent(ctx, key, storagetest.NewReader(uint64(i), 1000+int64(i)))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("writers %d and %d both won", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, storage.ErrExist):
			t.Errorf("writer %d: %v, want nil or storage.ErrExist", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer won")
	}
	rc, err := c.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := storagetest.Verify(rc, uint64(winner), 1000+int64(winner)); err != nil {
		t.Error(err)
	}
}

// TestNoTempLeft checks that failed writes remove their temporary files
// (the cleanup registered by newClient walks the root).
func TestNoTempLeft(t *testing.T) {
	readErr := errors.New("reader failed")
	tests := []struct {
		name string
		run  func(ctx context.Context, c *Client) error
	}{
		{"cancel", func(ctx context.Context, c *Client) error {
			ctx, cancel := context.WithCancel(ctx)
			r := &cancelAfter{r: storagetest.NewReader(1, 8<<20), n: 3 << 20, cancel: cancel}
			return c.Put(ctx, "a/b/key", r)
		}},
		{"reader-error", func(ctx context.Context, c *Client) error {
			return c.Put(ctx, "a/b/key", io.MultiReader(storagetest.NewReader(1, 1<<20), errReader{readErr}))
		}},
		{"put-if-absent-cancel", func(ctx context.Context, c *Client) error {
			ctx, cancel := context.WithCancel(ctx)
			r := &cancelAfter{r: storagetest.NewReader(1, 8<<20), n: 1 << 20, cancel: cancel}
			return c.PutIfAbsent(ctx, "a/key", r)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			err := tc.run(t.Context(), c)
			if err == nil {
				t.Fatal("got nil error")
			}
		})
	}
}

// cancelAfter reads r and calls cancel once n bytes were read.
type cancelAfter struct {
	r      io.Reader
	n      int64
	read   int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read >= c.n {
		c.cancel()
	}
	return n, err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestBadKeys(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	outside := filepath.Join(filepath.Dir(c.root), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(outside) })
	keys := []string{
		"",
		"/abs",
		"/" + outside,
		"../outside",
		"a/../../outside",
		"a/./b",
		"./a",
		".",
		"..",
		"a//b",
		"a/",
		"a/.tmp-123",
		".tmp-x/b",
		"a\x00b",
	}
	for _, key := range keys {
		t.Run(key, func(t *testing.T) {
			ops := map[string]error{
				"Put":         c.Put(ctx, key, strings.NewReader("x")),
				"PutIfAbsent": c.PutIfAbsent(ctx, key, strings.NewReader("x")),
				"Delete":      c.Delete(ctx, key),
				"Copy-src":    c.Copy(ctx, key, "ok"),
				"Copy-dst":    c.Copy(ctx, "ok", key),
			}
			_, ops["Stat"] = c.Stat(ctx, key)
			_, ops["Get"] = c.Get(ctx, key)
			_, ops["GetRange"] = c.GetRange(ctx, key, 0, 1)
			for op, err := range ops {
				if err == nil || !strings.Contains(err.Error(), "invalid key") {
					t.Errorf("%s(%q) = %v, want an invalid key error", op, key, err)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(c.root, "ok")); err == nil {
		t.Error("a Copy with a bad key created its destination")
	}
	for _, prefix := range []string{"/abs", "../", "a/../", "a//", "./"} {
		if err := c.List(ctx, prefix, func(storage.ObjectInfo) error { return nil }); err == nil {
			t.Errorf("List(%q) = nil, want an invalid key error", prefix)
		}
	}
	// Partial names are fine prefixes even when they look odd.
	for _, prefix := range []string{"a/..", "a/.", ".", ".."} {
		if err := c.List(ctx, prefix, func(storage.ObjectInfo) error { return nil }); err != nil {
			t.Errorf("List(%q) = %v, want nil", prefix, err)
		}
	}
}

func TestNewRoot(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing", "repo")
	tests := []struct {
		name       string
		root       string
		wantErr    error  // nil: any error
		wantInText string // also required in the message
	}{
		{"empty", "", nil, "Root is empty"},
		{"missing", missing, storage.ErrNoBucket, missing + " is missing: if it lives on a mounted volume"},
		{"not-a-directory", file, nil, "not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{Root: tc.root})
			if err == nil {
				t.Fatalf("New(%q) = %v, nil; want an error", tc.root, c)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("New(%q) = %v, want an error matching %v", tc.root, err, tc.wantErr)
			}
			if errors.Is(err, storage.ErrNotExist) {
				t.Errorf("New(%q) = %v, must not match storage.ErrNotExist", tc.root, err)
			}
			if !strings.Contains(err.Error(), tc.wantInText) {
				t.Errorf("New(%q) = %q, want it to contain %q", tc.root, err, tc.wantInText)
			}
			if strings.Contains(err.Error(), "mkdir") {
				t.Errorf("New(%q) = %q: never advise creating a repository directory by hand (an unmounted volume would split the archive)", tc.root, err)
			}
		})
	}

	t.Run("relative", func(t *testing.T) {
		t.Chdir(dir)
		c, err := New(Config{Root: "."})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := c.String(), "file://"+dir; got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	})
}

// TestRootGone checks that a root removed (or unmounted) after New is
// reported as storage.ErrNoBucket, never as a missing key: restore_command
// must not tell PostgreSQL that the archive ended when it is unreachable.
func TestRootGone(t *testing.T) {
	ctx := t.Context()
	root := filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(root, 0o750); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "wal/seg", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	ops := map[string]error{
		"Put":         c.Put(ctx, "wal/seg", strings.NewReader("x")),
		"PutIfAbsent": c.PutIfAbsent(ctx, "wal/seg", strings.NewReader("x")),
		"Delete":      c.Delete(ctx, "wal/seg"),
		"List":        c.List(ctx, "wal/", func(storage.ObjectInfo) error { return nil }),
		"ListAll":     c.List(ctx, "", func(storage.ObjectInfo) error { return nil }),
		"Copy":        c.Copy(ctx, "wal/seg", "wal/seg2"),
	}
	_, ops["Stat"] = c.Stat(ctx, "wal/seg")
	_, ops["Get"] = c.Get(ctx, "wal/seg")
	_, ops["GetRange"] = c.GetRange(ctx, "wal/seg", 1, 1)
	for op, err := range ops {
		if !errors.Is(err, storage.ErrNoBucket) {
			t.Errorf("%s after the root vanished = %v, want storage.ErrNoBucket", op, err)
		}
	}
	if _, err := os.Stat(root); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("the root was recreated: Stat = %v", err)
	}
}

func TestModes(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	if err := c.Put(ctx, "a/b/c", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.PutIfAbsent(ctx, "a/d", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		max  iofs.FileMode
		dir  bool
	}{
		{"a", dirMode, true},
		{"a/b", dirMode, true},
		{"a/b/c", fileMode, false},
		{"a/d", fileMode, false},
	}
	for _, tc := range tests {
		fi, err := os.Stat(filepath.Join(c.root, tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() != tc.dir {
			t.Errorf("%s: IsDir = %v, want %v", tc.path, fi.IsDir(), tc.dir)
		}
		if got := fi.Mode().Perm(); got&^tc.max != 0 {
			t.Errorf("%s: mode %v, want at most %v", tc.path, got, tc.max)
		}
	}
}

func TestDeletePrunesDirectories(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	for _, key := range []string{"a/b/c/d", "a/keep"} {
		if err := c.Put(ctx, key, strings.NewReader(key)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete(ctx, "a/b/c/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.root, "a/b")); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("a/b after deleting its only object: Stat = %v, want it pruned", err)
	}
	if _, err := os.Stat(filepath.Join(c.root, "a/keep")); err != nil {
		t.Errorf("a/keep: %v", err)
	}
	if err := c.Delete(ctx, "a/keep"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(c.root)
	if err != nil {
		t.Fatalf("root after deleting everything: %v", err)
	}
	if len(entries) != 0 {
		t.Errorf("root holds %d entries after deleting everything, want 0", len(entries))
	}
}

func TestListSkipsForeignEntries(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	if err := c.Put(ctx, "d/obj", strings.NewReader("abc")); err != nil {
		t.Fatal(err)
	}
	// A temporary file left by a crashed writer, a dangling symlink, an
	// empty directory and a symlink to a file.
	mustWrite := func(p string) {
		if err := os.WriteFile(filepath.Join(c.root, p), []byte("zz"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("d/.tmp-crashed")
	if err := os.Symlink("nowhere", filepath.Join(c.root, "d/dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(c.root, "d/empty"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("obj", filepath.Join(c.root, "d/link")); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := c.List(ctx, "", func(oi storage.ObjectInfo) error {
		got = append(got, oi.Key)
		if oi.Size != 3 {
			t.Errorf("%s: size %d, want 3", oi.Key, oi.Size)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"d/link", "d/obj"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("List = %q, want %q", got, want)
	}
	os.Remove(filepath.Join(c.root, "d/.tmp-crashed")) // keep the cleanup check quiet
}

func TestKeyUnderObject(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	if err := c.Put(ctx, "a", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "a/b", strings.NewReader("y")); err == nil || errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Put of a key below an object = %v, want an error not matching ErrNotExist", err)
	}
	if err := c.Put(ctx, "d/e", strings.NewReader("y")); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "d", strings.NewReader("y")); err == nil || !strings.Contains(err.Error(), "directory holding other keys") {
		t.Errorf("Put of a key that is a directory of other keys = %v, want an error saying so", err)
	}
}

func TestPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores file modes")
	}
	ctx := t.Context()
	c := newClient(t)
	if err := c.Put(ctx, "locked/obj", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(c.root, "locked")
	if err := os.Chmod(locked, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(locked, dirMode) })
	if _, err := c.Stat(ctx, "locked/obj"); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("Stat = %v, want storage.ErrPermission", err)
	}
	if err := c.Put(ctx, "locked/obj2", strings.NewReader("x")); !errors.Is(err, storage.ErrPermission) {
		t.Errorf("Put = %v, want storage.ErrPermission", err)
	}
}

// TestPutDeleteRace has writers and deleters work in the same directories,
// so that Delete prunes directories a Put is about to use.
func TestPutDeleteRace(t *testing.T) {
	ctx := t.Context()
	c := newClient(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				key := "x/y/z/" + string(rune('a'+w)) + "/" + string(rune('a'+i%3))
				if err := c.Put(ctx, key, strings.NewReader("v")); err != nil {
					t.Errorf("Put(%q): %v", key, err)
					return
				}
				if err := c.Delete(ctx, key); err != nil {
					t.Errorf("Delete(%q): %v", key, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
