package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// TestLineagePromotedCopy is scenario 6, the hole a new user found: a
// test copy restored with --target-immediate --target-action promote keeps the primary's
// archive_command, promotes onto timeline 2 and archives into the
// production repository; a later restore LATEST followed timeline 2 and
// lost what the real primary committed. With the lineage record (written
// by repo init), the copy's archive-push is refused (exit 9, in the
// server log, pg_stat_archiver counts the failures), nothing of timeline 2
// lands in the repository, and restore LATEST replays the real primary's
// rows, row for row.
func TestLineagePromotedCopy(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testLineagePromotedCopy)
}

func testLineagePromotedCopy(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary, url := archivingPrimary(t, kind, s3)
	r := openRepo(t, url)
	g, ok, err := r.Lineage(context.Background())
	if err != nil || !ok || g.Number != 1 || g.Reason != "init" || g.Timeline != 1 {
		t.Fatalf("%s: repo init recorded %+v (%v, %v); want generation 1 (init, timeline 1)", kind, g, ok, err)
	}
	psql(t, primary, "CREATE TABLE orders (id int PRIMARY KEY, site text NOT NULL, v text NOT NULL)")
	psql(t, primary, "INSERT INTO orders SELECT g, 'primary', md5(g::text) FROM generate_series(1, 2000) g")
	b := backupPush(t, primary, url)

	// The test copy, as a user makes it: restore, keep the restored
	// configuration (archive_command included), only give it its own port.
	cp := newRestoreTarget(t)
	mustRestore(t, cp, url, "LATEST", "--target-immediate", "--target-action", "promote")
	writeOwned(t, cp.c, filepath.Join(cp.c.DataDir, "pgtest.conf"), cp.conf["pgtest.conf"])
	if conf, _ := os.ReadFile(filepath.Join(cp.c.DataDir, "postgresql.conf")); !strings.Contains(string(conf), "archive-push") {
		t.Fatalf("%s: the restored postgresql.conf has no archive_command:\n%s", kind, conf)
	}
	cp.c.Start(t)
	waitPromoted(t, cp.c, 3*time.Minute)
	psql(t, cp.c, "INSERT INTO orders SELECT g, 'copy', md5(g::text) FROM generate_series(100001, 101000) g")
	psql(t, cp.c, "SELECT pg_switch_wal()")
	failed := waitArchiveFailures(t, cp.c, 2, 2*time.Minute)
	t.Logf("%s: the promoted copy's archiver: %s", kind, failed)
	log, err := os.ReadFile(cp.c.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "fenced by the lineage record") || !strings.Contains(string(log), "generation 1") ||
		!strings.Contains(string(log), "exit code 9") {
		t.Errorf("%s: the copy's server log does not hold walferry's refusal naming generation 1 (exit code 9):\n%s", kind, cp.c.LogTail(30))
	}

	// The real primary keeps committing and archiving.
	psql(t, primary, "INSERT INTO orders SELECT g, 'primary', md5(g::text) FROM generate_series(2001, 5000) g")
	psql(t, primary, "UPDATE orders SET v = 'after the copy' WHERE id % 7 = 0")
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 2*time.Minute)
	want := tablesDigest(t, primary, "orders")

	for _, name := range walNames(t, r) {
		if strings.HasPrefix(name, "00000002") {
			t.Errorf("%s: %s of the copy's timeline 2 landed in the repository", kind, name)
		}
	}
	cp.c.Stop(t, pgtest.StopFast)

	dst := newRestoreTarget(t)
	res := mustRestore(t, dst, url, "LATEST")
	dst.configure(t)
	dst.c.Start(t)
	waitPromoted(t, dst.c, 3*time.Minute)
	if got := tablesDigest(t, dst.c, "orders"); got != want {
		t.Errorf("%s: restore LATEST (%s) differs from the real primary:\n got %s\nwant %s", kind, res.Backup, got, want)
	}
	if n := psql(t, dst.c, "SELECT count(*) FROM orders WHERE site = 'copy'"); n != "0" {
		t.Errorf("%s: restore LATEST holds %s rows the copy wrote", kind, n)
	}
	if v := wf(t, primary, "verify", "--repo", url, b.ID); v.code != 0 {
		t.Errorf("%s: verify %s: %v\n%s", kind, b.ID, v, v.stdout)
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// waitArchiveFailures waits until the cluster's archiver failed at least
// n times and returns pg_stat_archiver's line.
func waitArchiveFailures(t *testing.T, c *pgtest.Cluster, n int, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := psql(t, c, "SELECT failed_count || ' failed, last ' || coalesce(last_failed_wal, '-') || ', ' || archived_count || ' archived' FROM pg_stat_archiver")
		if f, _, _ := strings.Cut(st, " "); f != "" {
			if got, _ := strconv.Atoi(f); got >= n {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d archive failures after %s: %s\nserver log:\n%s", n, timeout, st, c.LogTail(30))
		}
		time.Sleep(500 * time.Millisecond)
	}
}
