package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
)

// TestBackupWrongDataDir is the reproduction of a silent data loss: with
// the connection on the running primary, backup-push --pgdata naming a
// copy of the same cluster (same system identifier, older data) used to
// exit 0 with a "complete" backup that restored to the copy's rows. The
// copy here is a pg_basebackup of the primary started once on its own and
// stopped (an old restore left on the host), then running (a standby's or
// a promoted copy's directory). backup-push must refuse both, naming both
// directories, and leave nothing backup-list shows; the right directory
// (through a symlink too) backs up the primary's rows, row for row.
func TestBackupWrongDataDir(t *testing.T) {
	s3 := needE2E(t)
	primary, url := archivingPrimary(t, kindFS, s3)
	psql(t, primary, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	psql(t, primary, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g")

	// The copy: same system identifier, 100,000 rows, stopped cleanly.
	cp := pgtest.New(t, pgtest.Options{})
	cloneInto(t, cp, primary.ConnString(), []string{"-X", "stream", "-c", "fast", "--no-sync"}, "archive_mode = off")
	cp.Start(t)
	if n := psql(t, cp, "SELECT count(*) FROM t"); n != "100000" {
		t.Fatalf("the copy has %s rows, want 100000", n)
	}
	cp.Stop(t, pgtest.StopFast)

	psql(t, primary, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(100001, 200000) g")
	want := tablesDigest(t, primary, "t")

	refused := func(state string) {
		t.Helper()
		r := wf(t, primary, "backup-push", "--repo", url, "--pgdata", cp.DataDir)
		if r.code == 0 {
			t.Fatalf("backup-push --pgdata <%s copy of the cluster> exited 0: %v\n%s", state, r, r.stdout)
		}
		if r.code != 7 || !strings.Contains(r.stderr, cp.DataDir) || !strings.Contains(r.stderr, primary.DataDir) {
			t.Errorf("backup-push --pgdata <%s copy>: %v; want exit 7 naming %s and the server's %s", state, r, cp.DataDir, primary.DataDir)
		}
		t.Logf("%s copy refused: %s", state, strings.TrimSpace(r.stderr))
		if ids := backupList(t, primary, url); len(ids) != 0 {
			t.Errorf("backup-list after the refused backup-push (%s copy): %v, want none", state, ids)
		}
	}
	refused("stopped")
	cp.Start(t)
	refused("running")
	cp.Stop(t, pgtest.StopFast)

	// The server's own directory, through a symlink: accepted, and the
	// restore has the primary's 200,000 rows.
	link := filepath.Join(primary.Dir, "pgdata-link")
	if err := os.Symlink(primary.DataDir, link); err != nil {
		t.Fatal(err)
	}
	mustWF(t, primary, "backup-push", "--repo", url, "--pgdata", link)
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 2*time.Minute)
	dst := newRestoreTarget(t)
	mustRestore(t, dst, url, "LATEST")
	dst.configure(t)
	dst.c.Start(t)
	waitPromoted(t, dst.c, 3*time.Minute)
	if got := tablesDigest(t, dst.c, "t"); got != want {
		t.Errorf("restored table differs from the primary's:\n got %s\nwant %s", got, want)
	}
}
