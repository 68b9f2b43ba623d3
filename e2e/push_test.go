package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// walCluster starts a cluster that keeps every segment it completes, with
// a .ready file (archive_mode on, an empty archive_command: PostgreSQL
// queues segments but archives none), writes at least n segments of
// poorly compressible WAL, and stops it. It returns the cluster (stopped)
// and the completed segments, oldest first.
func walCluster(t *testing.T, n int) (*pgtest.Cluster, []string) {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = ''",
		"max_wal_size = 4GB",
	}})
	psql(t, c, "CREATE EXTENSION pgcrypto")
	psql(t, c, "CREATE TABLE noise (id bigint, a text)")
	for i := 0; ; i++ {
		written, err := strconv.ParseFloat(psql(t, c, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"), 64)
		if err != nil {
			t.Fatal(err)
		}
		if written >= float64(n+1)*segSize || i > 10*n {
			break
		}
		// Random hex text: cheap to generate, and WAL that takes a
		// while to compress and upload (so kills land mid-upload).
		psql(t, c, "INSERT INTO noise SELECT g, encode(gen_random_bytes(512), 'hex') FROM generate_series(1, 100000) g")
	}
	psql(t, c, "SELECT pg_switch_wal()")
	psql(t, c, "CHECKPOINT")
	c.Stop(t, pgtest.StopFast)
	var segs []string
	for _, name := range dirNames(t, filepath.Join(c.DataDir, "pg_wal", "archive_status")) {
		if seg, ok := strings.CutSuffix(name, ".ready"); ok && isSegmentName(seg) {
			segs = append(segs, seg)
		}
	}
	sort.Strings(segs)
	if len(segs) < n {
		t.Fatalf("the cluster completed %d segments, want %d", len(segs), n)
	}
	return c, segs
}

// statusDir is the cluster's pg_wal/archive_status.
func statusDir(c *pgtest.Cluster) string { return filepath.Join(c.DataDir, "pg_wal", "archive_status") }

// setReady gives exactly the named segments a .ready file (renaming the
// others' to .done, as PostgreSQL does after archiving).
func setReady(t *testing.T, c *pgtest.Cluster, all []string, ready map[string]bool) {
	t.Helper()
	for _, seg := range all {
		r := filepath.Join(statusDir(c), seg+".ready")
		d := filepath.Join(statusDir(c), seg+".done")
		if ready[seg] {
			if _, err := os.Stat(r); err != nil {
				writeOwned(t, c, r, nil)
			}
			os.Remove(d)
		} else if _, err := os.Stat(r); err == nil {
			if err := os.Rename(r, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestKillPush kills archive-push with SIGKILL at random points of its
// uploads, many times, to a filesystem repository and to MinIO. While it
// runs, a reader lists and decodes every object of the repository over and
// over: no object under a final name may ever be partial. After each kill
// the same segment is pushed again: that push must succeed, and
// archive-get must return the segment's exact bytes.
//
// The first 20 kills hit lone pushes (only the pushed segment is .ready,
// so the kill lands in its own upload); the last 10 hit pushes with two
// more unpushed segments .ready, so they land among parallel look-ahead
// uploads. Finally every remaining segment is pushed in order, with
// .ready files renamed to .done as PostgreSQL does, and every object in
// the repository is compared with its segment.
func TestKillPush(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testKillPush)
}

const (
	loneKills  = 20
	aheadKills = 10
	aheadReady = 2 // .ready segments besides the requested one in the look-ahead kills
)

func testKillPush(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	c, segs := walCluster(t, 1+loneKills+aheadKills*(1+aheadReady)+4)
	url := newRepoURL(t, c, kind, s3)
	mustWF(t, c, "repo", "init", "--repo", url, "--pgdata", c.DataDir)
	r := openRepo(t, url)
	t.Logf("%s: %d segments of WAL ready in %s", kind, len(segs), time.Since(start).Round(time.Millisecond))

	// The watcher lists the repository again and again and decodes every
	// object it sees, as soon as it sees it.
	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg       sync.WaitGroup
		passes   int
		watchErr error
		watcher  = newVerifier(r)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			if err := watcher.check(ctx); err != nil {
				if ctx.Err() == nil {
					watchErr = err
				}
				return
			}
			passes++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var once sync.Once
	stopWatcher := func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			if watchErr != nil {
				t.Errorf("a reader saw a bad object while archive-push was being killed: %v", watchErr)
			}
		})
	}
	defer stopWatcher()

	checker := newVerifier(r)
	verify := func(seg string) {
		t.Helper()
		// After a kill: the repository holds only whole objects.
		if err := checker.check(context.Background()); err != nil {
			t.Fatalf("after killing archive-push of %s: %v", seg, err)
		}
		res := wf(t, c, "archive-push", "--repo", url, "pg_wal/"+seg)
		if res.code != 0 {
			t.Fatalf("archive-push %s after a kill: %v", seg, res)
		}
		checkGet(t, c, url, seg)
	}

	// Calibrate: how long does one lone push take here?
	setReady(t, c, segs, map[string]bool{segs[0]: true})
	first := mustWF(t, c, "archive-push", "--repo", url, "pg_wal/"+segs[0])
	checkGet(t, c, url, segs[0])
	lone := first.dur
	t.Logf("%s: the first push took %s", kind, lone.Round(time.Millisecond))

	// Kills land at a uniformly random point of a push. A push's length is
	// estimated by the shortest seen so far (a push the kill came too late
	// for tells us its length), so nearly every kill lands in one.
	hits, i := 0, 1
	for k := 0; k < loneKills; k, i = k+1, i+1 {
		seg := segs[i]
		setReady(t, c, segs, map[string]bool{seg: true})
		killed, took := killPush(t, c, url, seg, randDuration(lone))
		if killed {
			hits++
		} else {
			lone = min(lone, took)
		}
		verify(seg)
		setReady(t, c, segs, nil)
	}
	t.Logf("%s: %d of %d lone pushes were killed before they finished", kind, hits, loneKills)
	loneHits := hits

	ahead := 2 * lone
	// With look-ahead: the requested segment and the next aheadReady are
	// .ready, none of them pushed yet, so the kill lands among parallel
	// uploads; the push after the kill completes all of them.
	for k := 0; k < aheadKills; k, i = k+1, i+1+aheadReady {
		seg := segs[i]
		ready := map[string]bool{}
		for _, s := range segs[i : i+1+aheadReady] {
			ready[s] = true
		}
		setReady(t, c, segs, ready)
		killed, took := killPush(t, c, url, seg, randDuration(ahead))
		if killed {
			hits++
		} else {
			ahead = min(ahead, took)
		}
		verify(seg)
		setReady(t, c, segs, nil)
	}
	t.Logf("%s: %d of %d pushes with look-ahead were killed before they finished", kind, hits-loneHits, aheadKills)
	if hits < (loneKills+aheadKills)/3 {
		t.Errorf("only %d of %d kills landed while archive-push was running; the test proves little", hits, loneKills+aheadKills)
	}

	// Everything else, in order, as PostgreSQL would after the crashes.
	rest := map[string]bool{}
	for _, seg := range segs[i:] {
		rest[seg] = true
	}
	setReady(t, c, segs, rest)
	for ; i < len(segs); i++ {
		res := wf(t, c, "archive-push", "--repo", url, "pg_wal/"+segs[i])
		if res.code != 0 {
			t.Fatalf("archive-push %s: %v", segs[i], res)
		}
		delete(rest, segs[i])
		setReady(t, c, segs, rest)
	}
	stopWatcher()
	if err := checker.check(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, seg := range segs {
		if want := fileSum(t, filepath.Join(c.DataDir, "pg_wal", seg)); checker.sums[seg] != want {
			t.Errorf("%s: repository holds sha256 %q, want %s", seg, checker.sums[seg], want)
		}
	}
	if kind == kindFS {
		if n := countTemp(t, strings.TrimPrefix(url, "file://")); n > 0 {
			t.Logf("%s: %d temporary files of killed uploads are left in the repository directory (invisible to readers)", kind, n)
		}
	}
	t.Logf("%s: %d kills, %d segments verified; the concurrent reader listed the repository %d times and decoded %d objects as they appeared; %s",
		kind, loneKills+aheadKills, len(segs), passes, watcher.decoded, time.Since(start).Round(time.Second))
}

// randDuration returns a uniformly random duration in [0, max).
func randDuration(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(max)))
}

// killPush starts archive-push of seg, sends it SIGKILL after delay and
// reports whether it was still running then; if not, how long it took. A
// push that finished first must have succeeded. Processes it leaves behind
// are an error.
func killPush(t *testing.T, c *pgtest.Cluster, url, seg string, delay time.Duration) (bool, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := hookCommand(ctx, c, "archive-push", "--repo", url, "pg_wal/"+seg)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL) // whatever it left behind
	select {
	case err := <-done:
		if code := exitStatus(t, cmd, err); code != 0 {
			t.Fatalf("archive-push %s (not killed): exit %d: %s", seg, code, stderr.String())
		}
		return false, time.Since(started)
	case <-time.After(delay):
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); errors.Is(err, os.ErrProcessDone) {
		// It finished between the timer and the signal.
		if code := exitStatus(t, cmd, <-done); code != 0 {
			t.Fatalf("archive-push %s (not killed): exit %d: %s", seg, code, stderr.String())
		}
		return false, time.Since(started)
	} else if err != nil {
		t.Fatal(err)
	}
	<-done
	if syscall.Kill(-pgid, 0) == nil {
		t.Errorf("archive-push %s left processes running after SIGKILL", seg)
	}
	return cmd.ProcessState.Sys().(syscall.WaitStatus).Signaled(), 0
}

// checkGet fetches name with archive-get and compares it with pg_wal's copy.
func checkGet(t *testing.T, c *pgtest.Cluster, url, name string) {
	t.Helper()
	dir := c.MkdirOwned(t, "fetched")
	dest := filepath.Join(dir, name)
	defer os.Remove(dest)
	res := wf(t, c, "archive-get", "--repo", url, name, dest)
	if res.code != 0 {
		t.Fatalf("archive-get %s: %v", name, res)
	}
	if !sameFile(t, dest, filepath.Join(c.DataDir, "pg_wal", name)) {
		t.Fatalf("archive-get %s: bytes differ from pg_wal/%s", name, name)
	}
}

// countTemp counts files under dir whose names mark them temporary.
func countTemp(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".") {
			n++
		}
		return nil
	})
	return n
}

// TestDuplicatePush pushes one segment twice with the same content (both
// succeed) and once with different content: that push fails with exit
// status 5, names both checksums, and overwrites nothing.
func TestDuplicatePush(t *testing.T) {
	s3 := needE2E(t)
	c, segs := walCluster(t, 2)
	for _, kind := range repoKinds {
		t.Run(string(kind), func(t *testing.T) {
			url := newRepoURL(t, c, kind, s3)
			mustWF(t, c, "repo", "init", "--repo", url, "--pgdata", c.DataDir)
			seg := segs[0]
			path := filepath.Join(c.DataDir, "pg_wal", seg)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { writeOwned(t, c, path, orig) })
			setReady(t, c, segs, map[string]bool{seg: true})

			mustWF(t, c, "archive-push", "--repo", url, "pg_wal/"+seg)
			if res := wf(t, c, "archive-push", "--repo", url, "pg_wal/"+seg); res.code != 0 {
				t.Errorf("second push of the same content: %v, want exit 0", res)
			}

			changed := append([]byte(nil), orig...)
			changed[len(changed)/2] ^= 0xff
			writeOwned(t, c, path, changed)
			res := wf(t, c, "archive-push", "--repo", url, "pg_wal/"+seg)
			t.Logf("%s: push of different content: %v", kind, res)
			if res.code != 5 {
				t.Errorf("push of different content under %s: exit %d, want 5", seg, res.code)
			}
			for _, want := range []string{hexSum(orig), hexSum(changed)} {
				if !strings.Contains(res.stderr, want) {
					t.Errorf("the error does not name checksum %s: %q", want, res.stderr)
				}
			}
			// Nothing was overwritten.
			writeOwned(t, c, path, orig)
			checkGet(t, c, url, seg)
			if res := wf(t, c, "archive-push", "--repo", url, "pg_wal/"+seg); res.code != 0 {
				t.Errorf("push of the original content after the conflict: %v, want exit 0", res)
			}
		})
	}
}

func hexSum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestGetMissing asks for files that are not archived: a segment past the
// end of the archive and the history file recovery asks for before it
// picks a new timeline. archive-get must exit 1 and write nothing, quickly:
// recovery calls it once per promotion and standby loops call it all the
// time. Durations are logged, and bounded only loosely (5 s, far above the
// expected tens of milliseconds, to catch a missing file being retried as
// if it were a transient failure); the benchmark measures the real cost.
func TestGetMissing(t *testing.T) {
	s3 := needE2E(t)
	c := pgtest.New(t, pgtest.Options{})
	for _, kind := range repoKinds {
		t.Run(string(kind), func(t *testing.T) {
			url := newRepoURL(t, c, kind, s3)
			mustWF(t, c, "repo", "init", "--repo", url, "--pgdata", c.DataDir)
			dir := c.MkdirOwned(t, "missing-"+string(kind))
			for _, name := range []string{"0000000100000000000000A7", "00000002.history"} {
				var durs []string
				for i := 0; i < 5; i++ {
					dest := filepath.Join(dir, "RECOVERYXLOG")
					res := wf(t, c, "archive-get", "--repo", url, name, dest)
					durs = append(durs, res.dur.Round(time.Millisecond).String())
					if res.code != 1 {
						t.Errorf("archive-get of missing %s: %v, want exit 1", name, res)
					}
					if res.dur > 5*time.Second {
						t.Errorf("archive-get of missing %s took %s: a missing file must not be retried", name, res.dur)
					}
					if _, err := os.Stat(dest); err == nil {
						t.Errorf("archive-get of missing %s created %s", name, dest)
					}
					if i == 0 {
						t.Logf("%s: archive-get %s: %v", kind, name, res)
					}
				}
				t.Logf("%s: archive-get of missing %s: exit 1 in %s", kind, name, strings.Join(durs, ", "))
			}
		})
	}
}
