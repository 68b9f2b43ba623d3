package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/k8s/status"
)

// noSidecar is an address nothing listens on.
const noSidecar = "127.0.0.1:1"

func statusJSON(t *testing.T, wantCode int, args ...string) status.Report {
	t.Helper()
	code, out, errOut := run(t, append([]string{"status", "--json", "--sidecar", noSidecar}, args...)...)
	if code != wantCode {
		t.Fatalf("exit %d, want %d; stderr: %s", code, wantCode, errOut)
	}
	var r status.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("not a JSON report: %v\n%s", err, out)
	}
	return r
}

func clearPGEnv(t *testing.T) {
	for _, k := range []string{"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGDATA", "WALFERRY_PG_CONN", "WALFERRY_SIDECAR", "WALFERRY_REPO"} {
		t.Setenv(k, "")
	}
}

func TestStatusPostgresDown(t *testing.T) {
	clearPGEnv(t)
	a := newAdminRepo(t)
	a.backup(time.Now().Add(-time.Hour), nil, 3, map[string]string{"PG_VERSION": "15\n"})
	dir := t.TempDir()

	r := statusJSON(t, 0, "--pgdata", dir, "--repo", a.url)
	if r.Version != status.Version || r.Role != status.RoleDown || r.Mode != status.ModeNone || r.Postgres.Reachable ||
		!strings.Contains(r.Postgres.Error, "no postmaster.pid") || r.DataDir != dir {
		t.Errorf("report = %+v, want role down, naming the missing postmaster.pid", r)
	}
	if r.Backup.Count != 1 || r.Backup.LastType != "full" || !r.Backup.Checked || r.Backup.AgeSeconds < 3500 || r.Backup.AgeSeconds > 3700 {
		t.Errorf("backup = %+v, want the one full backup, stopped 59 minutes ago", r.Backup)
	}
	if r.Sidecar.Reachable || r.Sidecar.Address != noSidecar || r.Sidecar.Error == "" {
		t.Errorf("sidecar = %+v, want unreachable at %s", r.Sidecar, noSidecar)
	}
	if len(r.Problems) != 2 || r.Problems[0].Severity != status.Critical || !strings.Contains(r.Problems[0].Next, "pg_ctl start -D "+dir) ||
		r.Problems[1].Severity != status.Warning {
		t.Errorf("problems = %+v, want PostgreSQL down, then the sidecar", r.Problems)
	}

	code, out, errOut := run(t, "status", "--sidecar", noSidecar, "--pgdata", dir, "--fail-on", "critical")
	if code != 1 || !strings.Contains(out, "role:     down") || !strings.Contains(errOut, "the worst critical") {
		t.Errorf("--fail-on critical: exit %d\n%s\n%s", code, out, errOut)
	}
	if code, _, errOut := run(t, "status", "--fail-on", "fatal"); code != 2 || !strings.Contains(errOut, "want critical or warning") {
		t.Errorf("--fail-on fatal: exit %d, %s", code, errOut)
	}
}

func TestStatusPostgresUp(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	clearPGEnv(t)
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"archive_mode = on", "archive_command = 'true'"}})
	c.Exec(t, "SELECT pg_create_physical_replication_slot('site_b', true)")
	var sysID string
	c.QueryRow(t, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sysID)

	// Found through postmaster.pid: socket directory, port, owner.
	r := statusJSON(t, 0, "--pgdata", c.DataDir)
	if r.Role != status.RolePrimary || r.Timeline != 1 || r.Mode != status.ModeNone || !r.Postgres.Reachable ||
		r.Postgres.SystemID != sysID || r.Archive.ArchiveMode != "on" || r.Archive.Failing || r.Backup.Checked {
		t.Errorf("report = %+v", r)
	}
	if len(r.Slots) != 1 || r.Slots[0].Name != "site_b" || r.Slots[0].Where != "local" || r.Slots[0].WALStatus != "reserved" {
		t.Errorf("slots = %+v, want site_b", r.Slots)
	}
	if len(r.Problems) != 1 || r.Problems[0].Severity != status.Warning || !strings.Contains(r.Problems[0].What, "sidecar") {
		t.Errorf("problems = %+v, want only the sidecar's", r.Problems)
	}

	// --pg-conn, text form, and --fail-on warning trips on the sidecar.
	code, out, errOut := run(t, "status", "--sidecar", noSidecar, "--pg-conn", c.ConnString(), "--fail-on", "warning")
	if code != 1 || !strings.Contains(out, "role:     primary, timeline 1") || !strings.Contains(out, "site_b (local, inactive)") ||
		!strings.Contains(errOut, "the worst warning") {
		t.Errorf("--fail-on warning: exit %d\n%s\n%s", code, out, errOut)
	}
}
