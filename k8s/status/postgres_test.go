package status

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
)

// collect runs FromPostgres against c into a fresh report.
func collect(t *testing.T, c *pgtest.Cluster) Report {
	t.Helper()
	r := New(time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := FromPostgres(ctx, c.Conn(t), &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// waitReport collects until ok says yes, or fails after a generous deadline.
func waitReport(t *testing.T, c *pgtest.Cluster, what string, ok func(Report) bool) Report {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		r := collect(t, c)
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited 90s for %s; last report: %+v %+v %+v", what, r, r.Replication, r.Archive)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func testPrimary(t *testing.T, conf ...string) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	return pgtest.Start(t, pgtest.Options{WALSegSizeMB: 1, Conf: append([]string{
		"wal_level = replica", "max_wal_senders = 5", "wal_keep_size = '64MB'", "wal_retrieve_retry_interval = '500ms'",
	}, conf...)})
}

func TestFromPostgresPrimaryFailingArchiveAndSlot(t *testing.T) {
	c := testPrimary(t, "archive_mode = on", "archive_command = 'false'")
	c.Exec(t, "SELECT pg_create_physical_replication_slot('gone_standby', true)")
	c.Exec(t, "CREATE TABLE t AS SELECT g, repeat('x', 100) AS v FROM generate_series(1, 30000) g")
	var switched string
	c.QueryRow(t, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&switched)

	r := waitReport(t, c, "the archiver to fail", func(r Report) bool { return r.Archive.FailedCount >= 1 })
	var sysID, version string
	c.QueryRow(t, "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_setting('server_version')").Scan(&sysID, &version)
	if r.Role != RolePrimary || r.Mode != ModeNone || r.Timeline != 1 || r.Replication != nil {
		t.Errorf("role %s mode %s timeline %d replication %v, want primary none 1 nil", r.Role, r.Mode, r.Timeline, r.Replication)
	}
	if !r.Postgres.Reachable || r.Postgres.SystemID != sysID || r.Postgres.Version != version {
		t.Errorf("postgres = %+v, want reachable, system %s, version %s", r.Postgres, sysID, version)
	}
	a := r.Archive
	if !a.Failing || a.LastArchived != "" || a.LastArchivedAt != nil || a.LastFailedAt == nil || a.ArchiveMode != "on" {
		t.Errorf("archive = %+v, want failing, nothing archived, archive_mode on", a)
	}
	// The archiver works oldest first: the first segment fails first.
	if a.LastFailed == "" || a.LastFailed > switched {
		t.Errorf("last failed %q, want a segment up to %s", a.LastFailed, switched)
	}
	firstReady := countReady(t, c)
	if a.Pending < 1 || a.Pending != firstReady {
		t.Errorf("pending %d, want the %d .ready files", a.Pending, firstReady)
	}

	if len(r.Slots) != 1 {
		t.Fatalf("slots = %+v, want gone_standby", r.Slots)
	}
	s := r.Slots[0]
	restart, err := pg.ParseLSN(s.RestartLSN)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := pg.ParseLSN(r.Postgres.CurrentLSN)
	if err != nil {
		t.Fatal(err)
	}
	// The batch's two statements see the same idle server: no WAL between.
	if s.Name != "gone_standby" || s.Where != "local" || s.Active || s.WALStatus != "reserved" ||
		s.RetainedBytes < 3<<20 || s.RetainedBytes > cur.Diff(restart)+1<<20 {
		t.Errorf("slot = %+v, want gone_standby local inactive reserved holding ~%d bytes (>= 3 MiB)", s, cur.Diff(restart))
	}

	Diagnose(&r, Limits{MaxSlotRetained: 1 << 20})
	if len(r.Problems) != 2 || r.Problems[0].Severity != Critical || !strings.Contains(r.Problems[0].What, a.LastFailed) ||
		r.Problems[1].Severity != Warning || !strings.Contains(r.Problems[1].What, "gone_standby") {
		t.Errorf("problems = %+v, want archiving failing on %s, then slot gone_standby", r.Problems, a.LastFailed)
	}
}

func countReady(t *testing.T, c *pgtest.Cluster) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.DataDir, "pg_wal", "archive_status"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".ready") {
			n++
		}
	}
	return n
}

func TestFromPostgresStandby(t *testing.T) {
	primary := testPrimary(t)
	primary.Exec(t, "CREATE TABLE t (id int)")
	standby := makeStandby(t, primary)

	r := waitReport(t, standby, "streaming", func(r Report) bool {
		return r.Mode == ModeStreaming && r.Replication != nil && r.Replication.ReceiveLSN != ""
	})
	if r.Role != RoleStandby || r.Timeline != 1 {
		t.Errorf("role %s timeline %d, want standby 1", r.Role, r.Timeline)
	}
	rep := r.Replication
	if want := "127.0.0.1:" + strconv.Itoa(primary.Port); rep.Upstream != want || rep.ReceiverStatus != "streaming" || rep.Slot != "" {
		t.Errorf("replication = %+v, want upstream %s, receiver streaming, no slot", rep, want)
	}

	primary.Exec(t, "INSERT INTO t SELECT generate_series(1, 1000)")
	var want string
	primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&want)
	wantLSN, _ := pg.ParseLSN(want)
	r = waitReport(t, standby, "replay of "+want, func(r Report) bool {
		got, err := pg.ParseLSN(r.Postgres.CurrentLSN)
		return err == nil && got >= wantLSN && r.Replication.ReplayLSN == r.Replication.ReceiveLSN
	})
	if rep := r.Replication; rep.LagBytes != 0 || rep.LagSeconds != 0 || rep.LastReplayAt == nil || r.Postgres.CurrentLSN != rep.ReplayLSN {
		t.Errorf("caught up: replication = %+v, want no lag and a last replay time", rep)
	}

	// Without its upstream the standby can only replay the archive.
	primary.Stop(t, pgtest.StopFast)
	r = waitReport(t, standby, "archive mode", func(r Report) bool { return r.Mode == ModeArchive })
	if r.Role != RoleStandby || r.Replication == nil || r.Replication.Upstream != "127.0.0.1:"+strconv.Itoa(primary.Port) {
		t.Errorf("without upstream: role %s replication %+v", r.Role, r.Replication)
	}

	// Promoted, it writes timeline 2 at once, before any checkpoint says so.
	standby.Exec(t, "SELECT pg_promote(true, 60)")
	r = collect(t, standby)
	if r.Role != RolePrimary || r.Timeline != 2 || r.Mode != ModeNone || r.Replication != nil {
		t.Errorf("promoted: role %s timeline %d mode %s, want primary 2 none", r.Role, r.Timeline, r.Mode)
	}
}

// makeStandby makes a streaming standby of primary with pg_basebackup -R.
func makeStandby(t *testing.T, primary *pgtest.Cluster) *pgtest.Cluster {
	t.Helper()
	s := pgtest.New(t, pgtest.Options{WALSegSizeMB: 1, Conf: []string{"wal_retrieve_retry_interval = '500ms'"}})
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
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	s.Start(t)
	return s
}
