// Package storagetest is the conformance suite every storage.Store backend
// must pass. A backend's test calls Run with a constructor returning a fresh,
// empty store:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Store {
//			c, err := mybackend.New(mybackend.Config{Prefix: testenv.UniquePrefix(t), ...})
//			if err != nil {
//				t.Fatal(err)
//			}
//			t.Cleanup(func() { c.Close() })
//			return c
//		})
//	}
//
// The suite streams every object from a deterministic pseudo-random Reader
// and checks it back with Verify, so even its 200 MiB object never sits in
// memory. Subtests run one after another and each asks for its own store.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walferry/walferry/storage"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// NewStoreFunc returns a fresh, empty store and registers its own cleanup
// with t.Cleanup.
type NewStoreFunc = func(t *testing.T) storage.Store

// Run runs the conformance suite against the stores newStore returns. Each
// subtest calls newStore once; subtests do not run in parallel.
func Run(t *testing.T, newStore NewStoreFunc) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, NewStoreFunc)
	}{
		{"String", testString},
		{"RoundTrip", testRoundTrip},
		{"Overwrite", testOverwrite},
		{"Missing", testMissing},
		{"List", testList},
		{"Range", testRange},
		{"ConditionalCreate", testConditionalCreate},
		{"Copy", testCopy},
		{"Delete", testDelete},
		{"Cancel", testCancel},
		{"ConcurrentWriters", testConcurrentWriters},
		{"DeepNesting", testDeepNesting},
		{"Keys", testKeys},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// put stores the stream for seed and size under key as a plain io.Reader.
func put(t *testing.T, ctx context.Context, s storage.Store, key string, seed uint64, size int64) {
	t.Helper()
	if err := s.Put(ctx, key, OnlyReader(NewReader(seed, size))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, size, err)
	}
}

// check asserts that key holds the stream for seed and size, through both
// Stat and Get.
func check(t *testing.T, ctx context.Context, s storage.Store, key string, seed uint64, size int64) {
	t.Helper()
	info, err := s.Stat(ctx, key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if info.Key != key || info.Size != size {
		t.Errorf("Stat(%q) = {Key: %q, Size: %d}, want {Key: %q, Size: %d}", key, info.Key, info.Size, key, size)
	}
	checkModTime(t, "Stat("+key+")", info.ModTime)
	rc, err := s.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	if err := Verify(rc, seed, size); err != nil {
		t.Errorf("Get(%q): %v", key, err)
	}
	if err := rc.Close(); err != nil {
		t.Errorf("Get(%q): Close: %v", key, err)
	}
}

func checkModTime(t *testing.T, what string, mt time.Time) {
	t.Helper()
	if mt.IsZero() {
		t.Errorf("%s: ModTime is zero", what)
	} else if d := time.Since(mt).Abs(); d > 24*time.Hour {
		t.Errorf("%s: ModTime %v is %v away from now", what, mt, d)
	}
}

// checkMissing asserts that key is absent for Stat, Get and GetRange.
func checkMissing(t *testing.T, ctx context.Context, s storage.Store, key string) {
	t.Helper()
	if info, err := s.Stat(ctx, key); !isNotExist(err) {
		t.Errorf("Stat(%q) = %+v, %v; want an error matching storage.ErrNotExist", key, info, err)
	}
	if rc, err := s.Get(ctx, key); !isNotExist(err) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("Get(%q) error = %v; want an error matching storage.ErrNotExist", key, err)
	}
	if rc, err := s.GetRange(ctx, key, 0, 1); !isNotExist(err) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("GetRange(%q, 0, 1) error = %v; want an error matching storage.ErrNotExist", key, err)
	}
}

func isNotExist(err error) bool {
	return errors.Is(err, storage.ErrNotExist) && !errors.Is(err, storage.ErrNoBucket)
}

// list returns everything List reports under prefix.
func list(t *testing.T, ctx context.Context, s storage.Store, prefix string) []storage.ObjectInfo {
	t.Helper()
	var got []storage.ObjectInfo
	if err := s.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		got = append(got, oi)
		return nil
	}); err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

// listKeys returns the keys List reports under prefix.
func listKeys(t *testing.T, ctx context.Context, s storage.Store, prefix string) []string {
	t.Helper()
	var keys []string
	for _, oi := range list(t, ctx, s, prefix) {
		keys = append(keys, oi.Key)
	}
	return keys
}

func testString(t *testing.T, newStore NewStoreFunc) {
	s := newStore(t)
	if s.String() == "" {
		t.Error("String() is empty")
	}
}

func testRoundTrip(t *testing.T, newStore NewStoreFunc) {
	tests := []struct {
		name     string
		size     int64
		seekable bool
	}{
		{"0B", 0, false},
		{"1B", 1, false},
		{"5MiB", 5 * mib, false},
		{"5MiB+1B-seekable", 5*mib + 1, true},
		{"200MiB", 200 * mib, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := newStore(t)
			key := "roundtrip/" + tc.name
			seed := uint64(1000 + i)
			var r io.Reader = NewReader(seed, tc.size)
			if !tc.seekable {
				r = OnlyReader(r)
			}
			if err := s.Put(ctx, key, r); err != nil {
				t.Fatalf("Put(%q, %d bytes): %v", key, tc.size, err)
			}
			check(t, ctx, s, key, seed, tc.size)
			got := list(t, ctx, s, "roundtrip/")
			if len(got) != 1 || got[0].Key != key || got[0].Size != tc.size {
				t.Errorf("List(\"roundtrip/\") = %+v, want one object %q of %d bytes", got, key, tc.size)
			}
			for _, oi := range got {
				checkModTime(t, "List", oi.ModTime)
			}
		})
	}
}

func testOverwrite(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	const key = "overwrite/object"
	steps := []struct {
		seed uint64
		size int64
	}{
		{1, 64*kib + 3},
		{2, 1000}, // shorter: the old tail must be gone
		{3, 0},
		{4, 3*mib + 7},
	}
	for _, st := range steps {
		put(t, ctx, s, key, st.seed, st.size)
		check(t, ctx, s, key, st.seed, st.size)
		got := list(t, ctx, s, "overwrite/")
		if len(got) != 1 || got[0].Key != key || got[0].Size != st.size {
			t.Errorf("after Put of %d bytes, List = %+v, want one object %q of %d bytes", st.size, got, key, st.size)
		}
	}
}

func testMissing(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	// An empty store.
	for _, key := range []string{"missing", "no/such/dir/key"} {
		checkMissing(t, ctx, s, key)
	}
	if keys := listKeys(t, ctx, s, ""); len(keys) != 0 {
		t.Errorf("List(\"\") of an empty store = %q, want nothing", keys)
	}
	// "dir" is a prefix of an object but not an object itself; "dir/obj/deeper"
	// lies below an object.
	put(t, ctx, s, "dir/obj", 5, 10)
	for _, key := range []string{"dir", "dir/obj/deeper", "dir/ob", "dir/obj2"} {
		checkMissing(t, ctx, s, key)
		if err := s.Delete(ctx, key); err != nil {
			t.Errorf("Delete(%q) of a missing key = %v, want nil", key, err)
		}
	}
	check(t, ctx, s, "dir/obj", 5, 10)
}

// listKeySet returns the 1,200 keys of the listing test, shaped like a
// repository: WAL segments in per-log directories, backups with nested files,
// and names whose lexical order differs from a naive directory walk's
// ("a-b" < "a.b" < "a/b" < "a0").
func listKeySet() []string {
	var keys []string
	for tl := 1; tl <= 2; tl++ {
		for log := 0; log < 3; log++ {
			for seg := 0; seg < 150; seg++ {
				keys = append(keys, fmt.Sprintf("wal/%08X%08X/%08X%08X%08X", tl, log, tl, log, seg))
			}
		}
	}
	for _, label := range []string{"20240101T000000F", "20240101T000000F_20240102T000000I", "20240102T000000F"} {
		for i := 0; i < 97; i++ {
			keys = append(keys, fmt.Sprintf("backup/%s/pg_data/base/16384/%d", label, i*i*7+1))
		}
		keys = append(keys, "backup/"+label+"/backup.manifest")
	}
	keys = append(keys, "tricky/a-b", "tricky/a.b", "tricky/a/b", "tricky/a/c/d", "tricky/a0", "tricky/a~")
	slices.Sort(keys)
	return keys
}

func testList(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	keys := listKeySet()
	if len(keys) != 1200 || len(slices.Compact(slices.Clone(keys))) != len(keys) {
		t.Fatalf("internal error: %d keys", len(keys))
	}
	size := func(i int) int64 { return int64(i % 5) } // includes empty objects
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for i, key := range keys {
		g.Go(func() error {
			if err := s.Put(gctx, key, OnlyReader(NewReader(uint64(i), size(i)))); err != nil {
				return fmt.Errorf("Put(%q): %w", key, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	sizes := make(map[string]int64, len(keys))
	for i, key := range keys {
		sizes[key] = size(i)
	}

	prefixes := []struct{ name, prefix string }{
		{"all", ""},
		{"wal", "wal/"},
		{"wal-not-a-directory", "wal/00000001"},
		{"wal-directory", "wal/0000000100000001/"},
		{"wal-segment-prefix", "wal/0000000200000002/000000020000000200000009"},
		{"backup-not-a-directory", "backup/20240101T000000F"},
		{"backup-directory", "backup/20240101T000000F/"},
		{"backup-files", "backup/20240102T000000F/pg_data/base/16384/1"},
		{"tricky", "tricky/a"},
		{"tricky-directory", "tricky/a/"},
		{"exact-key", "tricky/a.b"},
		{"exact-wal-key", "wal/0000000100000000/000000010000000000000005"},
		{"no-match-directory", "nothing/"},
		{"no-match-name", "wal/9"},
		{"no-match-after-all", "zzz"},
	}
	for _, p := range prefixes {
		t.Run("Prefix/"+p.name, func(t *testing.T) {
			var want []string
			for _, k := range keys {
				if strings.HasPrefix(k, p.prefix) {
					want = append(want, k)
				}
			}
			got := list(t, ctx, s, p.prefix)
			checkListing(t, p.prefix, got, want, sizes)
		})
	}

	t.Run("StopOnError", func(t *testing.T) {
		stop := errors.New("storagetest: stop listing")
		for _, after := range []int{1, 3, 1100} {
			calls := 0
			err := s.List(ctx, "", func(storage.ObjectInfo) error {
				calls++
				if calls == after {
					return stop
				}
				return nil
			})
			if !errors.Is(err, stop) {
				t.Errorf("List with fn failing at call %d = %v, want fn's error", after, err)
			}
			if calls != after {
				t.Errorf("List with fn failing at call %d called fn %d times", after, calls)
			}
		}
	})
}

// checkListing compares a listing with the expected keys, in order, each
// once, with their sizes.
func checkListing(t *testing.T, prefix string, got []storage.ObjectInfo, want []string, sizes map[string]int64) {
	t.Helper()
	const maxReports = 10
	reports := 0
	report := func(format string, args ...any) {
		t.Helper()
		if reports < maxReports {
			t.Errorf("List(%q): "+format, append([]any{prefix}, args...)...)
		}
		reports++
	}
	seen := make(map[string]int, len(got))
	for i, oi := range got {
		seen[oi.Key]++
		if seen[oi.Key] == 2 {
			report("key %q reported more than once", oi.Key)
		}
		if i > 0 && got[i-1].Key >= oi.Key {
			report("not in lexical order: %q (position %d) after %q", oi.Key, i, got[i-1].Key)
		}
		wantSize, ok := sizes[oi.Key]
		switch {
		case !ok:
			report("reported %q, which was never stored", oi.Key)
		case !strings.HasPrefix(oi.Key, prefix):
			report("reported %q, which lacks the prefix", oi.Key)
		case oi.Size != wantSize:
			report("%q has size %d, want %d", oi.Key, oi.Size, wantSize)
		}
		if oi.ModTime.IsZero() {
			report("%q has a zero ModTime", oi.Key)
		}
	}
	for _, k := range want {
		if seen[k] == 0 {
			report("missing %q", k)
		}
	}
	if len(got) != len(want) {
		report("got %d objects, want %d", len(got), len(want))
	}
	if reports > maxReports {
		t.Errorf("List(%q): %d more problems not shown", prefix, reports-maxReports)
	}
}

func testRange(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	const (
		key  = "range/object"
		seed = 7
		size = 1*mib + 123
	)
	put(t, ctx, s, key, seed, size)
	put(t, ctx, s, "range/empty", 8, 0)
	data := Bytes(seed, size)
	tests := []struct {
		name           string
		key            string
		offset, length int64
		want           []byte
	}{
		{"start", key, 0, 100, data[:100]},
		{"middle", key, 500_000, 4096, data[500_000 : 500_000+4096]},
		{"to-end", key, 1000, -1, data[1000:]},
		{"whole", key, 0, -1, data},
		{"exact-length", key, 0, size, data},
		{"last-byte", key, size - 1, 1, data[size-1:]},
		{"crossing-end", key, size - 10, 100, data[size-10:]},
		{"at-end", key, size, 10, nil},
		{"at-end-to-end", key, size, -1, nil},
		{"past-end", key, size + 1000, 10, nil},
		{"past-end-to-end", key, size + 5, -1, nil},
		{"zero-length", key, 10, 0, nil},
		{"empty-object-to-end", "range/empty", 0, -1, nil},
		{"empty-object", "range/empty", 0, 10, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := s.GetRange(ctx, tc.key, tc.offset, tc.length)
			if err != nil {
				t.Fatalf("GetRange(%q, %d, %d): %v", tc.key, tc.offset, tc.length, err)
			}
			defer rc.Close()
			got, err := io.ReadAll(io.LimitReader(rc, int64(len(tc.want))+1))
			if err != nil {
				t.Fatalf("GetRange(%q, %d, %d): read after %d bytes: %v", tc.key, tc.offset, tc.length, len(got), err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("GetRange(%q, %d, %d) returned %d bytes, want %d", tc.key, tc.offset, tc.length, len(got), len(tc.want))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("GetRange(%q, %d, %d): byte %d differs", tc.key, tc.offset, tc.length, i)
				}
			}
		})
	}
	failing := []struct {
		name           string
		key            string
		offset, length int64
		want           error
	}{
		{"missing", "range/missing", 10, 10, storage.ErrNotExist},
		{"missing-zero-length", "range/missing", 0, 0, storage.ErrNotExist},
		{"negative-offset", key, -1, 10, fs.ErrInvalid},
	}
	for _, tc := range failing {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := s.GetRange(ctx, tc.key, tc.offset, tc.length)
			if rc != nil {
				rc.Close()
			}
			if !errors.Is(err, tc.want) || errors.Is(err, storage.ErrNoBucket) {
				t.Errorf("GetRange(%q, %d, %d) error = %v; want an error matching %v", tc.key, tc.offset, tc.length, err, tc.want)
			}
		})
	}
}

func testConditionalCreate(t *testing.T, newStore NewStoreFunc) {
	if _, ok := newStore(t).(storage.ConditionalCreator); !ok {
		t.Log("store does not implement storage.ConditionalCreator; nothing to test")
		return
	}
	t.Run("Race", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		cc := s.(storage.ConditionalCreator)
		const (
			key     = "cc/race"
			writers = 8
		)
		size := func(i int) int64 { return 256*kib + int64(i) }
		errs := make([]error, writers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				<-start
				errs[i] = cc.PutIfAbsent(ctx, key, OnlyReader(NewReader(uint64(200+i), size(i))))
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = i
			case err == nil:
				t.Errorf("writers %d and %d both won", winner, i)
			case !errors.Is(err, storage.ErrExist):
				t.Errorf("writer %d: %v, want nil or an error matching storage.ErrExist", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no writer won")
		}
		check(t, ctx, s, key, uint64(200+winner), size(winner))
	})
	t.Run("Existing", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		cc := s.(storage.ConditionalCreator)
		const key = "cc/existing"
		if err := cc.PutIfAbsent(ctx, key, OnlyReader(NewReader(1, 100))); err != nil {
			t.Fatalf("PutIfAbsent of a free key: %v", err)
		}
		check(t, ctx, s, key, 1, 100)
		if err := cc.PutIfAbsent(ctx, key, OnlyReader(NewReader(2, 50))); !errors.Is(err, storage.ErrExist) {
			t.Errorf("PutIfAbsent of a taken key = %v, want an error matching storage.ErrExist", err)
		}
		check(t, ctx, s, key, 1, 100)
		if err := s.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		if err := cc.PutIfAbsent(ctx, key, OnlyReader(NewReader(3, 70))); err != nil {
			t.Errorf("PutIfAbsent after Delete: %v", err)
		}
		check(t, ctx, s, key, 3, 70)
		if keys := listKeys(t, ctx, s, ""); !slices.Equal(keys, []string{key}) {
			t.Errorf("List = %q, want only %q", keys, key)
		}
	})
	t.Run("Cancel", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		cc := s.(storage.ConditionalCreator)
		const key = "cc/cancel"
		err := putCanceled(t, func(ctx context.Context, r io.Reader) error { return cc.PutIfAbsent(ctx, key, r) })
		if err == nil {
			t.Fatal("PutIfAbsent cancelled mid-upload returned nil")
		}
		checkMissing(t, ctx, s, key)
		if keys := listKeys(t, ctx, s, ""); len(keys) != 0 {
			t.Errorf("after a cancelled PutIfAbsent, List = %q, want nothing", keys)
		}
		if err := cc.PutIfAbsent(ctx, key, OnlyReader(NewReader(4, 1000))); err != nil {
			t.Fatalf("PutIfAbsent after a cancelled one: %v", err)
		}
		check(t, ctx, s, key, 4, 1000)
	})
}

func testCopy(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	cp, ok := s.(storage.Copier)
	if !ok {
		t.Log("store does not implement storage.Copier; nothing to test")
		return
	}
	put(t, ctx, s, "copy/src", 1, 1*mib+1)
	if err := cp.Copy(ctx, "copy/src", "copy/dst/nested"); err != nil {
		t.Fatalf("Copy: %v", err)
	}
	check(t, ctx, s, "copy/dst/nested", 1, 1*mib+1)
	check(t, ctx, s, "copy/src", 1, 1*mib+1)

	put(t, ctx, s, "copy/src2", 2, 10)
	if err := cp.Copy(ctx, "copy/src2", "copy/dst/nested"); err != nil {
		t.Fatalf("Copy over an existing object: %v", err)
	}
	check(t, ctx, s, "copy/dst/nested", 2, 10)

	if err := cp.Copy(ctx, "copy/missing", "copy/dst2"); !isNotExist(err) {
		t.Errorf("Copy of a missing key = %v, want an error matching storage.ErrNotExist", err)
	}
	checkMissing(t, ctx, s, "copy/dst2")
	want := []string{"copy/dst/nested", "copy/src", "copy/src2"}
	if got := listKeys(t, ctx, s, "copy/"); !slices.Equal(got, want) {
		t.Errorf("List = %q, want %q", got, want)
	}
}

func testDelete(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	if err := s.Delete(ctx, "del/missing"); err != nil {
		t.Errorf("Delete of a missing key = %v, want nil", err)
	}
	put(t, ctx, s, "del/a/b/c", 1, 100)
	put(t, ctx, s, "del/a/keep", 2, 100)
	if err := s.Delete(ctx, "del/a/b/c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, ctx, s, "del/a/b/c")
	if keys := listKeys(t, ctx, s, "del/"); !slices.Equal(keys, []string{"del/a/keep"}) {
		t.Errorf("after Delete, List = %q, want only %q", keys, "del/a/keep")
	}
	if err := s.Delete(ctx, "del/a/b/c"); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
	check(t, ctx, s, "del/a/keep", 2, 100)
	// The key can be written again after its "directory" emptied.
	put(t, ctx, s, "del/a/b/c", 3, 5)
	check(t, ctx, s, "del/a/b/c", 3, 5)
	for _, key := range []string{"del/a/b/c", "del/a/keep"} {
		if err := s.Delete(ctx, key); err != nil {
			t.Fatalf("Delete(%q): %v", key, err)
		}
	}
	if keys := listKeys(t, ctx, s, ""); len(keys) != 0 {
		t.Errorf("after deleting everything, List = %q, want nothing", keys)
	}
}

// blockingReader yields n bytes, then signals reached and blocks until ctx
// is done, returning its error.
type blockingReader struct {
	ctx     context.Context
	r       io.Reader
	reached chan struct{}
	once    sync.Once
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 || err != io.EOF {
		return n, err
	}
	b.once.Do(func() { close(b.reached) })
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

// failingReader yields its reader's bytes, then err instead of io.EOF.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		err = f.err
	}
	return n, err
}

const cancelAfter = 12 * mib // more than one multipart part on every backend

// putCanceled runs put with a reader that yields cancelAfter bytes and then
// blocks; it cancels the context once the bytes are consumed and returns
// put's error. It fails the test if put hangs.
func putCanceled(t *testing.T, put func(context.Context, io.Reader) error) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	br := &blockingReader{ctx: ctx, r: NewReader(99, cancelAfter), reached: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- put(ctx, br) }()
	select {
	case <-br.reached:
	case err := <-done:
		t.Fatalf("Put returned %v before reading %d bytes", err, cancelAfter)
	case <-time.After(2 * time.Minute):
		t.Fatalf("Put did not read %d bytes within 2 minutes", cancelAfter)
	}
	cancel()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("Put did not return within a minute of its context being cancelled")
		return nil
	}
}

func testCancel(t *testing.T, newStore NewStoreFunc) {
	t.Run("NewKey", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		const key = "cancel/new"
		if err := putCanceled(t, func(ctx context.Context, r io.Reader) error { return s.Put(ctx, key, r) }); err == nil {
			t.Fatal("Put cancelled mid-upload returned nil")
		}
		checkMissing(t, ctx, s, key)
		if keys := listKeys(t, ctx, s, ""); len(keys) != 0 {
			t.Errorf("after a cancelled Put, List = %q, want nothing", keys)
		}
	})
	t.Run("ExistingKey", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		const key = "cancel/existing"
		put(t, ctx, s, key, 1, 3000)
		if err := putCanceled(t, func(ctx context.Context, r io.Reader) error { return s.Put(ctx, key, r) }); err == nil {
			t.Fatal("Put cancelled mid-upload returned nil")
		}
		check(t, ctx, s, key, 1, 3000)
		if got := list(t, ctx, s, ""); len(got) != 1 || got[0].Key != key || got[0].Size != 3000 {
			t.Errorf("after a cancelled Put, List = %+v, want only %q of 3000 bytes", got, key)
		}
	})
	t.Run("ReaderError", func(t *testing.T) {
		ctx := t.Context()
		s := newStore(t)
		const key = "cancel/reader-error"
		put(t, ctx, s, key, 1, 3000)
		readErr := errors.New("storagetest: reader failed")
		err := s.Put(ctx, key, &failingReader{r: NewReader(2, 6*mib), err: readErr})
		if err == nil {
			t.Fatal("Put from a failing reader returned nil")
		}
		if !errors.Is(err, readErr) {
			t.Errorf("Put from a failing reader = %v; want an error wrapping the reader's", err)
		}
		check(t, ctx, s, key, 1, 3000)
		checkMissing(t, ctx, s, key+"2")
		if err := s.Put(ctx, key+"2", &failingReader{r: NewReader(2, 100), err: readErr}); err == nil {
			t.Fatal("Put from a failing reader returned nil")
		}
		if keys := listKeys(t, ctx, s, ""); !slices.Equal(keys, []string{key}) {
			t.Errorf("after failed Puts, List = %q, want only %q", keys, key)
		}
	})
	t.Run("AlreadyCanceled", func(t *testing.T) {
		s := newStore(t)
		const key = "cancel/before"
		put(t, t.Context(), s, key, 1, 10)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := s.Put(ctx, key+"2", OnlyReader(NewReader(1, 10))); !errors.Is(err, context.Canceled) {
			t.Errorf("Put with a cancelled context = %v, want an error matching context.Canceled", err)
		}
		if rc, err := s.Get(ctx, key); !errors.Is(err, context.Canceled) {
			// A lazy backend may report the cancellation on the first Read.
			if err == nil {
				_, err = io.Copy(io.Discard, rc)
				rc.Close()
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Get with a cancelled context = %v, want an error matching context.Canceled", err)
			}
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, context.Canceled) {
			t.Errorf("Stat with a cancelled context = %v, want an error matching context.Canceled", err)
		}
		if err := s.List(ctx, "", func(storage.ObjectInfo) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Errorf("List with a cancelled context = %v, want an error matching context.Canceled", err)
		}
		checkMissing(t, t.Context(), s, key+"2")
		check(t, t.Context(), s, key, 1, 10)
	})
}

func testConcurrentWriters(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	const writers = 8
	size := func(i int) int64 { return 3*mib + int64(i)*1001 }
	key := func(i int) string { return fmt.Sprintf("concurrent/writer-%d", i) }
	var g errgroup.Group
	for i := range writers {
		g.Go(func() error {
			if err := s.Put(ctx, key(i), OnlyReader(NewReader(uint64(300+i), size(i)))); err != nil {
				return fmt.Errorf("Put(%q): %w", key(i), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// Read back in parallel too.
	for i := range writers {
		g.Go(func() error {
			rc, err := s.Get(ctx, key(i))
			if err != nil {
				return fmt.Errorf("Get(%q): %w", key(i), err)
			}
			defer rc.Close()
			if err := Verify(rc, uint64(300+i), size(i)); err != nil {
				return fmt.Errorf("Get(%q): %w", key(i), err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Error(err)
	}
	got := list(t, ctx, s, "concurrent/")
	if len(got) != writers {
		t.Fatalf("List = %+v, want %d objects", got, writers)
	}
	for i, oi := range got {
		if oi.Key != key(i) || oi.Size != size(i) {
			t.Errorf("List[%d] = {%q, %d}, want {%q, %d}", i, oi.Key, oi.Size, key(i), size(i))
		}
	}
}

func testDeepNesting(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	var b strings.Builder
	b.WriteString("deep")
	for i := 1; i <= 24; i++ {
		fmt.Fprintf(&b, "/level-%02d", i)
	}
	dir := b.String()
	key := dir + "/object"
	put(t, ctx, s, key, 1, 4096)
	put(t, ctx, s, "deep/sibling", 2, 1)
	check(t, ctx, s, key, 1, 4096)
	for _, prefix := range []string{"", "deep/", "deep/level-01/level-02/", dir + "/", key} {
		if keys := listKeys(t, ctx, s, prefix); !slices.Contains(keys, key) {
			t.Errorf("List(%q) = %q, want it to contain %q", prefix, keys, key)
		}
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, ctx, s, key)
	if keys := listKeys(t, ctx, s, "deep/"); !slices.Equal(keys, []string{"deep/sibling"}) {
		t.Errorf("after Delete, List = %q, want only deep/sibling", keys)
	}
}

func testKeys(t *testing.T, newStore NewStoreFunc) {
	ctx := t.Context()
	s := newStore(t)
	tests := []struct{ name, key string }{
		{"space", "keys/with space"},
		{"plus", "keys/a+b"},
		{"equals", "keys/a=b"},
		{"percent", "keys/100%25"},
		{"tilde", "keys/~tilde"},
		{"at", "keys/a@b"},
		{"comma", "keys/a,b"},
		{"dots-in-name", "keys/a..b"},
		{"dotfile", "keys/.hidden"},
		{"trailing-dot-name", "keys/name."},
		{"unicode", "keys/ünïcødé-日本語"},
		{"wal-history", "keys/00000002.history"},
		{"wal-partial", "keys/000000010000000000000003.partial"},
		{"long-name", "keys/" + strings.Repeat("x", 200)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seed, size := uint64(400+i), int64(100+i)
			put(t, ctx, s, tc.key, seed, size)
			check(t, ctx, s, tc.key, seed, size)
			if keys := listKeys(t, ctx, s, tc.key); !slices.Equal(keys, []string{tc.key}) {
				t.Errorf("List(%q) = %q, want exactly the key", tc.key, keys)
			}
			if err := s.Delete(ctx, tc.key); err != nil {
				t.Fatalf("Delete(%q): %v", tc.key, err)
			}
			checkMissing(t, ctx, s, tc.key)
		})
	}
}
