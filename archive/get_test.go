package archive

import (
	"bytes"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
)

// getSegBytes is the WAL segment size of most get tests: small segments
// keep them fast while exercising the same code as 16 MiB ones.
const getSegBytes = 1 << 20

func getSegSize(t testing.TB, bytes int64) pg.WALSegmentSize {
	t.Helper()
	s, err := pg.NewWALSegmentSize(bytes)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// getStores are the backends the store-facing tests run against.
var getStores = []struct {
	name string
	open func(t testing.TB) storage.Store
}{
	{"fs", func(t testing.TB) storage.Store { st, _ := teststore.FS(t); return st }},
	{"s3", teststore.S3},
}

// getRepo initializes an lz4 repository in st for segBytes segments and
// opens it.
func getRepo(t testing.TB, st storage.Store, segBytes int64) *repo.Repo {
	t.Helper()
	ctx := context.Background()
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: getCluster(segBytes), Compression: "lz4", CreatedBy: "get_test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// getSysID is the system identifier of the tests' cluster.
const getSysID = 7310000000000000042

func getCluster(segBytes int64) repo.Cluster {
	return repo.Cluster{SystemID: getSysID, PGMajor: 15, WALSegmentSize: segBytes, Source: "get_test"}
}

// getConfig builds a Config over repos.
func getConfig(t testing.TB, segBytes int64, log *slog.Logger, repos ...*repo.Repo) Config {
	return Config{Repos: repos, Cluster: getCluster(segBytes), SegmentSize: getSegSize(t, segBytes), Log: log}
}

func newTestGetter(t testing.TB, cfg Config, o GetOptions) *Getter {
	t.Helper()
	g, err := NewGetter(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close(context.Background()) })
	return g
}

// getWALLike returns n bytes that compress about like WAL: 8 KiB pages of
// records mixing random and repetitive bytes, then zeros.
func getWALLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for page := 0; page < n; page += 8192 {
		end := min(page+8192, n)
		fill := page + 24 + rng.IntN(8192-24)
		for i := page; i < min(fill, end); {
			rec := min(16+rng.IntN(200), min(fill, end)-i)
			for j := range rec {
				if j < 24 || rng.IntN(4) == 0 {
					b[i+j] = byte(rng.Uint32())
				} else {
					b[i+j] = byte(j)
				}
			}
			i += rec
		}
	}
	return b
}

// getPut archives data under name in r.
func getPut(t testing.TB, r *repo.Repo, segBytes int64, name string, data []byte) {
	t.Helper()
	key, err := repo.WALKey(name, getSegSize(t, segBytes))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(context.Background(), key, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

// getSegs archives segments first..last of timeline tli in every repo and
// returns their contents by name.
func getSegs(t testing.TB, segBytes int64, tli pg.TimeLineID, first, last int, repos ...*repo.Repo) map[string][]byte {
	t.Helper()
	size := getSegSize(t, segBytes)
	out := map[string][]byte{}
	for i := first; i <= last; i++ {
		name := pg.SegmentName(tli, pg.SegNo(i), size)
		data := getWALLike(int(segBytes), uint64(tli)<<32|uint64(i))
		for _, r := range repos {
			getPut(t, r, segBytes, name, data)
		}
		out[name] = data
	}
	return out
}

// getCheck asserts that path holds want.
func getCheck(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes differ from the %d archived", path, len(got), len(want))
	}
}

// getDirNames lists dir (nil when missing), directories marked with "/".
func getDirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() {
			n += "/"
		}
		out = append(out, n)
	}
	return out
}

// getNoTemps fails when dir holds a temporary file of a Get.
func getNoTemps(t testing.TB, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		for _, n := range getDirNames(t, dir) {
			if strings.HasPrefix(n, spoolTempPrefix) || strings.HasPrefix(n, destTempPrefix) {
				t.Errorf("temporary file left behind: %s", filepath.Join(dir, n))
			}
		}
	}
}

// getSpoolFiles returns the final spool files in dir.
func getSpoolFiles(t testing.TB, dir string, segBytes int64) []string {
	t.Helper()
	var out []string
	for _, n := range getDirNames(t, dir) {
		if _, ok := parseSpoolFileName(n, getSegSize(t, segBytes)); ok {
			out = append(out, n)
		}
	}
	return out
}

// getCountingStore counts the requests that reach a store.
type getCountingStore struct {
	storage.Store
	gets, ranges, stats, lists atomic.Int64
}

func (c *getCountingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

func (c *getCountingStore) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.ranges.Add(1)
	return c.Store.GetRange(ctx, key, off, n)
}

func (c *getCountingStore) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	c.stats.Add(1)
	return c.Store.Stat(ctx, key)
}

func (c *getCountingStore) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	c.lists.Add(1)
	return c.Store.List(ctx, prefix, fn)
}

func (c *getCountingStore) requests() int64 {
	return c.gets.Load() + c.ranges.Load() + c.stats.Load() + c.lists.Load()
}

func (c *getCountingStore) reset() {
	c.gets.Store(0)
	c.ranges.Store(0)
	c.stats.Store(0)
	c.lists.Store(0)
}

// getLog collects log output.
type getLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *getLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *getLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// logger returns a logger of records at level and above into l.
func (l *getLog) logger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}

// getPGWal makes a pg_wal-like destination directory.
func getPGWal(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pg_wal")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestGetRoundTrip(t *testing.T) {
	for _, st := range getStores {
		t.Run(st.name, func(t *testing.T) {
			r := getRepo(t, st.open(t), getSegBytes)
			size := getSegSize(t, getSegBytes)
			segs := getSegs(t, getSegBytes, 1, 1, 3, r)
			others := map[string][]byte{
				"00000002.history":                          []byte("1\t0/2000028\tno recovery target specified\n"),
				pg.BackupHistoryFileName(1, 0x100028, size): []byte("START WAL LOCATION: 0/100028\n"),
				pg.PartialFileName(1, 3, size):              getWALLike(getSegBytes, 99),
				pg.SegmentName(1, 7, size):                  {}, // empty object
			}
			for name, data := range others {
				getPut(t, r, getSegBytes, name, data)
			}
			for _, prefetch := range []int{0, 2} {
				t.Run(fmt.Sprint("prefetch=", prefetch), func(t *testing.T) {
					wal := getPGWal(t)
					g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: prefetch})
					for name, want := range others {
						dest := filepath.Join(wal, "RECOVERYXLOG")
						if err := g.Get(t.Context(), name, dest); err != nil {
							t.Fatalf("Get %s: %v", name, err)
						}
						getCheck(t, dest, want)
					}
					for name, want := range segs {
						dest := filepath.Join(wal, "RECOVERYXLOG")
						if err := g.Get(t.Context(), name, dest); err != nil {
							t.Fatalf("Get %s: %v", name, err)
						}
						getCheck(t, dest, want)
					}
					getNoTemps(t, wal, filepath.Join(wal, ".walferry", "prefetch"))
				})
			}
		})
	}
}

// TestGetRelativeDest gets to a path relative to the working directory,
// as restore_command passes pg_wal/RECOVERYXLOG with the data directory
// as working directory.
func TestGetRelativeDest(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 3, r)
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, "pg_wal"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(data)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 2})
	for _, i := range []int{1, 2, 3} {
		name := pg.SegmentName(1, pg.SegNo(i), getSegSize(t, getSegBytes))
		if err := g.Get(t.Context(), name, "pg_wal/RECOVERYXLOG"); err != nil {
			t.Fatal(err)
		}
		getCheck(t, filepath.Join(data, "pg_wal", "RECOVERYXLOG"), segs[name])
	}
	if got := getDirNames(t, filepath.Join(data, "pg_wal")); strings.Join(got, " ") != ".walferry/ RECOVERYXLOG" {
		t.Errorf("pg_wal holds %q", got)
	}
}

func TestGetNotArchived(t *testing.T) {
	for _, st := range getStores {
		t.Run(st.name, func(t *testing.T) {
			c1 := &getCountingStore{Store: st.open(t)}
			c2 := &getCountingStore{Store: st.open(t)}
			r1, r2 := getRepo(t, c1, getSegBytes), getRepo(t, c2, getSegBytes)
			getSegs(t, getSegBytes, 1, 1, 2, r1, r2)
			var log getLog
			wal := getPGWal(t)
			g := newTestGetter(t, getConfig(t, getSegBytes, log.logger(slog.LevelInfo), r1, r2), GetOptions{Prefetch: 4})
			size := getSegSize(t, getSegBytes)
			for _, name := range []string{pg.SegmentName(1, 3, size), "00000002.history", pg.SegmentName(2, 1, size)} {
				c1.reset()
				c2.reset()
				dest := filepath.Join(wal, "RECOVERYXLOG")
				start := time.Now()
				err := g.Get(t.Context(), name, dest)
				elapsed := time.Since(start)
				if !errors.Is(err, ErrNotArchived) {
					t.Fatalf("Get %s: %v, want ErrNotArchived", name, err)
				}
				if !strings.Contains(err.Error(), name) {
					t.Errorf("error does not name the file: %v", err)
				}
				if elapsed > time.Second {
					t.Errorf("Get %s took %v to find it missing", name, elapsed)
				}
				if n1, n2 := c1.requests(), c2.requests(); n1 != 1 || n2 != 1 {
					t.Errorf("Get %s: %d and %d store requests, want one per repository", name, n1, n2)
				}
				if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("dest exists after a miss: %v", err)
				}
			}
			getNoTemps(t, wal, filepath.Join(wal, ".walferry", "prefetch"))
			if s := log.String(); s != "" {
				t.Errorf("a miss must be quiet; logged:\n%s", s)
			}
		})
	}
}

// TestGetMissingDestDir: a missing destination directory is an error, and
// the default spool does not create it.
func TestGetMissingDestDir(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	getSegs(t, getSegBytes, 1, 1, 3, r)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 2})
	wal := filepath.Join(t.TempDir(), "pg_wal")
	err := g.Get(t.Context(), pg.SegmentName(1, 1, getSegSize(t, getSegBytes)), filepath.Join(wal, "RECOVERYXLOG"))
	if err == nil || errors.Is(err, ErrNotArchived) {
		t.Fatalf("Get into a missing directory: %v", err)
	}
	if _, err := os.Stat(wal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Get created %s: %v", wal, err)
	}
}

func TestGetInvalidName(t *testing.T) {
	st, _ := teststore.FS(t)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, getRepo(t, st, getSegBytes)), GetOptions{})
	for _, name := range []string{"", "RECOVERYXLOG", "../000000010000000000000001", "000000010000000000000001/x"} {
		err := g.Get(t.Context(), name, filepath.Join(t.TempDir(), "x"))
		if err == nil || errors.Is(err, ErrNotArchived) {
			t.Errorf("Get(%q): %v, want a name error", name, err)
		}
	}
	if _, err := NewGetter(Config{}, GetOptions{}); err == nil {
		t.Error("NewGetter without repositories succeeded")
	}
}

func TestGetCorruptObject(t *testing.T) {
	st, root := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 3, r)
	size := getSegSize(t, getSegBytes)
	name := pg.SegmentName(1, 1, size)
	key, _ := repo.WALKey(name, size)
	obj := filepath.Join(root, filepath.FromSlash(key))
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x20
	if err := os.WriteFile(obj, b, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, prefetch := range []int{0, 4} {
		wal := getPGWal(t)
		dest := filepath.Join(wal, "RECOVERYXLOG")
		old := []byte("an older file")
		if err := os.WriteFile(dest, old, 0o600); err != nil {
			t.Fatal(err)
		}
		g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: prefetch})
		err := g.Get(t.Context(), name, dest)
		if !errors.Is(err, codec.ErrCorrupt) || !strings.Contains(err.Error(), key) {
			t.Fatalf("Get of a corrupt object: %v, want ErrCorrupt naming %s", err, key)
		}
		if errors.Is(err, ErrNotArchived) {
			t.Errorf("a corrupt object is not a missing one: %v", err)
		}
		getCheck(t, dest, old)
		getNoTemps(t, wal, filepath.Join(wal, ".walferry", "prefetch"))
		// The others are intact.
		next := pg.SegmentName(1, 2, size)
		if err := g.Get(t.Context(), next, dest); err != nil {
			t.Fatal(err)
		}
		getCheck(t, dest, segs[next])
	}
}

// TestGetFallsBackToNextRepo: the first repository that has an intact
// copy wins.
func TestGetFallsBackToNextRepo(t *testing.T) {
	st1, root1 := teststore.FS(t)
	st2, _ := teststore.FS(t)
	r1, r2 := getRepo(t, st1, getSegBytes), getRepo(t, st2, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 2, r2)
	one, two := pg.SegmentName(1, 1, size), pg.SegmentName(1, 2, size)
	getPut(t, r1, getSegBytes, two, segs[two])
	key, _ := repo.WALKey(two, size)
	obj := filepath.Join(root1, filepath.FromSlash(key))
	b, _ := os.ReadFile(obj)
	b[len(b)-10] ^= 1
	if err := os.WriteFile(obj, b, 0o640); err != nil {
		t.Fatal(err)
	}
	var log getLog
	g := newTestGetter(t, getConfig(t, getSegBytes, log.logger(slog.LevelInfo), r1, r2), GetOptions{Prefetch: 0})
	dest := filepath.Join(getPGWal(t), "RECOVERYXLOG")
	for _, name := range []string{one, two} {
		if err := g.Get(t.Context(), name, dest); err != nil {
			t.Fatalf("Get %s: %v", name, err)
		}
		getCheck(t, dest, segs[name])
	}
	if !strings.Contains(log.String(), key) {
		t.Errorf("the corrupt copy in the first repository was not reported:\n%s", log.String())
	}
}

func TestGetPrefetch(t *testing.T) {
	for _, st := range getStores {
		t.Run(st.name, func(t *testing.T) {
			cs := &getCountingStore{Store: st.open(t)}
			r := getRepo(t, cs, getSegBytes)
			size := getSegSize(t, getSegBytes)
			segs := getSegs(t, getSegBytes, 1, 1, 12, r)
			wal := getPGWal(t)
			spool := filepath.Join(wal, ".walferry", "prefetch")
			dest := filepath.Join(wal, "RECOVERYXLOG")
			get := func(i int) {
				t.Helper()
				// A Getter per call, like restore_command processes.
				g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 4})
				name := pg.SegmentName(1, pg.SegNo(i), size)
				if err := g.Get(t.Context(), name, dest); err != nil {
					t.Fatalf("Get %s: %v", name, err)
				}
				getCheck(t, dest, segs[name])
				if err := g.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
				getNoTemps(t, wal, spool)
			}
			cs.reset()
			get(1)
			if n := cs.gets.Load(); n != 5 {
				t.Errorf("Get of segment 1 made %d store gets, want 5 (1 + 4 prefetched)", n)
			}
			if files := getSpoolFiles(t, spool, getSegBytes); len(files) != 4 {
				t.Errorf("spool holds %q, want segments 2..5", files)
			}
			cs.reset()
			for i := 2; i <= 5; i++ {
				get(i)
				if n := cs.requests(); n != 0 {
					t.Fatalf("Get of prefetched segment %d made %d store requests", i, n)
				}
				if files := getSpoolFiles(t, spool, getSegBytes); len(files) != 5-i {
					t.Errorf("after segment %d the spool holds %q", i, files)
				}
			}
			if files := getDirNames(t, spool); len(files) != 0 {
				t.Errorf("spool not empty after the batch was served: %q", files)
			}
			get(6)
			if n := cs.gets.Load(); n != 5 {
				t.Errorf("Get of segment 6 made %d store gets, want 5", n)
			}
			// Segments 11 and 12 are the last: the batch stops there, and
			// the spool files before 11 go.
			cs.reset()
			get(11)
			if n := cs.gets.Load(); n < 3 || n > 5 {
				t.Errorf("Get of segment 11 made %d store gets, want 11, 12, 13 (missing) and maybe 14, 15", n)
			}
			files := getSpoolFiles(t, spool, getSegBytes)
			if len(files) != 1 || !strings.HasPrefix(files[0], pg.SegmentName(1, 12, size)+".") {
				t.Errorf("spool holds %q, want 12", files)
			}
			get(12)
			if err := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 4}).
				Get(t.Context(), pg.SegmentName(1, 13, size), dest); !errors.Is(err, ErrNotArchived) {
				t.Fatalf("Get past the end: %v", err)
			}
			if files := getDirNames(t, spool); len(files) != 0 {
				t.Errorf("spool holds %q at the end", files)
			}
		})
	}
}

// TestGetPrefetchStopsAtMissing: a gap ends the batch quietly, and no
// request goes beyond the first missing segment.
func TestGetPrefetchStopsAtMissing(t *testing.T) {
	st, _ := teststore.FS(t)
	cs := &getCountingStore{Store: st}
	r := getRepo(t, cs, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 3, r)
	var log getLog
	wal := getPGWal(t)
	// The batch is parallel, so requests beyond the gap may already be
	// out: what matters is that the batch ends quietly.
	g := newTestGetter(t, getConfig(t, getSegBytes, log.logger(slog.LevelInfo), r), GetOptions{Prefetch: 8})
	cs.reset()
	if err := g.Get(t.Context(), pg.SegmentName(1, 1, size), filepath.Join(wal, "RECOVERYXLOG")); err != nil {
		t.Fatal(err)
	}
	getCheck(t, filepath.Join(wal, "RECOVERYXLOG"), segs[pg.SegmentName(1, 1, size)])
	if files := getSpoolFiles(t, filepath.Join(wal, ".walferry", "prefetch"), getSegBytes); len(files) != 2 {
		t.Errorf("spool holds %q, want segments 2 and 3", files)
	}
	if n := cs.gets.Load(); n > 1+8 {
		t.Errorf("%d store gets", n)
	}
	if s := log.String(); s != "" {
		t.Errorf("the end of the archive must be quiet; logged:\n%s", s)
	}
}

func TestGetSpoolCorrupt(t *testing.T) {
	st, _ := teststore.FS(t)
	cs := &getCountingStore{Store: st}
	r := getRepo(t, cs, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 5, r)
	wal := getPGWal(t)
	spool := filepath.Join(wal, ".walferry", "prefetch")
	dest := filepath.Join(wal, "RECOVERYXLOG")
	var log getLog
	g := newTestGetter(t, getConfig(t, getSegBytes, log.logger(slog.LevelInfo), r), GetOptions{Prefetch: 4})
	if err := g.Get(t.Context(), pg.SegmentName(1, 1, size), dest); err != nil {
		t.Fatal(err)
	}
	files := getSpoolFiles(t, spool, getSegBytes)
	if len(files) != 4 {
		t.Fatalf("spool holds %q", files)
	}
	damage := []func(p string) error{
		func(p string) error { // flip a bit
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[12345] ^= 4
			return os.WriteFile(p, b, 0o640)
		},
		func(p string) error { return os.Truncate(p, getSegBytes-1) },
		func(p string) error { // right size, wrong content
			return os.WriteFile(p, make([]byte, getSegBytes), 0o640)
		},
	}
	for i, d := range damage {
		if err := d(filepath.Join(spool, files[i])); err != nil {
			t.Fatal(err)
		}
	}
	for i := 2; i <= 5; i++ {
		cs.reset()
		name := pg.SegmentName(1, pg.SegNo(i), size)
		if err := g.Get(t.Context(), name, dest); err != nil {
			t.Fatalf("Get %s: %v", name, err)
		}
		getCheck(t, dest, segs[name])
		wantGets := int64(1)
		if i == 5 {
			wantGets = 0 // intact
		}
		if n := cs.gets.Load(); n < wantGets || (wantGets == 0 && n != 0) {
			t.Errorf("Get %s: %d store gets, want %d", name, n, wantGets)
		}
	}
	if n := strings.Count(log.String(), "spool file failed verification"); n != 3 {
		t.Errorf("%d corrupt spool files reported, want 3:\n%s", n, log.String())
	}
	getNoTemps(t, wal, spool)
}

// TestGetConcurrentSharedSpool runs many Getters, one-shot and background,
// on one spool, asking for overlapping segments: every file they write is
// right and no call fails, whoever wins the race for a spool file.
func TestGetConcurrentSharedSpool(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	size := getSegSize(t, getSegBytes)
	const last = 24
	segs := getSegs(t, getSegBytes, 1, 1, last, r)
	spool := filepath.Join(t.TempDir(), "spool")
	var log getLog
	var wg sync.WaitGroup
	errs := make(chan error, 16*last)
	for w := range 16 {
		wg.Go(func() {
			wal := getPGWal(t)
			dest := filepath.Join(wal, "RECOVERYXLOG")
			g, err := NewGetter(getConfig(t, getSegBytes, log.logger(slog.LevelWarn), r),
				GetOptions{Prefetch: 1 + w%5, SpoolDir: spool, Background: w%2 == 1})
			if err != nil {
				errs <- err
				return
			}
			defer g.Close(context.Background())
			for i := 1 + w%8; i <= last; i++ {
				name := pg.SegmentName(1, pg.SegNo(i), size)
				if err := g.Get(t.Context(), name, dest); err != nil {
					errs <- fmt.Errorf("worker %d: Get %s: %w", w, name, err)
					return
				}
				got, err := os.ReadFile(dest)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, segs[name]) {
					errs <- fmt.Errorf("worker %d: %s: wrong content", w, name)
					return
				}
			}
			if err := g.Close(t.Context()); err != nil {
				errs <- err
			}
			for _, n := range getDirNames(t, wal) {
				if n != "RECOVERYXLOG" {
					errs <- fmt.Errorf("worker %d: pg_wal holds %s", w, n)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := log.String(); s != "" {
		t.Errorf("warnings:\n%s", s)
	}
	getNoTemps(t, spool)
}

// getBlockingStore serves the first part of every object, then blocks
// until the request's context ends.
type getBlockingStore struct {
	storage.Store
	after   int64
	reached chan struct{} // receives once per blocked read
}

func (s *getBlockingStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key)
	if err != nil || !strings.HasPrefix(key, repo.WALPrefix) {
		return rc, err
	}
	return &getBlockingReader{ctx: ctx, rc: rc, left: s.after, reached: s.reached}, nil
}

type getBlockingReader struct {
	ctx     context.Context
	rc      io.ReadCloser
	left    int64
	reached chan struct{}
	once    sync.Once
}

func (r *getBlockingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		r.once.Do(func() { r.reached <- struct{}{} })
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.rc.Read(p)
	r.left -= int64(n)
	return n, err
}

func (r *getBlockingReader) Close() error { return r.rc.Close() }

func TestGetCancel(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	size := getSegSize(t, getSegBytes)
	getSegs(t, getSegBytes, 1, 1, 6, r)
	bs := &getBlockingStore{Store: st, after: 100 << 10, reached: make(chan struct{}, 16)}
	br, err := repo.Open(t.Context(), bs, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, background := range []bool{false, true} {
		wal := getPGWal(t)
		dest := filepath.Join(wal, "RECOVERYXLOG")
		spool := filepath.Join(wal, ".walferry", "prefetch")
		g, err := NewGetter(getConfig(t, getSegBytes, nil, br), GetOptions{Prefetch: 4, Background: background})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- g.Get(ctx, pg.SegmentName(1, 1, size), dest) }()
		<-bs.reached // the requested segment is mid-download
		cancel()
		err = <-done
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("background=%v: Get: %v, want context.Canceled", background, err)
		}
		if err := g.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		for len(bs.reached) > 0 {
			<-bs.reached
		}
		if got := getDirNames(t, wal); len(got) > 1 || (len(got) == 1 && got[0] != ".walferry/") {
			t.Errorf("background=%v: pg_wal holds %q after a cancelled Get", background, got)
		}
		if got := getDirNames(t, spool); len(got) != 0 {
			t.Errorf("background=%v: spool holds %q after a cancelled Get", background, got)
		}
	}
}

// getFlakyStore fails the first fails Gets with a transient error.
type getFlakyStore struct {
	storage.Store
	fails atomic.Int64
}

func (s *getFlakyStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, repo.WALPrefix) && s.fails.Add(-1) >= 0 {
		return nil, storage.Retryable(fmt.Errorf("get %s: connection reset by peer", key))
	}
	return s.Store.Get(ctx, key)
}

func TestGetRetries(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 2, r)
	flaky := &getFlakyStore{Store: st}
	fr, err := repo.Open(t.Context(), flaky, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(getPGWal(t), "RECOVERYXLOG")
	name := pg.SegmentName(1, 1, size)

	flaky.fails.Store(3)
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, fr), GetOptions{Prefetch: 0, MaxRetryTime: 10 * time.Second})
	if err := g.Get(t.Context(), name, dest); err != nil {
		t.Fatalf("Get with 3 transient failures: %v", err)
	}
	getCheck(t, dest, segs[name])

	flaky.fails.Store(1 << 30)
	g = newTestGetter(t, getConfig(t, getSegBytes, nil, fr), GetOptions{Prefetch: 0, MaxRetryTime: 500 * time.Millisecond})
	start := time.Now()
	err = g.Get(t.Context(), pg.SegmentName(1, 2, size), dest)
	if err == nil || errors.Is(err, ErrNotArchived) || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("Get from a failing store: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v with MaxRetryTime 500ms", d)
	}
	getCheck(t, dest, segs[name]) // untouched
}

// getStallStore never answers reads of WAL objects until the context ends.
type getStallStore struct{ storage.Store }

func (s getStallStore) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, repo.WALPrefix) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Get(ctx, key)
}

func TestGetStalledStore(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	getSegs(t, getSegBytes, 1, 1, 1, r)
	sr, err := repo.Open(t.Context(), getStallStore{st}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := newTestGetter(t, getConfig(t, getSegBytes, nil, sr), GetOptions{MaxRetryTime: 300 * time.Millisecond})
	wal := getPGWal(t)
	start := time.Now()
	err = g.Get(t.Context(), pg.SegmentName(1, 1, getSegSize(t, getSegBytes)), filepath.Join(wal, "RECOVERYXLOG"))
	if !errors.Is(err, errStalled) || errors.Is(err, ErrNotArchived) {
		t.Fatalf("Get from a stalled store: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %v", d)
	}
	getNoTemps(t, wal)
}

func TestGetBackground(t *testing.T) {
	st, _ := teststore.FS(t)
	cs := &getCountingStore{Store: st}
	r := getRepo(t, cs, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 20, r)
	wal := getPGWal(t)
	spool := filepath.Join(wal, ".walferry", "prefetch")
	dest := filepath.Join(wal, "RECOVERYXLOG")
	g, err := NewGetter(getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 3, Background: true})
	if err != nil {
		t.Fatal(err)
	}
	cs.reset()
	for i := 1; i <= 20; i++ {
		name := pg.SegmentName(1, pg.SegNo(i), size)
		if err := g.Get(t.Context(), name, dest); err != nil {
			t.Fatalf("Get %s: %v", name, err)
		}
		getCheck(t, dest, segs[name])
		if files := getSpoolFiles(t, spool, getSegBytes); len(files) > 3 {
			t.Errorf("after %s the spool holds %d files: %q", name, len(files), files)
		}
	}
	// Each segment was downloaded once: the window follows the requests
	// and a request for a segment under way waits for it. Segments 21..23
	// are missing: each Get from 18 on asks for those in its window.
	if n := cs.gets.Load(); n < 20 || n > 26 {
		t.Errorf("%d store gets for 20 segments", n)
	}
	if err := g.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	getNoTemps(t, wal, spool)
	if err := g.Get(t.Context(), pg.SegmentName(1, 1, size), dest); err == nil {
		t.Error("Get after Close succeeded")
	}
}

// TestGetTimelineSwitch follows recovery_target_timeline = latest across
// a switch: history files are fetched directly, the old timeline's spool
// files are never served for the new timeline's names and are removed.
func TestGetTimelineSwitch(t *testing.T) {
	st, _ := teststore.FS(t)
	cs := &getCountingStore{Store: st}
	r := getRepo(t, cs, getSegBytes)
	size := getSegSize(t, getSegBytes)
	segs := getSegs(t, getSegBytes, 1, 1, 10, r)
	for name, data := range getSegs(t, getSegBytes, 2, 4, 10, r) {
		segs[name] = data
	}
	history := []byte("1\t0/4000028\tno recovery target specified\n")
	getPut(t, r, getSegBytes, "00000002.history", history)
	wal := getPGWal(t)
	spool := filepath.Join(wal, ".walferry", "prefetch")
	get := func(name, destName string) error {
		g := newTestGetter(t, getConfig(t, getSegBytes, nil, r), GetOptions{Prefetch: 4})
		defer g.Close(t.Context())
		return g.Get(t.Context(), name, filepath.Join(wal, destName))
	}
	seg := func(tli pg.TimeLineID, i int) string { return pg.SegmentName(tli, pg.SegNo(i), size) }

	for i := 1; i <= 2; i++ {
		if err := get(seg(1, i), "RECOVERYXLOG"); err != nil {
			t.Fatal(err)
		}
		getCheck(t, filepath.Join(wal, "RECOVERYXLOG"), segs[seg(1, i)])
	}
	// Spool: timeline 1, segments 3..5. PostgreSQL finds timeline 2.
	cs.reset()
	if err := get("00000002.history", "RECOVERYHISTORY"); err != nil {
		t.Fatal(err)
	}
	getCheck(t, filepath.Join(wal, "RECOVERYHISTORY"), history)
	if err := get("00000003.history", "RECOVERYHISTORY"); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("Get 00000003.history: %v", err)
	}
	if n := cs.gets.Load(); n != 2 {
		t.Errorf("history files took %d store gets, want 2 (no prefetch)", n)
	}
	if files := getSpoolFiles(t, spool, getSegBytes); len(files) != 3 {
		t.Errorf("spool holds %q, want timeline 1 segments 3..5", files)
	}
	// Recovery goes on on timeline 2 from the switch segment.
	for i := 4; i <= 10; i++ {
		if err := get(seg(2, i), "RECOVERYXLOG"); err != nil {
			t.Fatal(err)
		}
		getCheck(t, filepath.Join(wal, "RECOVERYXLOG"), segs[seg(2, i)])
		for _, f := range getSpoolFiles(t, spool, getSegBytes) {
			if strings.HasPrefix(f, "00000001") {
				t.Fatalf("after %s the spool still holds timeline 1's %s", seg(2, i), f)
			}
		}
	}
	if files := getDirNames(t, spool); len(files) != 0 {
		t.Errorf("spool holds %q at the end", files)
	}
}

// BenchmarkGet fetches 16 MiB lz4 segments from a filesystem repository
// one call at a time, a new Getter per call as with restore_command
// processes, with the default prefetch.
func BenchmarkGet(b *testing.B) {
	const segBytes = 16 << 20
	const n = 32
	st, _ := teststore.FS(b)
	r := getRepo(b, st, segBytes)
	size := getSegSize(b, segBytes)
	data := getWALLike(segBytes, 1)
	for i := 1; i <= n; i++ {
		getPut(b, r, segBytes, pg.SegmentName(1, pg.SegNo(i), size), data)
	}
	wal := getPGWal(b)
	dest := filepath.Join(wal, "RECOVERYXLOG")
	for _, prefetch := range []int{0, -1} {
		b.Run(fmt.Sprint("prefetch=", prefetch), func(b *testing.B) {
			b.SetBytes(segBytes)
			i := 0
			cpu0 := getCPUTime(b)
			for b.Loop() {
				// PostgreSQL removes the previous file first.
				if err := os.Remove(dest); err != nil && !errors.Is(err, os.ErrNotExist) {
					b.Fatal(err)
				}
				g, err := NewGetter(getConfig(b, segBytes, nil, r), GetOptions{Prefetch: prefetch})
				if err != nil {
					b.Fatal(err)
				}
				if err := g.Get(b.Context(), pg.SegmentName(1, pg.SegNo(i%n+1), size), dest); err != nil {
					b.Fatal(err)
				}
				if err := g.Close(b.Context()); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "segments/s")
			b.ReportMetric(float64((getCPUTime(b)-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/segment")
		})
	}
}

// getCPUTime returns the user and system CPU time the process used so far.
func getCPUTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A file missing from the repositories that could be opened is not "not
// archived" while another configured repository could not be read: that
// answer would end recovery early.
func TestGetMissingWithUnreachableRepository(t *testing.T) {
	st, _ := teststore.FS(t)
	r := getRepo(t, st, getSegBytes)
	getSegs(t, getSegBytes, 1, 1, 1, r)
	cfg := getConfig(t, getSegBytes, nil, r)
	outage := fmt.Errorf("s3://other/prefix: %w", storage.Retryable(errors.New("connection refused")))
	cfg.Unreachable = []error{outage}
	g := newTestGetter(t, cfg, GetOptions{Prefetch: 0})
	wal := getPGWal(t)
	size := getSegSize(t, getSegBytes)

	if err := g.Get(t.Context(), pg.SegmentName(1, 1, size), filepath.Join(wal, "RECOVERYXLOG")); err != nil {
		t.Fatalf("a segment the opened repository holds: %v", err)
	}
	missing := pg.SegmentName(1, 2, size)
	err := g.Get(t.Context(), missing, filepath.Join(wal, "RECOVERYXLOG"))
	if err == nil || errors.Is(err, ErrNotArchived) {
		t.Fatalf("Get %s: %v, want an error that is not ErrNotArchived", missing, err)
	}
	if !strings.Contains(err.Error(), "s3://other/prefix") || !strings.Contains(err.Error(), missing) {
		t.Errorf("the error does not name the segment and the unreachable repository: %v", err)
	}
	if k := failure.Of(err); k != failure.Transient {
		t.Errorf("kind %v, want Transient (retry later): %v", k, err)
	}
}
