//go:build faults

package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// The load trial's settings (docs/guarantees.md, "Load").
const (
	// loadDefaultDuration is how long pgbench writes unless
	// WALFERRY_FAULT_LOAD_DURATION says otherwise (CI uses the default).
	loadDefaultDuration = 10 * time.Minute
	// loadClients are pgbench's clients: enough to keep both cores of a
	// CI machine busy writing WAL.
	loadClients = 8
	// loadRows is the size of the table the load rewrites (about 120 MiB).
	loadRows = 100000
	// loadCatchUp bounds the archiver's catch-up after pgbench stops:
	// the bounded backlog at one segment limit each, with room to spare.
	loadCatchUp = 5 * time.Minute
	// loadBurst is how many times the daemon's window the backlog may
	// always reach for a moment, however slow the WAL: a checkpoint's
	// full-page writes multiply the WAL rate for a while, and on 2 cores
	// beside the rest of the suite the archiver and the daemon wait for a
	// CPU (runs of 2026-12-06: at most 13, 15 and, at 34.6 MB/s of WAL
	// beside the whole suite, 42).
	loadBurst = 6
	// loadMaxBehind is how far, in time, the archive may trail the WAL at
	// its worst moment: the recovery point of an archive-only standby.
	loadMaxBehind = time.Minute
)

// loadWindow is how many segments a daemon that keeps up holds in flight:
// PostgreSQL's archiver hands it the oldest, and it uploads that one and
// the next `ahead` in parallel (look-ahead, archive.DefaultAhead).
func loadWindow() int { return archive.DefaultAhead() + 1 }

// loadBacklogBound is the most .ready files the backlog may reach under
// load: a minute of WAL at the rate measured (loadMaxBehind), never less
// than loadBurst windows. It says how far behind the archive ever was; a
// daemon slower than the WAL is caught by the trend instead (see
// backlog.growing), since it crosses any bound given time.
func loadBacklogBound(rateMiBps float64, size pg.WALSegmentSize) int {
	perMinute := int(rateMiBps * loadMaxBehind.Seconds() * (1 << 20) / float64(size.Bytes()))
	return max(loadBurst*loadWindow(), perMinute)
}

func loadDuration(t *testing.T) time.Duration {
	t.Helper()
	s := os.Getenv("WALFERRY_FAULT_LOAD_DURATION")
	if s == "" {
		return loadDefaultDuration
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("WALFERRY_FAULT_LOAD_DURATION=%q: want a positive duration such as 10m", s)
	}
	return d
}

// TestLoad archives through the daemon and walferry-hook while pgbench
// writes as fast as this machine allows, sampling the archiver's backlog
// (.ready files) every second. At the end the WAL is switched, the
// archiver must catch up within loadCatchUp, pg_stat_archiver must show no
// failure, and every segment from the first to the last must be in the
// repository, decoding whole and equal to pg_wal's where pg_wal still
// holds it. The backlog must not trend up (backlog.growing) and its
// maximum must stay within loadBacklogBound.
func TestLoad(t *testing.T) {
	s3 := needServices(t)
	t.Parallel()
	dur := loadDuration(t)
	fault := "pgbench peak " + dur.String()
	const op = "daemon push"
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)

	c := pgtest.New(t, pgtest.Options{DataChecksums: true}) // 16 MiB segments, as users run it
	mustWF(t, c, "repo", "init", "--repo", url, "--pgdata", c.DataDir)
	sock := filepath.Join(c.MkdirOwned(t, "run"), "walferry.sock")
	runDaemon(t, c, sock, url)
	hook := filepath.Join(filepath.Dir(walferryBin), "walferry-hook")
	archiveCommand := "WALFERRY_SOCKET=" + shellQuote(sock) + " WALFERRY_REPO=" + shellQuote(url) + " " + shellQuote(hook) + " archive-push %p"
	c.AppendConf(t,
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = "+sqlQuote(archiveCommand),
		"max_wal_size = 1GB",
		"log_checkpoints = off",
	)
	c.Start(t)
	size := clusterSegSize(t, c)
	startLSN := queryLSN(t, c, "SELECT pg_current_wal_lsn()")
	first := pg.SegmentNameOf(1, startLSN, size)

	ready := filepath.Join(c.DataDir, "pg_wal", "archive_status")
	sampler := sampleBacklog(t, ready)
	began := time.Now()
	script := loadWorkload(t, c)
	bench := pgRunLimit(t, c, dur+2*time.Minute, "pgbench", "-n", "-M", "prepared", "-f", script,
		"-c", strconv.Itoa(loadClients), "-j", "2", "-T", strconv.Itoa(int(dur.Seconds())))
	elapsed := time.Since(began)
	endLSN := queryLSN(t, c, "SELECT pg_switch_wal()")
	last := pg.SegmentName(1, size.SegNoBefore(endLSN), size)
	backlog := sampler.stop()
	tps := benchTPS(bench.stdout)
	rate := float64(endLSN.Diff(startLSN)) / elapsed.Seconds() / (1 << 20)
	t.Logf("load: pgbench %s, %d clients, %s tps; WAL %s..%s, %.1f MB/s; backlog %s",
		dur, loadClients, tps, first, last, rate, backlog)

	caughtUp := time.Now()
	deadline := caughtUp.Add(loadCatchUp)
	for psql(t, c, "SELECT coalesce(last_archived_wal, '') >= "+sqlQuote(last)+" FROM pg_stat_archiver") != "t" {
		if time.Now().After(deadline) {
			record(t, fault, op, hang, fmt.Sprintf("the archiver did not reach %s within %s of pgbench's end (pg_stat_archiver: %s)",
				last, loadCatchUp, psql(t, c, "SELECT archived_count || ' archived, ' || failed_count || ' failed, last ' || coalesce(last_archived_wal, '-') FROM pg_stat_archiver")))
			return
		}
		time.Sleep(time.Second)
	}
	catchUp := time.Since(caughtUp)
	stats := strings.Split(psql(t, c, "SELECT archived_count, failed_count FROM pg_stat_archiver"), "|")
	archived, failed := stats[0], stats[1]

	segs := segmentRange(t, first, last, size)
	if p := checkWAL(t, openRepo(t, url), c, segs); p != "" {
		record(t, fault, op, dataLost, p)
		return
	}
	summary := fmt.Sprintf("%d segments %s..%s in the repository, equal to pg_wal's; %.1f MB/s of WAL (%s tps); %s archived, %s failed; backlog %s; caught up %s after pgbench",
		len(segs), first, last, rate, tps, archived, failed, backlog, catchUp.Round(time.Second))
	switch {
	case failed != "0":
		// The hook failed a call PostgreSQL then repeated: no data lost, but
		// under load without faults nothing should fail.
		record(t, fault, op, unclear, "archive_command failed under load: "+summary)
	case backlog.growing():
		record(t, fault, op, hang, "the backlog grew: the daemon falls behind the WAL: "+summary)
	case backlog.max > loadBacklogBound(rate, size):
		record(t, fault, op, hang, fmt.Sprintf("the backlog reached %d .ready, more than %s of WAL at %.1f MB/s (%d): %s",
			backlog.max, loadMaxBehind, rate, loadBacklogBound(rate, size), summary))
	default:
		record(t, fault, op, ok, summary)
	}
}

// loadWorkload creates the table the load rewrites and returns the path of
// pgbench's script: each transaction rewrites 20 rows of about 600 bytes
// of random hex at a random place, so the WAL is mostly new tuple images
// (plus full-page writes after each checkpoint), poorly compressible, and
// the table stays the same size (HOT updates in pages half empty).
func loadWorkload(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	psql(t, c, "CREATE TABLE wide (id int PRIMARY KEY, v text) WITH (fillfactor = 50)")
	psql(t, c, "INSERT INTO wide SELECT g, repeat(md5(g::text), 18) FROM generate_series(1, "+strconv.Itoa(loadRows)+") g")
	psql(t, c, "VACUUM ANALYZE wide")
	script := filepath.Join(c.Dir, "load.sql")
	writeOwned(t, c, script, []byte(fmt.Sprintf(`\set id random(1, %d)
UPDATE wide SET v = %s WHERE id BETWEEN :id AND :id + 19;
`, loadRows-19, strings.TrimSuffix(strings.Repeat("md5(random()::text) || ", 18), " || "))))
	return script
}

// runDaemon starts walferry daemon for c on sock, as the cluster's OS
// user, and stops it (SIGTERM, then SIGKILL of its process group) when t
// ends; its log is shown when t failed.
func runDaemon(t *testing.T, c *pgtest.Cluster, sock, url string) {
	t.Helper()
	cmd := c.Command(context.Background(), walferryBin, "daemon", "--socket", sock, "--pgdata", c.DataDir, "--repo", url)
	cmd.SysProcAttr.Setpgid = true
	log := processLog(t, cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start walferry daemon: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(archive.DefaultShutdownTimeout + 10*time.Second):
			t.Errorf("walferry daemon still running %s after SIGTERM", archive.DefaultShutdownTimeout+10*time.Second)
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("walferry daemon log:\n%s", lastLines(log(), 40))
		}
	})
	waitSocket(t, sock, 30*time.Second)
}

// processLog sends cmd's output to a file of t's and returns a function
// that reads what it wrote so far.
func processLog(t *testing.T, cmd *exec.Cmd) func() string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "log-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd.Stdout, cmd.Stderr = f, f
	return func() string {
		b, _ := os.ReadFile(f.Name())
		return string(b)
	}
}

// backlogSampler counts the .ready files of an archive_status directory
// every second.
type backlogSampler struct {
	quit   chan struct{}
	done   chan struct{}
	counts []int // one per second
}

func sampleBacklog(t *testing.T, dir string) *backlogSampler {
	t.Helper()
	s := &backlogSampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			if n, err := countReady(dir); err == nil {
				s.counts = append(s.counts, n)
			}
			select {
			case <-s.quit:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

// backlog sums up the samples: the maximum, the mean, the 99th percentile
// and the mean of the last minute (a backlog that grows shows there).
type backlog struct {
	max, p99, samples    int
	mean, lastMinuteMean float64
}

func (b backlog) String() string {
	return fmt.Sprintf("max %d .ready, p99 %d, mean %.1f, mean of the last minute %.1f, %d samples",
		b.max, b.p99, b.mean, b.lastMinuteMean, b.samples)
}

// growing reports a backlog that trends up: its last minute averages more
// than the whole run's mean plus one window, which a daemon that keeps up
// on average never shows (the whole suite's run: mean 9.0, last minute 2.0).
func (b backlog) growing() bool {
	return b.lastMinuteMean > b.mean+float64(loadWindow())
}

// stop ends the sampling and sums it up.
func (s *backlogSampler) stop() backlog {
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	<-s.done
	b := backlog{samples: len(s.counts)}
	if b.samples == 0 {
		return b
	}
	mean := func(c []int) float64 {
		sum := 0
		for _, n := range c {
			sum += n
		}
		return float64(sum) / float64(len(c))
	}
	sorted := slices.Sorted(slices.Values(s.counts))
	b.max, b.p99 = sorted[len(sorted)-1], sorted[len(sorted)*99/100]
	b.mean, b.lastMinuteMean = mean(s.counts), mean(s.counts[max(0, len(s.counts)-60):])
	return b
}

func countReady(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".ready") {
			n++
		}
	}
	return n, nil
}

// pgRunLimit runs a PostgreSQL client program of c (two attempts are not
// made: a failure fails t) and returns how it ended.
func pgRunLimit(t *testing.T, c *pgtest.Cluster, limit time.Duration, name string, args ...string) result {
	t.Helper()
	res := run(t, c.Command(context.Background(), name, args...), limit)
	if res.code != 0 || res.timedOut {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), res)
	}
	return res
}

// benchTPS is the tps pgbench printed, "?" when it printed none.
func benchTPS(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, "tps = "); ok {
			f, _, _ := strings.Cut(rest, " ")
			return f
		}
	}
	return "?"
}

// queryLSN runs a query returning one pg_lsn.
func queryLSN(t *testing.T, c *pgtest.Cluster, sql string) pg.LSN {
	t.Helper()
	l, err := pg.ParseLSN(psql(t, c, sql))
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return l
}

// clusterSegSize is c's WAL segment size.
func clusterSegSize(t *testing.T, c *pgtest.Cluster) pg.WALSegmentSize {
	t.Helper()
	b, err := strconv.ParseInt(psql(t, c, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	size, err := pg.NewWALSegmentSize(b)
	if err != nil {
		t.Fatal(err)
	}
	return size
}

// segmentRange is every segment name from first to last.
func segmentRange(t *testing.T, first, last string, size pg.WALSegmentSize) []string {
	t.Helper()
	var segs []string
	for n := first; n <= last; {
		segs = append(segs, n)
		next, err := pg.NextSegmentName(n, size)
		if err != nil {
			t.Fatal(err)
		}
		n = next
	}
	return segs
}
