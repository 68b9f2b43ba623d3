package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/k8s/role"
	"github.com/walferry/walferry/k8s/status"
)

// TestSidecarFencesOldPrimary is a failover as it happens: A, the primary,
// dies; B is promoted with promote --force, which fences A in the
// repository's lineage record; A comes back as a primary (its host
// restarted it), and its sidecar, seeing the record, stops it within the
// fence timeout and leaves standby.signal so it cannot start as a primary
// again; walferry status names the fence and the fix; walferry rejoin
// makes A a standby of B, and its status is clean again.
func TestSidecarFencesOldPrimary(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	ac, url, conf := rolePrimary(t, kindFS, s3, pgtest.Options{DataChecksums: true})
	psql(t, ac, "CREATE TABLE items (id int PRIMARY KEY, site text NOT NULL)")
	psql(t, ac, "INSERT INTO items SELECT g, 'a' FROM generate_series(1, 1000) g")
	mustWF(t, ac, "backup-push", "--repo", url)
	bc := roleStandby(t, ac, conf)
	a, b := roleSite{"a", ac}, roleSite{"b", bc}
	aSidecar := startSidecar(t, ac, url, "--pg-conn", ac.ConnString(), "--instance", "a", "--no-slot", "--fence-timeout", "10s")
	waitStatus(t, ac, aSidecar, "A primary, in the lineage record", func(r status.Report) bool {
		return r.Role == status.RolePrimary && r.Lineage != nil && !r.Lineage.Fenced
	})
	waitRows(t, bc, ac, "items", time.Minute)

	ac.Stop(t, pgtest.StopImmediate)
	pro := decode[role.PromoteResult](t, mustWF(t, bc, append([]string{"promote"}, roleArgs(b, url, "--force", "--no-backup")...)...))
	t.Logf("b promoted on timeline %d at %s", pro.Timeline, pro.SwitchLSN)
	psql(t, bc, "INSERT INTO items SELECT g, 'b' FROM generate_series(1001, 1500) g")

	// A's host starts it again, as the primary it was.
	// Not through pgtest's Start: the fence may stop it before anything
	// sees it ready.
	start := time.Now()
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	out, err := ac.Command(sctx, "pg_ctl", "start", "-w", "-D", ac.DataDir, "-l", ac.LogFile).CombinedOutput()
	scancel()
	t.Logf("A started again as a primary: %v %s", err, strings.TrimSpace(string(out)))
	// A client writes at once, and the segment is switched so A's
	// archiver tries to archive WAL past the fork before the fence lands
	// (errors ignored: the fence may be quicker).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	out, err = ac.Command(ctx, "psql", "-X", "-At", "-c", "INSERT INTO items VALUES (99999, 'a after the failover')", "-c", "SELECT pg_switch_wal()").CombinedOutput()
	cancel()
	t.Logf("a write on A right after its restart: %v %s", err, strings.TrimSpace(string(out)))
	pidFile := filepath.Join(ac.DataDir, "postmaster.pid")
	for {
		if _, err := os.Stat(pidFile); errors.Is(err, fs.ErrNotExist) {
			break
		}
		if time.Since(start) > 90*time.Second {
			t.Fatalf("A's sidecar did not stop the fenced primary in 90 s\n%s", readTail(aSidecar.log))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("A fenced: stopped by its sidecar %s after it came back as a primary", time.Since(start).Round(time.Millisecond))
	ac.NoticeStopped(t)
	if _, err := os.Stat(filepath.Join(ac.DataDir, "standby.signal")); err != nil {
		t.Errorf("the fenced primary has no standby.signal (it could start as a primary again): %v", err)
	}
	st := waitStatus(t, ac, aSidecar, "A fenced", func(r status.Report) bool { return r.Lineage != nil && r.Lineage.Fenced })
	if p := problemWith(st, "fenced by generation"); p == nil || p.Severity != status.Critical || !strings.Contains(p.Next, "rejoin") {
		t.Errorf("fenced status: problems %+v; want a critical 'fenced by generation N' naming walferry rejoin", st.Problems)
	}
	if !strings.Contains(readTail(aSidecar.log), "FENCED") {
		t.Errorf("A's sidecar log does not say it fenced the server:\n%s", readTail(aSidecar.log))
	}

	// Nothing of A's past the fork reached the repository: its archiver
	// ran between its start and the fence, and was refused.
	size, _ := pg.NewWALSegmentSize(16 << 20)
	for _, name := range walNames(t, openRepo(t, url)) {
		f, err := pg.ParseWALFileName(name, size)
		if err != nil || f.TLI != 1 || f.Kind != pg.KindSegment {
			continue
		}
		if end := f.StartLSN(size) + pg.LSN(size.Bytes()); end > pro.SwitchLSN {
			t.Errorf("the repository holds %s, timeline 1 past the fork at %s: the fenced primary's WAL landed", name, pro.SwitchLSN)
		}
	}
	if got := psql(t, bc, "SELECT count(*) FROM items"); got != "1500" {
		t.Errorf("B has %s rows; want its 1500", got)
	}

	restorePort := savePort(t, ac)
	rej := decode[role.RejoinResult](t, mustWF(t, ac, append([]string{"rejoin"}, roleArgs(a, url, "--source-conn", bc.ConnString())...)...))
	restorePort()
	t.Logf("a rejoined by %s: copied %d of %d bytes", rej.Method, rej.BytesCopied, rej.DataDirBytes)
	ac.Start(t)
	st = waitStatus(t, ac, aSidecar, "A a standby of B", func(r status.Report) bool {
		return r.Role == status.RoleStandby && r.Lineage != nil && !r.Lineage.Fenced
	})
	if len(st.Problems) != 0 {
		t.Logf("A's problems after the rejoin: %+v", st.Problems)
	}
	waitRows(t, ac, bc, "items", 2*time.Minute)
	if got := psql(t, ac, "SELECT count(*) FILTER (WHERE site = 'b') FROM items"); got != "500" {
		t.Errorf("A after the rejoin has %s of B's 500 rows", got)
	}
}

// TestPromoteRepositoryOnly is seed 002's way out: the standby site, fed
// only by the repository, is promoted when the primary site is lost; the
// new timeline has a backup within a minute, and a point-in-time restore
// to a moment after the promotion works from the repository alone.
func TestPromoteRepositoryOnly(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	a, url := archivingPrimary(t, kindFS, s3)
	psql(t, a, "CREATE TABLE items (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	psql(t, a, "INSERT INTO items (id) SELECT generate_series(1, 1000)")
	backupPush(t, a, url, "--pgdata", a.DataDir, "--pg-conn", a.ConnString())
	startSidecar(t, a, url, "--pg-conn", a.ConnString(), "--wal-receive", "--partial-interval", "1s", "--no-slot")

	b := newRestoreTarget(t)
	bootstrapSite(t, b, url, "--from", "repo", "--partial", "--no-slot")
	b.configure(t)
	// B archives into the same repository once it is the primary.
	b.c.AppendConf(t, "archive_mode = on", "archive_command = "+sqlQuote(shellQuote(walferryBin)+" archive-push --repo "+shellQuote(url)+" %p"))
	b.c.Start(t)
	psql(t, a, "INSERT INTO items (id) SELECT generate_series(1001, 2000)")
	waitRows(t, b.c, a, "items", 2*time.Minute)

	// Site A is lost.
	a.Stop(t, pgtest.StopImmediate)
	start := time.Now()
	pro := decode[role.PromoteResult](t, mustWF(t, b.c, "promote", "--repo", url, "--pgdata", b.c.DataDir, "--pg-conn", b.c.ConnString(),
		"--pg-bin", b.c.PGBin, "--instance", "site-b", "--force", "--json"))
	t.Logf("B promoted on timeline %d at %s in %s; backup %s (%s)", pro.Timeline, pro.SwitchLSN, time.Since(start).Round(time.Millisecond), pro.Backup, pro.BackupType)
	if pro.Backup == "" {
		t.Fatalf("promote took no backup: %+v", pro)
	}
	m := readManifest(t, url, pro.Backup)
	if m.Type != "incremental" {
		t.Errorf("the backup after the promotion is %s; want an incremental on the backup of timeline 1 (same system identifier, an ancestor timeline)", m.Type)
	}
	if m.Timeline != pro.Timeline || m.StopTime.Sub(start) > time.Minute {
		t.Errorf("backup %s: timeline %d, stopped %s after the promotion started; want timeline %d within a minute", m.ID, m.Timeline, m.StopTime.Sub(start), pro.Timeline)
	}

	// Rows committed on B after the promotion; a point in time between them.
	psql(t, b.c, "INSERT INTO items (id) SELECT generate_series(2001, 2100)")
	time.Sleep(1500 * time.Millisecond)
	target := psql(t, b.c, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
	time.Sleep(1500 * time.Millisecond)
	psql(t, b.c, "INSERT INTO items (id) SELECT generate_series(2101, 2200)")
	psql(t, b.c, "SELECT pg_switch_wal()")
	waitArchivedOn(t, b.c, 2*time.Minute)

	c := newRestoreTarget(t)
	// (Not mustRestore: B's postgresql.conf, in the backup, has its archive
	// settings after walferry's include line.)
	if r := restoreCmd(t, c, url, "LATEST", "--target-time", target, "--target-action", "promote"); r.code != 0 {
		t.Fatalf("restore to %s: %v", target, r)
	}
	c.configure(t)
	c.c.Start(t)
	waitPromoted(t, c.c, 2*time.Minute)
	if got := psql(t, c.c, "SELECT count(*) || ' ' || max(id) FROM items"); got != "2100 2100" {
		t.Errorf("point in time %s after the promotion, restored from the repository alone: %s rows/max; want 2100 2100", target, got)
	}
}

// waitArchivedOn waits until c's archiver has archived its last switched
// segment and failed nothing since.
func waitArchivedOn(t *testing.T, c *pgtest.Cluster, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := psql(t, c, "SELECT coalesce(last_archived_wal, '') || ' ' || pg_walfile_name(pg_current_wal_lsn()) FROM pg_stat_archiver")
		last, current, _ := strings.Cut(got, " ")
		if last != "" && last >= prevSegment(current) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("archiving did not catch up in %s: %s\n%s", timeout, got, c.LogTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// prevSegment is the name of the segment before name, on its timeline.
func prevSegment(name string) string {
	var tli, log, seg uint64
	fmt.Sscanf(name, "%08X%08X%08X", &tli, &log, &seg)
	if seg == 0 {
		log, seg = log-1, 0xFF
	} else {
		seg--
	}
	return fmt.Sprintf("%08X%08X%08X", tli, log, seg)
}
