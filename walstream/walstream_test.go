package walstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
)

const testSegMB = 1

// testCluster starts PostgreSQL 15 with 1 MiB segments that stay in
// pg_wal long enough to be compared with what was streamed.
func testCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	return pgtest.Start(t, pgtest.Options{
		WALSegSizeMB: testSegMB,
		Conf:         []string{"wal_level = replica", "max_wal_senders = 5", "wal_keep_size = '256MB'"},
	})
}

func testSize(t *testing.T) pg.WALSegmentSize {
	s, err := pg.NewWALSegmentSize(testSegMB << 20)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testRepo makes a filesystem repository for c's cluster.
func testRepo(t *testing.T, c *pgtest.Cluster) *repo.Repo {
	t.Helper()
	return testRepoWith(t, c, func(st storage.Store) storage.Store { return st })
}

// testRepoWith is testRepo with the store wrapped by wrap once initialized.
func testRepoWith(t *testing.T, c *pgtest.Cluster, wrap func(storage.Store) storage.Store) *repo.Repo {
	t.Helper()
	st, _ := teststore.FS(t)
	return testRepoOn(t, c, st, wrap)
}

// testRepoOn initializes a repository for c's cluster in st.
func testRepoOn(t *testing.T, c *pgtest.Cluster, st storage.Store, wrap func(storage.Store) storage.Store) *repo.Repo {
	t.Helper()
	var sysID uint64
	c.QueryRow(t, "SELECT system_identifier::text::numeric FROM pg_control_system()").Scan(&sysID)
	ctx := context.Background()
	cl := repo.Cluster{SystemID: sysID, PGMajor: 15, WALSegmentSize: testSegMB << 20, Source: "test"}
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: cl, Compression: "lz4", CreatedBy: "walstream_test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, wrap(st), repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// logBuf collects the receiver's log for failure messages.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// running is a receiver started by start.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func testOptions(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, spool string, log io.Writer) Options {
	t.Helper()
	cfg, err := pg.ParseConnConfig(c.ConnString())
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		Repos: []*repo.Repo{rp}, SegmentSize: testSize(t), Conn: &cfg.Config,
		Slot: "walferry_test", SpoolDir: spool, PartialInterval: 300 * time.Millisecond,
		StatusInterval: time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func start(o Options) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, o) }()
	return r
}

// switchWAL writes some rows and switches segments n times; it returns the
// names of the segments completed.
func switchWAL(t *testing.T, c *pgtest.Cluster, n int) []string {
	t.Helper()
	var names []string
	for range n {
		c.Exec(t, "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g")
		var name string
		c.QueryRow(t, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&name)
		names = append(names, name)
	}
	return names
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, log *logBuf, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; receiver log:\n%s\ngoroutines:\n%s", d, what, log, goroutines())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// goroutines is every goroutine's stack, for a test that found the
// receiver stuck: where it waits is the first thing to know.
func goroutines() string {
	var b strings.Builder
	pprof.Lookup("goroutine").WriteTo(&b, 2)
	return b.String()
}

func stored(t *testing.T, rp *repo.Repo, name string) ([]byte, bool) {
	t.Helper()
	key, err := repo.WALKey(name, testSize(t))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := rp.Get(context.Background(), key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b, true
}

func serverWAL(t *testing.T, c *pgtest.Cluster, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkSegments waits for every name in the repository and compares it
// byte for byte with the server's pg_wal copy.
func checkSegments(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, log *logBuf, names []string) {
	t.Helper()
	for _, name := range names {
		var got []byte
		waitFor(t, name+" in the repository", 30*time.Second, log, func() bool {
			var ok bool
			got, ok = stored(t, rp, name)
			return ok
		})
		if want := serverWAL(t, c, name); !bytes.Equal(got, want) {
			t.Fatalf("%s: the repository's copy (%d bytes) differs from pg_wal's (%d bytes)", name, len(got), len(want))
		}
	}
}

// storedSegments lists the segment names of timeline 1 in the repository.
func storedSegments(t *testing.T, rp *repo.Repo) []pg.SegNo {
	t.Helper()
	var out []pg.SegNo
	err := rp.Store().List(context.Background(), repo.WALPrefix, func(oi storage.ObjectInfo) error {
		f, err := pg.ParseWALFileName(path.Base(oi.Key), testSize(t))
		if err == nil && f.Kind == pg.KindSegment {
			out = append(out, f.SegNo)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReceive(t *testing.T) {
	c := testCluster(t)
	testReceive(t, c, testRepo(t, c))
}

// TestReceiveS3 is TestReceive with the repository on MinIO.
func TestReceiveS3(t *testing.T) {
	st := teststore.S3(t) // first: skips without MinIO before starting PostgreSQL
	c := testCluster(t)
	keep := func(st storage.Store) storage.Store { return st }
	testReceive(t, c, testRepoOn(t, c, st, keep))
}

func testReceive(t *testing.T, c *pgtest.Cluster, rp *repo.Repo) {
	size := testSize(t)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	spool := filepath.Join(t.TempDir(), "spool")
	log := &logBuf{}

	// First run: the slot is created, segments stream in and are stored.
	recv := start(testOptions(t, c, rp, spool, log))
	waitFor(t, "the slot", 30*time.Second, log, func() bool {
		var n int
		c.QueryRow(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walferry_test' AND active").Scan(&n)
		return n == 1
	})
	first := switchWAL(t, c, 3)
	checkSegments(t, c, rp, log, first)

	// The flush position reported (the slot's restart point) reaches the
	// end of the stored segments.
	_, lastNo, err := pg.ParseSegmentName(first[len(first)-1], size)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the slot's restart_lsn to pass the stored segments", 30*time.Second, log, func() bool {
		var lsn string
		c.QueryRow(t, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'walferry_test'").Scan(&lsn)
		l, err := pg.ParseLSN(lsn)
		return err == nil && l >= size.StartLSN(lastNo+1)
	})

	// The unfinished segment appears as .partial within a few intervals,
	// holding what the server wrote.
	c.Exec(t, "INSERT INTO t SELECT g, 'partial' FROM generate_series(1, 500) g")
	var curName, flushLSN string
	c.QueryRow(t, "SELECT pg_walfile_name(pg_current_wal_flush_lsn()), pg_current_wal_flush_lsn()::text").Scan(&curName, &flushLSN)
	flushed, err := pg.ParseLSN(flushLSN)
	if err != nil {
		t.Fatal(err)
	}
	off := size.Offset(flushed)
	waitFor(t, curName+".partial with the server's bytes", 10*time.Second, log, func() bool {
		got, ok := stored(t, rp, curName+".partial")
		if !ok {
			return false
		}
		if int64(len(got)) != size.Bytes() {
			t.Fatalf("%s.partial is %d bytes, want a whole %d-byte segment", curName, len(got), size.Bytes())
		}
		return bytes.Equal(got[:off], serverWAL(t, c, curName)[:off])
	})
	recv.stop(t)

	// Second run on the same spool and repository resumes without a gap
	// or a conflict, and supersedes the partial with the whole segment.
	recv = start(testOptions(t, c, rp, spool, log))
	second := switchWAL(t, c, 2)
	checkSegments(t, c, rp, log, append([]string{curName}, second...))
	recv.stop(t)
	if strings.Contains(log.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", log)
	}

	segs := storedSegments(t, rp)
	for i := 1; i < len(segs); i++ {
		if segs[i] != segs[i-1]+1 {
			t.Fatalf("gap in the repository between segments %d and %d; log:\n%s", segs[i-1], segs[i], log)
		}
	}
	if _, ok := stored(t, rp, curName+".partial"); ok {
		t.Errorf("%s.partial is still stored after the whole segment", curName)
	}
	t.Logf("%d contiguous segments stored", len(segs))
}

func TestWrongCluster(t *testing.T) {
	c := testCluster(t)
	other := testCluster(t)
	rp := testRepo(t, other)
	o := testOptions(t, c, rp, t.TempDir(), io.Discard)
	o.MaxAttempts = 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := Run(ctx, o)
	if !errors.Is(err, repo.ErrWrongCluster) {
		t.Fatalf("Run against another cluster: got %v, want repo.ErrWrongCluster", err)
	}
	var n int
	c.QueryRow(t, "SELECT count(*) FROM pg_replication_slots").Scan(&n)
	if n != 0 {
		t.Errorf("a slot was created on the wrong cluster")
	}
}

func TestConflict(t *testing.T) {
	c := testCluster(t)
	rp := testRepo(t, c)
	size := testSize(t)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	log := &logBuf{}
	o := testOptions(t, c, rp, t.TempDir(), log)
	o.Slot = ""
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	waitFor(t, "streaming", 30*time.Second, log, func() bool {
		var n int
		c.QueryRow(t, "SELECT count(*) FROM pg_stat_replication").Scan(&n)
		return n == 1
	})
	// Another server archived different content under the name of the
	// segment being received.
	var cur string
	c.QueryRow(t, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&cur)
	key, err := repo.WALKey(cur, size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.PutIfAbsent(context.Background(), key, bytes.NewReader(make([]byte, size.Bytes()))); err != nil {
		t.Fatal(err)
	}
	switchWAL(t, c, 1)
	select {
	case err := <-done:
		if !errors.Is(err, archive.ErrConflict) {
			t.Fatalf("Run: got %v, want archive.ErrConflict; log:\n%s", err, log)
		}
	case <-ctx.Done():
		t.Fatalf("Run did not stop on a conflict; log:\n%s\ngoroutines:\n%s", log, goroutines())
	}
	if got, _ := stored(t, rp, cur); !bytes.Equal(got, make([]byte, size.Bytes())) {
		t.Errorf("the conflicting object was overwritten")
	}
}

// TestFenced: once the lineage record fences this server (another
// promoted at the point it is writing), the receiver stores nothing past
// that point and stops with the fence, permanently.
func TestFenced(t *testing.T) {
	c := testCluster(t)
	rp := testRepo(t, c)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	log := &logBuf{}
	o := testOptions(t, c, rp, t.TempDir(), log)
	o.Slot = ""
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	g1, err := rp.NextGeneration(ctx, 0, repo.Generation{Instance: "pg-0", Reason: "init", Timeline: 1})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o) }()
	waitFor(t, "streaming", 30*time.Second, log, func() bool {
		var n int
		c.QueryRow(t, "SELECT count(*) FROM pg_stat_replication").Scan(&n)
		return n == 1
	})
	var cur, lsn string
	c.QueryRow(t, "SELECT pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text").Scan(&cur, &lsn)
	at, err := pg.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.NextGeneration(ctx, g1.Number, repo.Generation{Instance: "pg-1", Site: "b", Reason: "failover", Timeline: 1, FencedAt: at}); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
	switchWAL(t, c, 1)
	select {
	case err := <-done:
		if !errors.Is(err, repo.ErrFenced) || !strings.Contains(err.Error(), "generation 2") {
			t.Fatalf("Run: got %v, want repo.ErrFenced naming generation 2; log:\n%s", err, log)
		}
	case <-ctx.Done():
		t.Fatalf("Run did not stop when fenced; log:\n%s\ngoroutines:\n%s", log, goroutines())
	}
	if _, ok := stored(t, rp, cur); ok {
		t.Errorf("%s, past the fence, was stored", cur)
	}
}

func TestPrimaryRestart(t *testing.T) {
	c := testCluster(t)
	rp := testRepo(t, c)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	log := &logBuf{}
	recv := start(testOptions(t, c, rp, filepath.Join(t.TempDir(), "spool"), log))
	before := switchWAL(t, c, 2)
	checkSegments(t, c, rp, log, before)

	c.Stop(t, pgtest.StopImmediate)
	time.Sleep(300 * time.Millisecond) // let the receiver notice and retry
	c.Start(t)
	after := switchWAL(t, c, 2)
	checkSegments(t, c, rp, log, after)
	recv.stop(t)
	if !strings.Contains(log.String(), "streaming failed; reconnecting") {
		t.Errorf("the receiver never lost its connection; log:\n%s", log)
	}
	segs := storedSegments(t, rp)
	for i := 1; i < len(segs); i++ {
		if segs[i] != segs[i-1]+1 {
			t.Fatalf("gap in the repository between segments %d and %d; log:\n%s", segs[i-1], segs[i], log)
		}
	}
}

// testStandby makes a streaming standby of primary with pg_basebackup.
func testStandby(t *testing.T, primary *pgtest.Cluster) *pgtest.Cluster {
	t.Helper()
	s := pgtest.New(t, pgtest.Options{WALSegSizeMB: testSegMB, Conf: []string{"wal_keep_size = '256MB'"}})
	conf, err := os.ReadFile(filepath.Join(s.DataDir, "pgtest.conf"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(s.DataDir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := s.Command(ctx, "pg_basebackup", "-D", s.DataDir, "-R", "-X", "stream", "-c", "fast",
		"-d", primary.ConnString()).CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	p := filepath.Join(s.DataDir, "pgtest.conf")
	if err := os.WriteFile(p, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	chownLike(t, p, fi)
	s.Start(t)
	return s
}

func TestTimelineSwitch(t *testing.T) {
	primary := testCluster(t)
	rp := testRepo(t, primary)
	size := testSize(t)
	primary.Exec(t, "CREATE TABLE t (id int, v text)")
	standby := testStandby(t, primary)
	log := &logBuf{}
	o := testOptions(t, standby, rp, filepath.Join(t.TempDir(), "spool"), log)
	o.Slot = "" // streaming from the standby, without a slot
	reg := prometheus.NewRegistry()
	o.Registry = reg
	recv := start(o)
	waitFor(t, "streaming from the standby", 30*time.Second, log, func() bool {
		var n int
		standby.QueryRow(t, "SELECT count(*) FROM pg_stat_replication").Scan(&n)
		return n == 1
	})
	old := switchWAL(t, primary, 2)
	checkSegments(t, standby, rp, log, old)

	// Promotion: timeline 2 starts in the middle of a segment.
	primary.Exec(t, "INSERT INTO t VALUES (0, 'before promotion')")
	var primaryLSN string
	primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&primaryLSN)
	waitFor(t, "the standby to replay", 30*time.Second, log, func() bool {
		var ok bool
		standby.QueryRow(t, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", primaryLSN).Scan(&ok)
		return ok
	})
	primary.Stop(t, pgtest.StopFast)
	var promoted bool
	standby.QueryRow(t, "SELECT pg_promote()").Scan(&promoted)
	if !promoted {
		t.Fatal("pg_promote failed")
	}
	var switchText string
	standby.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&switchText)
	newer := switchWAL(t, standby, 2)
	for _, n := range newer {
		if !strings.HasPrefix(n, "00000002") {
			t.Fatalf("segment %s after promotion is not on timeline 2", n)
		}
	}
	checkSegments(t, standby, rp, log, append([]string{"00000002.history"}, newer...))
	waitFor(t, "the timeline metric to follow to 2", 30*time.Second, log, func() bool {
		return gather(t, reg)["walferry_walstream_timeline"] == 2
	})
	recv.stop(t)

	// The history file and the old timeline's last, partial segment are
	// stored; timeline 2 is contiguous from the switch segment.
	hist, ok := stored(t, rp, "00000002.history")
	entries, err := pg.ParseHistory(bytes.NewReader(hist))
	if !ok || err != nil || len(entries) != 1 || entries[0].TLI != 1 {
		t.Fatalf("00000002.history: stored %v, entries %v, err %v", ok, entries, err)
	}
	switchSeg := size.SegNoOf(entries[0].SwitchLSN)
	if size.Offset(entries[0].SwitchLSN) != 0 {
		partial := pg.SegmentName(1, switchSeg, size) + ".partial"
		got, ok := stored(t, rp, partial)
		if !ok {
			t.Fatalf("%s is not stored; log:\n%s", partial, log)
		}
		off := size.Offset(entries[0].SwitchLSN)
		want := serverWAL(t, standby, pg.SegmentName(2, switchSeg, size))
		if !bytes.Equal(got[:off], want[:off]) {
			t.Errorf("%s differs from timeline 2's copy before the switch point", partial)
		}
	}
	if _, ok := stored(t, rp, pg.SegmentName(2, switchSeg, size)); !ok {
		t.Errorf("timeline 2's first segment %s is not stored", pg.SegmentName(2, switchSeg, size))
	}
}

// chownLike gives p the owner of fi (the server's OS user when root).
func chownLike(t *testing.T, p string, fi os.FileInfo) {
	t.Helper()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// flakyStore fails every write while down.
type flakyStore struct {
	storage.Store
	down atomic.Bool
}

var errDown = storage.Retryable(errors.New("store down (test)"))

func (f *flakyStore) Put(ctx context.Context, key string, r io.Reader) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.Put(ctx, key, r)
}

func (f *flakyStore) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if f.down.Load() {
		return errDown
	}
	return f.Store.(storage.ConditionalCreator).PutIfAbsent(ctx, key, r)
}

// TestStoreOutage: while the store refuses writes, completed segments
// wait in the spool and the slot keeps the server's WAL (nothing is
// reported flushed); a receiver stopped before it could upload them
// leaves them in the spool, and the next run uploads them: no gap.
func TestStoreOutage(t *testing.T) {
	c := testCluster(t)
	flaky := &flakyStore{}
	rp := testRepoWith(t, c, func(st storage.Store) storage.Store { flaky.Store = st; return flaky })
	size := testSize(t)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	spool := filepath.Join(t.TempDir(), "spool")
	log := &logBuf{}
	o := testOptions(t, c, rp, spool, log)
	o.ShutdownTimeout = 300 * time.Millisecond
	reg, health := prometheus.NewRegistry(), &Health{}
	o.Registry, o.Health = reg, health

	flaky.down.Store(true)
	recv := start(o)
	waitFor(t, "the slot", 30*time.Second, log, func() bool {
		var n int
		c.QueryRow(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walferry_test' AND active").Scan(&n)
		return n == 1
	})
	var slotStart string
	c.QueryRow(t, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'walferry_test'").Scan(&slotStart)
	down := switchWAL(t, c, 3)
	waitFor(t, "the segments in the spool", 30*time.Second, log, func() bool {
		for _, n := range down {
			if _, err := os.Stat(filepath.Join(spool, n)); err != nil {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second) // a status update or two
	var restart string
	c.QueryRow(t, "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'walferry_test'").Scan(&restart)
	if restart != slotStart {
		t.Fatalf("the slot moved from %s to %s while nothing could be stored", slotStart, restart)
	}
	// The metrics and the health check show the outage once an upload
	// attempt (with the pusher's own quick retries) has given up.
	waitFor(t, "a failed upload in the metrics and the health check", 30*time.Second, log, func() bool {
		return gather(t, reg)["walferry_walstream_upload_errors_total"] >= 1 && health.Check() != nil
	})
	m := gather(t, reg)
	if start, err := pg.ParseLSN(slotStart); err != nil || m["walferry_walstream_flushed_lsn"] != float64(start) {
		t.Errorf("flushed_lsn %v during the outage, want the slot's %s", pg.LSN(m["walferry_walstream_flushed_lsn"]), slotStart)
	}
	if m["walferry_walstream_upload_errors_total"] < 1 || m["walferry_walstream_uploaded_lsn"] != 0 ||
		m["walferry_walstream_segments_uploaded_total"] != 0 {
		t.Errorf("during the outage: upload_errors_total %v, uploaded_lsn %v, segments_uploaded_total %v; want >= 1, 0, 0",
			m["walferry_walstream_upload_errors_total"], m["walferry_walstream_uploaded_lsn"], m["walferry_walstream_segments_uploaded_total"])
	}
	if m["walferry_walstream_lag_bytes"] < float64(3*size.Bytes()) || m["walferry_walstream_lag_seconds"] < 1 {
		t.Errorf("during the outage: lag %v bytes, %v seconds; want at least the 3 segments waiting and 1s",
			m["walferry_walstream_lag_bytes"], m["walferry_walstream_lag_seconds"])
	}
	if err := health.Check(); err == nil || !strings.Contains(err.Error(), "the last upload failed") ||
		!strings.Contains(err.Error(), "store down (test)") {
		t.Errorf("Health during the outage: %v", err)
	}
	recv.stop(t)
	for _, n := range down {
		if _, ok := stored(t, rp, n); ok {
			t.Fatalf("%s stored while the store was down", n)
		}
	}

	flaky.down.Store(false)
	recv = start(o)
	up := switchWAL(t, c, 1)
	checkSegments(t, c, rp, log, append(down, up...))
	waitFor(t, "a healthy receiver once the store is back", 30*time.Second, log, func() bool {
		return health.Check() == nil && gather(t, reg)["walferry_walstream_segments_uploaded_total"] >= float64(len(down)+len(up))
	})
	recv.stop(t)
	segs := storedSegments(t, rp)
	for i := 1; i < len(segs); i++ {
		if segs[i] != segs[i-1]+1 {
			t.Fatalf("gap in the repository between segments %d and %d; log:\n%s", segs[i-1], segs[i], log)
		}
	}
	_, first, _ := pg.ParseSegmentName(down[0], size)
	if segs[0] > first {
		t.Fatalf("the repository starts at segment %d, after %s", segs[0], down[0])
	}
}

// TestPromotionWhileStopped: the receiver was stopped while its server
// (a standby) replayed more of timeline 1 and was promoted. Restarted on
// the promoted server, it first completes timeline 1 up to the switch
// point from what the repository holds, then follows to timeline 2.
func TestPromotionWhileStopped(t *testing.T) {
	primary := testCluster(t)
	rp := testRepo(t, primary)
	size := testSize(t)
	primary.Exec(t, "CREATE TABLE t (id int, v text)")
	standby := testStandby(t, primary)
	log := &logBuf{}
	o := testOptions(t, standby, rp, filepath.Join(t.TempDir(), "spool"), log)
	o.Slot = ""
	recv := start(o)
	waitFor(t, "streaming from the standby", 30*time.Second, log, func() bool {
		var n int
		standby.QueryRow(t, "SELECT count(*) FROM pg_stat_replication").Scan(&n)
		return n == 1
	})
	before := switchWAL(t, primary, 1)
	checkSegments(t, standby, rp, log, before)
	recv.stop(t)

	missed := switchWAL(t, primary, 2)
	primary.Exec(t, "INSERT INTO t VALUES (0, 'before promotion')")
	var primaryLSN string
	primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&primaryLSN)
	waitFor(t, "the standby to replay", 30*time.Second, log, func() bool {
		var ok bool
		standby.QueryRow(t, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", primaryLSN).Scan(&ok)
		return ok
	})
	primary.Stop(t, pgtest.StopFast)
	var promoted bool
	standby.QueryRow(t, "SELECT pg_promote()").Scan(&promoted)
	if !promoted {
		t.Fatal("pg_promote failed")
	}
	newer := switchWAL(t, standby, 1)

	recv = start(o)
	checkSegments(t, standby, rp, log, append(append(missed, "00000002.history"), newer...))
	recv.stop(t)

	hist, _ := stored(t, rp, "00000002.history")
	entries, err := pg.ParseHistory(bytes.NewReader(hist))
	if err != nil || len(entries) != 1 {
		t.Fatalf("00000002.history: %v %v", entries, err)
	}
	switchSeg := size.SegNoOf(entries[0].SwitchLSN)
	_, first, _ := pg.ParseSegmentName(before[0], size)
	for n := first; n < switchSeg; n++ {
		if _, ok := stored(t, rp, pg.SegmentName(1, n, size)); !ok {
			t.Errorf("gap on timeline 1: %s is not stored; log:\n%s", pg.SegmentName(1, n, size), log)
		}
	}
	if size.Offset(entries[0].SwitchLSN) != 0 {
		if _, ok := stored(t, rp, pg.SegmentName(1, switchSeg, size)+".partial"); !ok {
			t.Errorf("timeline 1's last segment is not stored as .partial; log:\n%s", log)
		}
	}
	_, last, _ := pg.ParseSegmentName(newer[len(newer)-1], size)
	for n := switchSeg; n <= last; n++ {
		if _, ok := stored(t, rp, pg.SegmentName(2, n, size)); !ok {
			t.Errorf("gap on timeline 2: %s is not stored", pg.SegmentName(2, n, size))
		}
	}
}

// TestSpoolBusy: a second receiver on the same spool directory is refused.
func TestSpoolBusy(t *testing.T) {
	root := t.TempDir()
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cl := repo.Cluster{SystemID: 42, PGMajor: 15, WALSegmentSize: testSegMB << 20, Source: "test"}
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: cl, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pg.ParseConnConfig("host=127.0.0.1 port=1 user=nobody sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Repos: []*repo.Repo{rp}, SegmentSize: testSize(t), Conn: &cfg.Config, SpoolDir: t.TempDir(),
		MinBackoff: 10 * time.Millisecond}
	first := start(o) // retries its unreachable server until stopped
	time.Sleep(200 * time.Millisecond)
	o.MaxAttempts = 1
	err = Run(ctx, o)
	first.stop(t)
	if !errors.Is(err, ErrSpoolBusy) {
		t.Fatalf("second receiver on the same spool: got %v, want ErrSpoolBusy", err)
	}
	// Once the first one stopped, the spool is free again.
	if err := Run(ctx, o); err == nil || errors.Is(err, ErrSpoolBusy) {
		t.Fatalf("receiver after the first stopped: got %v, want a connection failure", err)
	}
}

// TestPermanentErrors: the failures that stop the receiver instead of
// being retried forever.
func TestPermanentErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("push: %w", archive.ErrConflict), true},
		{fmt.Errorf("push: %w", repo.ErrWrongCluster), true},
		{fmt.Errorf("push: %w", repo.ErrFenced), true},
		{fmt.Errorf("compare: %w", codec.ErrCorrupt), true}, // a damaged archived copy
		{fmt.Errorf("put: %w", storage.Retryable(errors.New("connection reset"))), false},
		{errors.New("disk full"), false},
	} {
		if got := permanent(tc.err); got != tc.want {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
