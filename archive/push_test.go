package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// Helpers of this file are prefixed with push so they cannot collide with
// the other test files of the package.

const pushMiB = 1 << 20

func pushSegSize(t testing.TB, bytes int64) pg.WALSegmentSize {
	t.Helper()
	s, err := pg.NewWALSegmentSize(bytes)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pushCluster(segBytes int64) repo.Cluster {
	return repo.Cluster{SystemID: 7310000000000000042, PGMajor: 15, WALSegmentSize: segBytes, Source: "data directory /test"}
}

// pushStores are the backends every round-trip test runs against.
var pushStores = []struct {
	name string
	open func(t testing.TB) storage.Store
}{
	{"fs", func(t testing.TB) storage.Store { st, _ := teststore.FS(t); return st }},
	{"s3", teststore.S3},
}

// pushRepo initializes a repository in st for a cluster with segBytes
// segments, with lz4 objects, and opens it.
func pushRepo(t testing.TB, st storage.Store, segBytes int64, c *codec.Codec) *repo.Repo {
	t.Helper()
	return pushRepoCompressed(t, st, segBytes, c, "lz4")
}

// pushCompressions are the two kinds of duplicate check: lz4 objects carry
// the raw SHA-256, zstd objects do not (their frames check the content).
var pushCompressions = []string{"lz4", "zstd"}

func pushRepoCompressed(t testing.TB, st storage.Store, segBytes int64, c *codec.Codec, compression string) *repo.Repo {
	t.Helper()
	ctx := context.Background()
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: pushCluster(segBytes), Compression: compression, CreatedBy: "push_test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{Codec: c})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pushConfig(t testing.TB, segBytes int64, log *slog.Logger, repos ...*repo.Repo) Config {
	return Config{Repos: repos, Cluster: pushCluster(segBytes), SegmentSize: pushSegSize(t, segBytes), Log: log}
}

func newTestPusher(t testing.TB, cfg Config, o PushOptions) *Pusher {
	t.Helper()
	if cfg.Retry == (retry.Policy{}) {
		cfg.Retry = retry.Policy{MaxAttempts: 3, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxElapsed: 5 * time.Second}
	}
	p, err := NewPusher(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// pushWAL is a fake pg_wal directory.
type pushWAL struct {
	dir  string
	size pg.WALSegmentSize
	rng  *rand.ChaCha8
}

// newPushWAL makes pg_wal with n segments of random content on timeline 1,
// numbered from 1, each with its .ready file.
func newPushWAL(t testing.TB, segBytes int64, n int) *pushWAL {
	t.Helper()
	w := &pushWAL{dir: filepath.Join(t.TempDir(), "pg_wal"), size: pushSegSize(t, segBytes),
		rng: rand.NewChaCha8([32]byte{byte(n), byte(segBytes >> 20)})}
	if err := os.MkdirAll(filepath.Join(w.dir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= n; i++ {
		w.add(t, w.seg(i), w.random(segBytes), true)
	}
	return w
}

func (w *pushWAL) seg(i int) string { return pg.SegmentName(1, pg.SegNo(i), w.size) }

func (w *pushWAL) path(name string) string { return filepath.Join(w.dir, name) }

func (w *pushWAL) random(n int64) []byte {
	b := make([]byte, n)
	w.rng.Read(b)
	return b
}

// add writes a file into pg_wal, with a .ready file when ready.
func (w *pushWAL) add(t testing.TB, name string, data []byte, ready bool) {
	t.Helper()
	if err := os.WriteFile(w.path(name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if ready {
		if err := os.WriteFile(filepath.Join(w.dir, "archive_status", name+".ready"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// done does what PostgreSQL does after archive_command succeeded.
func (w *pushWAL) done(t testing.TB, name string) {
	t.Helper()
	st := filepath.Join(w.dir, "archive_status", name)
	if err := os.Rename(st+".ready", st+".done"); err != nil {
		t.Fatal(err)
	}
}

func (w *pushWAL) stateDir() string { return filepath.Join(w.dir, ".walferry", "pushed") }

// records lists the state directory, temporary files included.
func (w *pushWAL) records(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(w.stateDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func (w *pushWAL) read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(w.path(name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pushStored reads an archived file back through the verifying reader.
func pushStored(t testing.TB, r *repo.Repo, name string) []byte {
	t.Helper()
	key, err := repo.WALKey(name, pushSegSize(t, r.Metadata().WALSegmentSize))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := r.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func pushSum(b []byte) string { return codec.FormatSum(sha256.Sum256(b)) }

// pushCountingStore counts the operations that reach a store, per key, and
// the most concurrent conditional creates of one key. It can fail the next
// conditional creates, and block those of chosen keys.
type pushCountingStore struct {
	storage.Store
	ops atomic.Int64

	mu        sync.Mutex
	perKey    map[string]int
	creates   map[string]int // PutIfAbsent calls per key
	active    map[string]int
	maxActive int
	failNext  int   // PutIfAbsent calls still to fail
	failErr   error // what they fail with
	block     map[string]chan struct{}
}

func newPushCountingStore(inner storage.Store) *pushCountingStore {
	return &pushCountingStore{Store: inner, perKey: map[string]int{}, creates: map[string]int{},
		active: map[string]int{}, block: map[string]chan struct{}{}}
}

var (
	_ storage.Store              = (*pushCountingStore)(nil)
	_ storage.ConditionalCreator = (*pushCountingStore)(nil)
)

func (c *pushCountingStore) count(key string) {
	c.ops.Add(1)
	c.mu.Lock()
	c.perKey[key]++
	c.mu.Unlock()
}

func (c *pushCountingStore) reset() {
	c.ops.Store(0)
	c.mu.Lock()
	clear(c.perKey)
	clear(c.creates)
	c.mu.Unlock()
}

func (c *pushCountingStore) keyOps(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.perKey[key]
}

func (c *pushCountingStore) Put(ctx context.Context, key string, r io.Reader) error {
	c.count(key)
	return c.Store.Put(ctx, key, r)
}

func (c *pushCountingStore) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	c.count(key)
	c.mu.Lock()
	c.creates[key]++
	c.active[key]++
	c.maxActive = max(c.maxActive, c.active[key])
	var fail error
	if c.failNext > 0 {
		c.failNext--
		fail = c.failErr
	}
	block := c.block[key]
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.active[key]--
		c.mu.Unlock()
	}()
	if fail != nil {
		return fail
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Give concurrent creates of the same key a chance to overlap.
	time.Sleep(time.Millisecond)
	return c.Store.(storage.ConditionalCreator).PutIfAbsent(ctx, key, r)
}

func (c *pushCountingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.count(key)
	return c.Store.Get(ctx, key)
}

func (c *pushCountingStore) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.count(key)
	return c.Store.GetRange(ctx, key, off, n)
}

func (c *pushCountingStore) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	c.count(key)
	return c.Store.Stat(ctx, key)
}

func (c *pushCountingStore) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	c.count(prefix)
	return c.Store.List(ctx, prefix, fn)
}

func (c *pushCountingStore) Delete(ctx context.Context, key string) error {
	c.count(key)
	return c.Store.Delete(ctx, key)
}

// pushLog collects log output.
type pushLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *pushLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *pushLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *pushLog) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestPushRoundTrip pushes a full segment and the other kinds of WAL
// files, reads them back identical, and pushes them again.
func TestPushRoundTrip(t *testing.T) {
	for _, sc := range pushStores {
		for _, comp := range pushCompressions {
			t.Run(sc.name+"/"+comp, func(t *testing.T) { testPushRoundTrip(t, sc.open(t), comp) })
		}
	}
}

func testPushRoundTrip(t *testing.T, st storage.Store, comp string) {
	const segBytes = 16 * pushMiB
	r := pushRepoCompressed(t, st, segBytes, nil, comp)
	var logs pushLog
	w := newPushWAL(t, segBytes, 1)
	w.add(t, "00000002.history", []byte("1\t0/3000000\tno recovery target specified\n"), true)
	w.add(t, "000000010000000000000001.00000028.backup", []byte("START WAL LOCATION: 0/1000028\n"), true)
	w.add(t, "000000010000000000000002.partial", w.random(segBytes), true)
	w.add(t, "000000010000000000000003.partial", w.random(12345), false) // pushed as it is
	p := newTestPusher(t, pushConfig(t, segBytes, logs.logger(), r), PushOptions{Ahead: 0})
	names := []string{w.seg(1), "00000002.history", "000000010000000000000001.00000028.backup",
		"000000010000000000000002.partial", "000000010000000000000003.partial"}
	for _, name := range names {
		if err := p.Push(t.Context(), w.path(name)); err != nil {
			t.Fatalf("Push(%s): %v", name, err)
		}
		if got, want := pushStored(t, r, name), w.read(t, name); !bytes.Equal(got, want) {
			t.Fatalf("%s: stored %d bytes differ from the %d local bytes", name, len(got), len(want))
		}
		key, _ := repo.WALKey(name, w.size)
		info, err := r.ObjectInfo(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		// zstd frames check their content themselves: no SHA-256.
		if wantSum := comp != "zstd"; (info.Sum != "") != wantSum {
			t.Errorf("%s with %s: stored raw sum %q, want one: %v", name, comp, info.Sum, wantSum)
		}
	}
	if !strings.Contains(logs.String(), "segment="+w.seg(1)+" bytes=16777216") {
		t.Errorf("no Info line for the segment in the log:\n%s", logs.String())
	}
	// Idempotent: PostgreSQL repeats a call whose answer it lost.
	for _, name := range names {
		if err := p.Push(t.Context(), w.path(name)); err != nil {
			t.Fatalf("second Push(%s): %v", name, err)
		}
	}
	if n := strings.Count(logs.String(), "via=archived"); n != len(names) {
		t.Errorf("%d lines say via=archived after the second round, want %d:\n%s", n, len(names), logs.String())
	}
}

// TestPushConflict pushes other content under an archived name.
func TestPushConflict(t *testing.T) {
	for _, sc := range pushStores {
		for _, comp := range pushCompressions {
			t.Run(sc.name+"/"+comp, func(t *testing.T) { testPushConflict(t, sc.open(t), comp) })
		}
	}
}

func testPushConflict(t *testing.T, st storage.Store, comp string) {
	const segBytes = pushMiB
	r := pushRepoCompressed(t, st, segBytes, nil, comp)
	w := newPushWAL(t, segBytes, 1)
	name := w.seg(1)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	if err := p.Push(t.Context(), w.path(name)); err != nil {
		t.Fatal(err)
	}
	original := w.read(t, name)
	other := w.random(segBytes)
	w.add(t, name, other, false)
	err := p.Push(t.Context(), w.path(name))
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("Push of other content: got %v, want ErrConflict", err)
	}
	key, _ := repo.WALKey(name, w.size)
	for _, want := range []string{pushSum(original), pushSum(other), key, r.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if got := pushStored(t, r, name); !bytes.Equal(got, original) {
		t.Fatal("the archived object changed")
	}
	// A history file of another length (a content compare must not
	// stop at the shorter one).
	const hist = "00000002.history"
	w.add(t, hist, []byte("1\t0/3000000\tno recovery target specified\n"), false)
	if err := p.Push(t.Context(), w.path(hist)); err != nil {
		t.Fatal(err)
	}
	w.add(t, hist, []byte("1\t0/3000000\tno recovery target specified\n2\t0/5000000\tother\n"), false)
	if err := p.Push(t.Context(), w.path(hist)); !errors.Is(err, ErrConflict) {
		t.Fatalf("Push of a longer history file: got %v, want ErrConflict", err)
	}
}

// TestPushZstdSeveralRepos: with one repository, zstd objects carry no
// SHA-256; with two they do, since comparing the repositories' SHA-256 is
// what proves they received the same content.
func TestPushZstdSeveralRepos(t *testing.T) {
	const segBytes = pushMiB
	st1, _ := teststore.FS(t)
	st2, _ := teststore.FS(t)
	r1 := pushRepoCompressed(t, st1, segBytes, nil, "zstd")
	r2 := pushRepoCompressed(t, st2, segBytes, nil, "zstd")
	w := newPushWAL(t, segBytes, 2)
	name := w.seg(1)
	key, _ := repo.WALKey(name, w.size)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r1, r2), PushOptions{Ahead: 0})
	if err := p.Push(t.Context(), w.path(name)); err != nil {
		t.Fatal(err)
	}
	want := pushSum(w.read(t, name))
	for _, r := range []*repo.Repo{r1, r2} {
		info, err := r.ObjectInfo(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if info.Sum != want {
			t.Errorf("%s holds sum %q, want %s", r, info.Sum, want)
		}
	}
	// Pushed with r1 alone first, then with both: the existing object
	// without a SHA-256 is compared by content, the new one gets a sum.
	name2 := w.seg(2)
	key2, _ := repo.WALKey(name2, w.size)
	if err := newTestPusher(t, pushConfig(t, segBytes, nil, r1), PushOptions{Ahead: 0}).Push(t.Context(), w.path(name2)); err != nil {
		t.Fatal(err)
	}
	if err := p.Push(t.Context(), w.path(name2)); err != nil {
		t.Fatalf("push to both after one: %v", err)
	}
	if info, _ := r1.ObjectInfo(t.Context(), key2); info.Sum != "" {
		t.Errorf("the one-repository object has sum %q, want none", info.Sum)
	}
	if info, _ := r2.ObjectInfo(t.Context(), key2); info.Sum != pushSum(w.read(t, name2)) {
		t.Errorf("the two-repository object has sum %q", info.Sum)
	}
}

// TestPushDamagedArchivedCopy: when the archived copy of a name is damaged,
// a repeated push cannot know whether it held the same content; it fails
// naming the object and the fix, and overwrites nothing.
func TestPushDamagedArchivedCopy(t *testing.T) {
	const segBytes = pushMiB
	st, root := teststore.FS(t)
	r := pushRepoCompressed(t, st, segBytes, nil, "zstd")
	w := newPushWAL(t, segBytes, 1)
	name := w.seg(1)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	if err := p.Push(t.Context(), w.path(name)); err != nil {
		t.Fatal(err)
	}
	key, _ := repo.WALKey(name, w.size)
	path := filepath.Join(root, filepath.FromSlash(key))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10 // a byte in the body: header and trailer stay readable
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	err = p.Push(t.Context(), w.path(name))
	if !errors.Is(err, codec.ErrCorrupt) || errors.Is(err, ErrConflict) {
		t.Fatalf("Push over a damaged copy: got %v, want ErrCorrupt and no conflict", err)
	}
	for _, want := range []string{key, "delete it from the repository"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, b) {
		t.Error("the damaged object was overwritten")
	}
}

// TestPushEncrypted: the duplicate check reads the checksum of an
// encrypted object with the repository's key.
func TestPushEncrypted(t *testing.T) {
	const segBytes = pushMiB
	ctx := context.Background()
	st, _ := teststore.FS(t)
	pass := []byte("correct horse battery staple")
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: pushCluster(segBytes), Compression: "zstd", Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	w := newPushWAL(t, segBytes, 1)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{})
	for range 2 {
		if err := p.Push(ctx, w.path(w.seg(1))); err != nil {
			t.Fatal(err)
		}
	}
	if got := pushStored(t, r, w.seg(1)); !bytes.Equal(got, w.read(t, w.seg(1))) {
		t.Fatal("content differs")
	}
	w.add(t, w.seg(1), w.random(segBytes), false)
	if err := p.Push(ctx, w.path(w.seg(1))); !errors.Is(err, ErrConflict) {
		t.Fatalf("got %v, want ErrConflict", err)
	}
}

// TestPushRefused covers names and sizes that are not pushed.
func TestPushRefused(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 0)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 2})
	short := w.seg(7)
	w.add(t, short, w.random(segBytes/2), true)
	w.add(t, "RECOVERYXLOG", w.random(segBytes), false)
	w.add(t, "00000001000000000000000g", w.random(segBytes), false)
	cs.reset()

	err := p.Push(t.Context(), w.path(short))
	if err == nil || !strings.Contains(err.Error(), "incomplete segment") || !strings.Contains(err.Error(), short) {
		t.Fatalf("short segment: got %v, want a refusal naming it", err)
	}
	for _, bad := range []string{"RECOVERYXLOG", "00000001000000000000000g", "missing/" + w.seg(9)} {
		if err := p.Push(t.Context(), w.path(bad)); err == nil {
			t.Errorf("Push(%s) succeeded", bad)
		}
	}
	if err := p.Push(t.Context(), w.path(w.seg(8))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
	if n := cs.ops.Load(); n != 0 {
		t.Errorf("%d store operations for refused files, want 0", n)
	}
}

// TestPushRelativePath pushes %p as PostgreSQL passes it: relative to the
// data directory, the current directory of archive_command.
func TestPushRelativePath(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	r := pushRepo(t, st, segBytes, nil)
	w := newPushWAL(t, segBytes, 3)
	t.Chdir(filepath.Dir(w.dir))
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 1})
	if err := p.Push(t.Context(), filepath.Join("pg_wal", w.seg(1))); err != nil {
		t.Fatal(err)
	}
	if got := w.records(t); len(got) != 1 || got[0] != w.seg(2) {
		t.Fatalf("records %v, want [%s]", got, w.seg(2))
	}
	if got := pushStored(t, r, w.seg(2)); !bytes.Equal(got, w.read(t, w.seg(2))) {
		t.Fatal("segment pushed ahead differs")
	}
}

// TestPushOneRepoBroken: with one of two repositories gone, Push fails and
// records nothing, the look-ahead included.
func TestPushOneRepoBroken(t *testing.T) {
	const segBytes = pushMiB
	good, goodRoot := teststore.FS(t)
	bad, badRoot := teststore.FS(t)
	c := codec.New()
	rGood, rBad := pushRepo(t, good, segBytes, c), pushRepo(t, bad, segBytes, c)
	w := newPushWAL(t, segBytes, 6)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, rGood, rBad), PushOptions{Ahead: 4})
	if err := os.RemoveAll(badRoot); err != nil {
		t.Fatal(err)
	}
	err := p.Push(t.Context(), w.path(w.seg(1)))
	if err == nil || !strings.Contains(err.Error(), badRoot) || !strings.Contains(err.Error(), w.seg(1)) {
		t.Fatalf("got %v, want an error naming the broken repository and the segment", err)
	}
	if got := w.records(t); len(got) != 0 {
		t.Fatalf("records left although a repository failed: %v", got)
	}
	// The healthy repository has it; a later push once the other is back
	// completes the set.
	if got := pushStored(t, rGood, w.seg(1)); !bytes.Equal(got, w.read(t, w.seg(1))) {
		t.Fatal("healthy repository: content differs")
	}
	// Both broken: one line naming both, for PostgreSQL's log.
	if err := os.RemoveAll(goodRoot); err != nil {
		t.Fatal(err)
	}
	err = p.Push(t.Context(), w.path(w.seg(2)))
	if err == nil || !strings.Contains(err.Error(), badRoot) || !strings.Contains(err.Error(), goodRoot) ||
		strings.Contains(err.Error(), "\n") || !errors.Is(err, storage.ErrNoBucket) {
		t.Fatalf("both repositories broken: got %q", err)
	}
}

// TestPushAhead: after the first of 10 segments, the next calls need no
// network, in a new process and in the same one, and leave no records.
func TestPushAhead(t *testing.T) {
	for _, sc := range pushStores {
		t.Run(sc.name, func(t *testing.T) { testPushAhead(t, sc.open(t)) })
	}
}

func testPushAhead(t *testing.T, st storage.Store) {
	const segBytes = pushMiB
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 10)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 4})

	if err := p.Push(t.Context(), w.path(w.seg(1))); err != nil {
		t.Fatal(err)
	}
	w.done(t, w.seg(1))
	want := []string{w.seg(2), w.seg(3), w.seg(4), w.seg(5)}
	if got := w.records(t); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("records %v, want %v", got, want)
	}
	// Another process without look-ahead (archive-push is one process per
	// call) trusts the records: no network at all.
	q := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	for i := 2; i <= 5; i++ {
		cs.reset()
		if err := q.Push(t.Context(), w.path(w.seg(i))); err != nil {
			t.Fatal(err)
		}
		if n := cs.ops.Load(); n != 0 {
			t.Fatalf("Push(%s) made %d store operations, want 0", w.seg(i), n)
		}
		w.done(t, w.seg(i))
	}
	if got := w.records(t); len(got) != 0 {
		t.Fatalf("records left: %v", got)
	}
	// The same pusher: 6 pushes 7..10 ahead, which then cost nothing.
	if err := p.Push(t.Context(), w.path(w.seg(6))); err != nil {
		t.Fatal(err)
	}
	w.done(t, w.seg(6))
	cs.reset()
	for i := 7; i <= 10; i++ {
		if err := p.Push(t.Context(), w.path(w.seg(i))); err != nil {
			t.Fatal(err)
		}
		w.done(t, w.seg(i))
	}
	if n := cs.ops.Load(); n != 0 {
		t.Fatalf("pushes of 7..10 made %d store operations, want 0", n)
	}
	if got := w.records(t); len(got) != 0 {
		t.Fatalf("records left: %v", got)
	}
	for i := 1; i <= 10; i++ {
		if got := pushStored(t, r, w.seg(i)); !bytes.Equal(got, w.read(t, w.seg(i))) {
			t.Fatalf("%s differs", w.seg(i))
		}
	}
}

// TestPushAheadBackground runs PostgreSQL's sequence against a daemon-style
// pusher: every segment is uploaded exactly once, nothing is left.
func TestPushAheadBackground(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 20)
	p, err := NewPusher(pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 3, Background: true})
	if err != nil {
		t.Fatal(err)
	}
	cs.reset()
	for i := 1; i <= 20; i++ {
		if err := p.Push(t.Context(), w.path(w.seg(i))); err != nil {
			t.Fatal(err)
		}
		w.done(t, w.seg(i))
		if n := len(w.records(t)); n > 4 {
			t.Fatalf("after %d pushes: %d records, want at most 4", i, n)
		}
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := p.Push(t.Context(), w.path(w.seg(1))); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Push after Close: %v", err)
	}
	if got := w.records(t); len(got) != 0 {
		t.Fatalf("records left: %v", got)
	}
	for i := 1; i <= 20; i++ {
		key, _ := repo.WALKey(w.seg(i), w.size)
		if n := cs.creates[key]; n != 1 {
			t.Errorf("%s uploaded %d times, want once", w.seg(i), n)
		}
	}
}

// TestPushRecordNotTrusted: a record is used only for the file it was
// written for, with the same repositories, and only when it parses.
func TestPushRecordNotTrusted(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	cs := newPushCountingStore(st)
	c := codec.New()
	r := pushRepo(t, cs, segBytes, c)
	w := newPushWAL(t, segBytes, 6)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 5})
	if err := p.Push(t.Context(), w.path(w.seg(1))); err != nil {
		t.Fatal(err)
	}
	w.done(t, w.seg(1))
	if n := len(w.records(t)); n != 5 {
		t.Fatalf("%d records, want 5", n)
	}
	q := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	check := func(i int, wantErr error) {
		t.Helper()
		cs.reset()
		err := q.Push(t.Context(), w.path(w.seg(i)))
		if !errors.Is(err, wantErr) {
			t.Fatalf("Push(%s): got %v, want %v", w.seg(i), err, wantErr)
		}
		if cs.ops.Load() == 0 {
			t.Fatalf("Push(%s) trusted its record", w.seg(i))
		}
		if _, err := os.Stat(filepath.Join(w.stateDir(), w.seg(i))); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("record of %s still there: %v", w.seg(i), err)
		}
	}

	// 2: same content, another mtime: checked with the store, fine.
	if err := os.Chtimes(w.path(w.seg(2)), time.Time{}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	check(2, nil)
	// 3: rewritten with other content (a recycled segment file): the
	// record must not hide the conflict.
	w.add(t, w.seg(3), w.random(segBytes), false)
	check(3, ErrConflict)
	// 4: a torn record (crash while writing it, no fsync).
	if err := os.WriteFile(filepath.Join(w.stateDir(), w.seg(4)), []byte(`{"name":"0000`), 0o600); err != nil {
		t.Fatal(err)
	}
	check(4, nil)
	// 5: another size in the record.
	rec, _, ok := readRecord(w.stateDir(), w.seg(5))
	if !ok {
		t.Fatal("record of 5 unreadable")
	}
	rec.Size++
	if err := writeRecord(w.stateDir(), rec); err != nil {
		t.Fatal(err)
	}
	check(5, nil)
	// 6: written for one repository; now there are two, and the new one
	// must get the segment.
	other, _ := teststore.FS(t)
	r2 := pushRepo(t, other, segBytes, c)
	q2 := newTestPusher(t, pushConfig(t, segBytes, nil, r, r2), PushOptions{Ahead: 0})
	if err := q2.Push(t.Context(), w.path(w.seg(6))); err != nil {
		t.Fatal(err)
	}
	if got := pushStored(t, r2, w.seg(6)); !bytes.Equal(got, w.read(t, w.seg(6))) {
		t.Fatal("the added repository did not get the segment")
	}
}

// TestPushStateCleanup: records of files no longer .ready and leftovers of
// interrupted writes go; other files in the directory stay.
func TestPushStateCleanup(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	r := pushRepo(t, st, segBytes, nil)
	w := newPushWAL(t, segBytes, 3)
	sd := w.stateDir()
	if err := os.MkdirAll(sd, 0o700); err != nil {
		t.Fatal(err)
	}
	put := func(name string, age time.Duration) {
		path := filepath.Join(sd, name)
		if err := os.WriteFile(path, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(-age)
		if err := os.Chtimes(path, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	gone := []string{
		"000000010000000000000000",        // older than every .ready
		"0000000100000000000000AA",        // newer, never .ready
		"00000003.history",                // history file archived meanwhile
		".tmp-000000010000000000000002-1", // interrupted write, an hour old
	}
	kept := []string{
		w.seg(3),                          // still .ready
		".tmp-000000010000000000000003-2", // being written
		"notes.txt",                       // not ours
	}
	for _, n := range gone {
		put(n, time.Hour)
	}
	for _, n := range kept {
		put(n, 0)
	}
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	if err := p.Push(t.Context(), w.path(w.seg(1))); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(w.records(t), ",")
	if want := ".tmp-000000010000000000000003-2," + w.seg(3) + ",notes.txt"; got != want {
		t.Fatalf("state directory holds %s, want %s", got, want)
	}
}

// TestPushStateBounded: however long the backlog, the state directory
// holds at most Ahead records.
func TestPushStateBounded(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	r := pushRepo(t, st, segBytes, nil)
	w := newPushWAL(t, segBytes, 40)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 4})
	for i := 1; i <= 40; i++ {
		if err := p.Push(t.Context(), w.path(w.seg(i))); err != nil {
			t.Fatal(err)
		}
		w.done(t, w.seg(i))
		if got := w.records(t); len(got) > 4 {
			t.Fatalf("after %d pushes: %d records: %v", i, len(got), got)
		}
	}
	if got := w.records(t); len(got) != 0 {
		t.Fatalf("records left: %v", got)
	}
}

// TestPushConcurrent pushes the same and different segments from many
// goroutines at once: all succeed and no key is ever uploaded twice at the
// same time.
func TestPushConcurrent(t *testing.T) {
	for _, sc := range pushStores {
		for _, background := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/background=%t", sc.name, background), func(t *testing.T) {
				testPushConcurrent(t, sc.open(t), background)
			})
		}
	}
}

func testPushConcurrent(t *testing.T, st storage.Store, background bool) {
	const segBytes = pushMiB
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 12)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 3, Background: background})
	var wg sync.WaitGroup
	errs := make(chan error, 36)
	for i := range 36 {
		wg.Go(func() {
			if err := p.Push(t.Context(), w.path(w.seg(1+i%12))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if cs.maxActive > 1 {
		t.Errorf("a key was uploaded %d times at once", cs.maxActive)
	}
	for i := 1; i <= 12; i++ {
		if got := pushStored(t, r, w.seg(i)); !bytes.Equal(got, w.read(t, w.seg(i))) {
			t.Fatalf("%s differs", w.seg(i))
		}
	}
}

// TestPushRetry: transient failures are retried inside Push, permanent
// ones are not, and retries end.
func TestPushRetry(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 3)
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 0})
	key := func(i int) string { k, _ := repo.WALKey(w.seg(i), w.size); return k }

	cs.failNext, cs.failErr = 2, storage.Retryable(errors.New("connection reset by peer"))
	if err := p.Push(t.Context(), w.path(w.seg(1))); err != nil {
		t.Fatalf("two transient failures: %v", err)
	}
	if n := cs.creates[key(1)]; n != 3 {
		t.Errorf("%d attempts, want 3", n)
	}

	cs.failNext, cs.failErr = 1, fmt.Errorf("access denied: %w", storage.ErrPermission)
	err := p.Push(t.Context(), w.path(w.seg(2)))
	if !errors.Is(err, storage.ErrPermission) || cs.creates[key(2)] != 1 {
		t.Errorf("permanent failure: got %v after %d attempts, want ErrPermission after 1", err, cs.creates[key(2)])
	}

	cs.failNext, cs.failErr = 100, storage.Retryable(errors.New("503 slow down"))
	err = p.Push(t.Context(), w.path(w.seg(3)))
	if err == nil || !strings.Contains(err.Error(), "giving up after 3 attempts") {
		t.Errorf("endless transient failures: got %v", err)
	}
	cs.failNext = 0
}

// TestPushClose: Close waits for background uploads, or cancels them when
// its context ends, and then records nothing for them.
func TestPushClose(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	cs := newPushCountingStore(st)
	r := pushRepo(t, cs, segBytes, nil)
	w := newPushWAL(t, segBytes, 6)

	p, err := NewPusher(pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 2, Background: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Push(t.Context(), w.path(w.seg(1))); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := w.records(t); len(got) != 2 {
		t.Fatalf("after Close: records %v, want 2", got)
	}
	w.done(t, w.seg(1))

	for _, i := range []int{5, 6} {
		k, _ := repo.WALKey(w.seg(i), w.size)
		cs.block[k] = make(chan struct{}) // never released
	}
	p, err = NewPusher(pushConfig(t, segBytes, nil, r), PushOptions{Ahead: 4, Background: true})
	if err != nil {
		t.Fatal(err)
	}
	// 2 and 3 come from records, 4 is uploaded, 5 and 6 hang.
	if err := p.Push(t.Context(), w.path(w.seg(2))); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := p.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with hanging uploads: %v", err)
	}
	for _, n := range w.records(t) {
		if n == w.seg(5) || n == w.seg(6) {
			t.Fatalf("record for a cancelled upload: %v", w.records(t))
		}
	}
}

// TestPushNoArchiveStatus pushes a file outside pg_wal: no look-ahead, no
// state directory.
func TestPushNoArchiveStatus(t *testing.T) {
	const segBytes = pushMiB
	st, _ := teststore.FS(t)
	r := pushRepo(t, st, segBytes, nil)
	dir := t.TempDir()
	name := "000000010000000000000003.partial"
	data := make([]byte, 1000)
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	p := newTestPusher(t, pushConfig(t, segBytes, nil, r), PushOptions{Ahead: -1})
	if err := p.Push(t.Context(), filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".walferry")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state directory created outside pg_wal: %v", err)
	}
}

func TestReadyList(t *testing.T) {
	size := pushSegSize(t, 16*pushMiB)
	dir := t.TempDir()
	st := filepath.Join(dir, "archive_status")
	if err := os.Mkdir(st, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{
		"000000020000000000000004.ready", "000000010000000000000003.done", "00000003.history.ready",
		"000000010000000000000003.00000028.backup.ready", "000000010000000000000003.ready",
		"00000002.history.ready", "000000010000000000000003.partial.ready", "junk.ready", "000000010000000000000004.ready",
	} {
		if err := os.WriteFile(filepath.Join(st, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, ok := readyList(dir, size)
	want := []string{"00000002.history", "00000003.history", "000000010000000000000003",
		"000000010000000000000003.00000028.backup", "000000010000000000000003.partial",
		"000000010000000000000004", "000000020000000000000004"}
	if !ok || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("readyList = %v, %v\nwant %v", got, ok, want)
	}
	if _, ok := readyList(t.TempDir(), size); ok {
		t.Fatal("readyList of a directory without archive_status: ok")
	}
}

// pushWALLike returns n bytes a compressor sees like WAL: 8 KiB pages of
// records mixing repeated text, counters and random bytes, and a zero tail.
func pushWALLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]byte, n)
	words := []string{"customer", "order", "pending", "shipped", "berlin", "paris", "total", "EUR", "2024-06-01"}
	busy := n * 7 / 10
	for pos := 0; pos < busy; {
		switch rng.IntN(10) {
		case 0: // incompressible payload
			k := min(busy-pos, 64+rng.IntN(512))
			for i := range k {
				out[pos+i] = byte(rng.Uint32())
			}
			pos += k
		default:
			pos += copy(out[pos:busy], fmt.Sprintf("%08x|%d|%s|%s|%d;", pos, rng.IntN(100000),
				words[rng.IntN(len(words))], words[rng.IntN(len(words))], rng.IntN(1000)))
		}
	}
	return out
}

// BenchmarkPush pushes 16 MiB WAL-like segments to a filesystem repository
// with lz4, one call at a time as PostgreSQL does, with and without
// look-ahead. Each op is one archive_command call; run with -benchtime=200x
// for the W1 workload.
func BenchmarkPush(b *testing.B) {
	const segBytes = 16 * pushMiB
	contents := make([][]byte, 4)
	for i := range contents {
		contents[i] = pushWALLike(segBytes, uint64(i))
	}
	for _, bc := range []struct {
		name       string
		ahead      int
		background bool
	}{
		{"cli/ahead=0", 0, false},
		{"cli/ahead=default", -1, false},
		{"daemon/ahead=default", -1, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			st, root := teststore.FS(b)
			r := pushRepo(b, st, segBytes, nil)
			w := &pushWAL{dir: filepath.Join(b.TempDir(), "pg_wal"), size: pushSegSize(b, segBytes)}
			if err := os.MkdirAll(filepath.Join(w.dir, "archive_status"), 0o700); err != nil {
				b.Fatal(err)
			}
			// The segment files are hard links to four contents: distinct
			// names (and objects), shared page cache.
			for i, c := range contents {
				if err := os.WriteFile(filepath.Join(w.dir, fmt.Sprintf("content%d", i)), c, 0o600); err != nil {
					b.Fatal(err)
				}
			}
			made := 0
			produce := func(upTo int) { // PostgreSQL finishing segments
				for ; made < upTo; made++ {
					name := w.seg(made + 1)
					if err := os.Link(filepath.Join(w.dir, fmt.Sprintf("content%d", made%len(contents))), w.path(name)); err != nil {
						b.Fatal(err)
					}
					if err := os.WriteFile(filepath.Join(w.dir, "archive_status", name+".ready"), nil, 0o600); err != nil {
						b.Fatal(err)
					}
				}
			}
			p, err := NewPusher(pushConfig(b, segBytes, nil, r), PushOptions{Ahead: bc.ahead, Background: bc.background})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.SetBytes(segBytes)
			b.ResetTimer()
			for i := 1; i <= b.N; i++ {
				produce(min(b.N, i+16)) // a backlog as deep as the largest look-ahead
				if err := p.Push(ctx, w.path(w.seg(i))); err != nil {
					b.Fatal(err)
				}
				w.done(b, w.seg(i))
			}
			if err := p.Close(ctx); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "segments/s")
			var stored int64
			_ = filepath.WalkDir(filepath.Join(root, repo.WALPrefix), func(_ string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil {
						stored += fi.Size()
					}
				}
				return nil
			})
			b.ReportMetric(100*float64(stored)/float64(int64(b.N)*segBytes), "ratio%")
		})
	}
}
