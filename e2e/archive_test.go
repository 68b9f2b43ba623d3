package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

const segSize = 16 << 20

// Workload of TestArchiveReplay: pgbench -i at this scale, then pgbench
// rounds (with a CHECKPOINT every second, so most updates log full pages)
// until the WAL written since the base backup spans wantSegments segments.
const (
	pgbenchScale   = 50
	wantSegments   = 110 // the issue asks for at least 100
	minSegments    = 100
	workloadBudget = 4 * time.Minute
)

// TestArchiveReplay runs a primary whose archive_command is walferry
// archive-push (plus a plain cp of every file it archives, the reference
// copy), under pgbench until well over 100 segments are archived; checks
// that every archived file is in the repository and byte-identical after
// walferry archive-get; then replays all of it into a cluster restored from
// a base backup taken before the workload (restore_command = walferry
// archive-get) and compares the data with the primary's.
func TestArchiveReplay(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testArchiveReplay)
}

func testArchiveReplay(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary := pgtest.New(t, pgtest.Options{})
	url := newRepoURL(t, primary, kind, s3)
	copies := primary.MkdirOwned(t, "archived-copies")
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)

	archiveCommand := shellQuote(walferryBin) + " archive-push --repo " + shellQuote(url) +
		" %p && cp %p " + shellQuote(copies) + "/%f"
	primary.AppendConf(t,
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = "+sqlQuote(archiveCommand),
		"max_wal_size = 1GB",
		"checkpoint_timeout = 30s",
		"log_checkpoints = off",
	)
	primary.Start(t)

	// The restored cluster: a base backup taken before any workload, with
	// its own port and socket settings and restore_command; -X none, so
	// even the WAL the backup itself needs comes from the archive.
	restored := pgtest.New(t, pgtest.Options{})
	restoreCommand := shellQuote(walferryBin) + " archive-get --repo " + shellQuote(url) + " %f %p"
	baseBackup(t, primary, restored,
		"restore_command = "+sqlQuote(restoreCommand),
		"archive_mode = off",
		"hot_standby = on",
	)
	startLSN := backupStartLSN(t, restored)
	t.Logf("%s: base backup taken, start LSN %s", kind, startLSN)

	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(pgbenchScale))
	runWorkload(t, primary, startLSN, wantSegments*segSize, workloadBudget)
	want := pgbenchState(t, primary)

	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 5*time.Minute)
	workloadDone := time.Now()
	t.Logf("%s: workload and archiving up to %s took %s", kind, last, workloadDone.Sub(start).Round(time.Second))

	// Every file PostgreSQL archived is in the repository, and archive-get
	// returns exactly the bytes PostgreSQL handed to archive_command.
	archived := dirNames(t, copies)
	segments := filterSegments(archived)
	if len(segments) == 0 {
		t.Fatal("no segment was archived")
	}
	checkContiguous(t, segments)
	if segments[len(segments)-1] != last {
		t.Errorf("last archived segment is %s, want %s", segments[len(segments)-1], last)
	}
	first := walFileOf(t, primary, startLSN)
	since := 0
	for _, s := range segments {
		if s >= first {
			since++
		}
	}
	t.Logf("%s: PostgreSQL archived %d files: %d segments (%s .. %s), %d of them since the base backup, plus %v",
		kind, len(archived), len(segments), segments[0], last, since, nonSegments(archived))
	if since < minSegments {
		t.Errorf("only %d segments were written after the base backup, want at least %d", since, minSegments)
	}

	r := openRepo(t, url)
	inRepo := map[string]bool{}
	for _, n := range walNames(t, r) {
		inRepo[n] = true
	}
	for _, n := range archived {
		if !inRepo[n] {
			t.Errorf("%s was archived by PostgreSQL but is not in %s", n, url)
		}
		delete(inRepo, n)
	}
	if len(inRepo) > 0 {
		t.Logf("%s: the repository also holds files PostgreSQL did not archive (yet): %v", kind, keys(inRepo))
	}

	fetched := primary.MkdirOwned(t, "fetched")
	var slowest result
	getStart := time.Now()
	for _, n := range archived {
		dest := filepath.Join(fetched, n)
		res := wf(t, primary, "archive-get", "--repo", url, n, dest)
		if res.code != 0 {
			t.Errorf("archive-get %s: %v", n, res)
			continue
		}
		if res.dur > slowest.dur {
			slowest = res
		}
		if !sameFile(t, dest, filepath.Join(copies, n)) {
			t.Errorf("archive-get %s: the bytes differ from what PostgreSQL archived", n)
		}
		os.Remove(dest)
	}
	t.Logf("%s: %d archive-get calls compared byte for byte in %s (slowest %s)",
		kind, len(archived), time.Since(getStart).Round(time.Millisecond), slowest.dur.Round(time.Millisecond))
	if t.Failed() {
		return
	}

	// Replay everything into the restored cluster; archive recovery ends
	// when archive-get reports the next segment missing (exit 1), then the
	// cluster promotes itself.
	replayStart := time.Now()
	restored.Start(t)
	waitPromoted(t, restored, 8*time.Minute)
	got := pgbenchState(t, restored)
	logText, _ := os.ReadFile(restored.LogFile)
	restoredFiles := strings.Count(string(logText), "restored log file ")
	t.Logf("%s: restored cluster replayed %d files from the archive and promoted in %s",
		kind, restoredFiles, time.Since(replayStart).Round(time.Second))
	if got != want {
		t.Errorf("restored cluster differs from the primary:\n got %s\nwant %s", got, want)
	} else {
		t.Logf("%s: restored data equals the primary's: %s", kind, want)
	}
	if restoredFiles < since {
		t.Errorf("the restored cluster fetched %d files from the archive, want at least the %d segments since the backup", restoredFiles, since)
	}
	if strings.Contains(string(logText), "PANIC") {
		t.Errorf("the restored cluster's log has a PANIC")
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// baseBackup fills dst's data directory with pg_basebackup -X none of src,
// keeping dst's own postgresql.conf (port, socket directory) with extra
// lines appended, and adds recovery.signal.
func baseBackup(t *testing.T, src, dst *pgtest.Cluster, conf ...string) {
	t.Helper()
	cloneInto(t, dst, src.ConnString(), []string{"-X", "none", "-c", "fast", "--no-sync"}, conf...)
	writeOwned(t, dst, filepath.Join(dst.DataDir, "recovery.signal"), nil)
}

// cloneInto replaces dst's data directory with pg_basebackup -d conn and
// args, keeping dst's own postgresql.conf (with conf lines appended) and
// pgtest.conf (its port and socket directory).
func cloneInto(t *testing.T, dst *pgtest.Cluster, conn string, args []string, conf ...string) {
	t.Helper()
	saved := map[string][]byte{}
	for _, name := range []string{"postgresql.conf", "pgtest.conf"} {
		b, err := os.ReadFile(filepath.Join(dst.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		saved[name] = b
	}
	if err := os.RemoveAll(dst.DataDir); err != nil {
		t.Fatal(err)
	}
	pgRun(t, dst, 5*time.Minute, "pg_basebackup", append([]string{"-d", conn, "-D", dst.DataDir}, args...)...)
	saved["postgresql.conf"] = append(saved["postgresql.conf"], []byte(strings.Join(conf, "\n")+"\n")...)
	for name, b := range saved {
		writeOwned(t, dst, filepath.Join(dst.DataDir, name), b)
	}
}

// writeOwned writes a file owned like the cluster's directory.
func writeOwned(t *testing.T, c *pgtest.Cluster, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}
}

// backupStartLSN reads START WAL LOCATION from the backup_label.
func backupStartLSN(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.DataDir, "backup_label"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "START WAL LOCATION: "); ok {
			lsn, _, _ := strings.Cut(rest, " ")
			return lsn
		}
	}
	t.Fatalf("no START WAL LOCATION in backup_label:\n%s", b)
	return ""
}

// walFileOf returns the name of the segment holding lsn on the cluster's
// current timeline.
func walFileOf(t *testing.T, c *pgtest.Cluster, lsn string) string {
	t.Helper()
	return psql(t, c, "SELECT pg_walfile_name("+sqlQuote(lsn)+"::pg_lsn)")
}

// runWorkload runs pgbench rounds, with a CHECKPOINT every second so that
// most updates log full-page images, until the cluster has written
// wantBytes of WAL since fromLSN or the budget is spent.
func runWorkload(t *testing.T, c *pgtest.Cluster, fromLSN string, wantBytes int64, budget time.Duration) {
	t.Helper()
	deadline := time.Now().Add(budget)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := c.Conn(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil && ctx.Err() == nil {
				t.Errorf("checkpoint: %v", err)
				return
			}
		}
	}()
	defer func() { cancel(); <-done }()
	for round := 1; ; round++ {
		written, err := strconv.ParseInt(psql(t, c, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), "+sqlQuote(fromLSN)+")::bigint"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if written >= wantBytes {
			t.Logf("workload: %.1f segments of WAL after %d pgbench rounds", float64(written)/segSize, round-1)
			return
		}
		if time.Now().After(deadline) {
			t.Logf("workload: budget of %s spent with %.1f segments of WAL written", budget, float64(written)/segSize)
			return
		}
		pgRun(t, c, 2*time.Minute, "pgbench", "-n", "-c", "4", "-j", "2", "-T", "5")
	}
}

// pgbenchState summarizes the pgbench tables: row counts and balances.
func pgbenchState(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	return psql(t, c, `SELECT format('accounts=%s abalance=%s branches=%s bbalance=%s tellers=%s tbalance=%s history=%s delta=%s',
		(SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts),
		(SELECT count(*) FROM pgbench_branches), (SELECT sum(bbalance) FROM pgbench_branches),
		(SELECT count(*) FROM pgbench_tellers), (SELECT sum(tbalance) FROM pgbench_tellers),
		(SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history))`)
}

// waitArchived waits until pg_stat_archiver reports segment (or a later
// one) archived.
func waitArchived(t *testing.T, c *pgtest.Cluster, segment string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := psql(t, c, "SELECT coalesce(last_archived_wal, '') || ' ' || archived_count || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '-') FROM pg_stat_archiver")
		f := strings.Fields(st)
		if len(f) == 4 && f[0] != "" && f[0][:24] >= segment {
			t.Logf("archiver: last archived %s, %s archived, %s failed (last failed %s)", f[0], f[1], f[2], f[3])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not archived after %s; pg_stat_archiver: %s\nserver log:\n%s", segment, timeout, st, c.LogTail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPromoted waits until the cluster has left recovery.
func waitPromoted(t *testing.T, c *pgtest.Cluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if psql(t, c, "SELECT pg_is_in_recovery()") == "f" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still in recovery after %s; server log:\n%s", timeout, c.LogTail(40))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// dirNames lists the file names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func filterSegments(names []string) []string {
	var out []string
	for _, n := range names {
		if isSegmentName(n) {
			out = append(out, n)
		}
	}
	return out
}

func nonSegments(names []string) []string {
	var out []string
	for _, n := range names {
		if !isSegmentName(n) {
			out = append(out, n)
		}
	}
	return out
}

// checkContiguous fails t when sorted segment names of one timeline skip one.
func checkContiguous(t *testing.T, segments []string) {
	t.Helper()
	for i := 1; i < len(segments); i++ {
		if want := nextSegment(t, segments[i-1]); segments[i] != want {
			t.Errorf("archived segments jump from %s to %s (missing %s)", segments[i-1], segments[i], want)
		}
	}
}

// nextSegment returns the name of the segment after name (16 MiB segments).
func nextSegment(t *testing.T, name string) string {
	t.Helper()
	tli, err1 := strconv.ParseUint(name[:8], 16, 32)
	log, err2 := strconv.ParseUint(name[8:16], 16, 32)
	seg, err3 := strconv.ParseUint(name[16:], 16, 32)
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("bad segment name %q", name)
	}
	seg++
	if seg == 0x100 { // 4 GiB / 16 MiB segments per log id
		seg = 0
		log++
	}
	return fmt.Sprintf("%08X%08X%08X", tli, log, seg)
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
