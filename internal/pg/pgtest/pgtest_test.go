package pgtest_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
)

func TestStartQueryAndControlFile(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{})

	c.Exec(t, "CREATE TABLE ferry (id int PRIMARY KEY, name text)")
	c.Exec(t, "INSERT INTO ferry VALUES ($1, $2), ($3, $4)", 1, "walrus", 2, "orca")
	var got string
	c.QueryRow(t, "SELECT string_agg(name, ',' ORDER BY id) FROM ferry").Scan(&got)
	if want := "walrus,orca"; got != want {
		t.Errorf("query: got %q, want %q", got, want)
	}

	var sysID int64
	c.QueryRow(t, "SELECT system_identifier FROM pg_control_system()").Scan(&sysID)
	cd, err := pg.ReadControlData(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if cd.SystemIdentifier != uint64(sysID) {
		t.Errorf("system identifier: control file %d, pg_control_system() %d", cd.SystemIdentifier, sysID)
	}
	if cd.Major != 15 {
		t.Errorf("major: got %d, want 15", cd.Major)
	}
	if cd.State != pg.DBInProduction {
		t.Errorf("state of a running server: got %q, want %q", cd.State, pg.DBInProduction)
	}
}

func TestConnVariantsAndCommand(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"wal_level = logical"}})
	ctx := context.Background()

	var level string
	if err := c.Conn(t).QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level != "logical" {
		t.Errorf("Options.Conf: wal_level got %q, want logical", level)
	}

	// Replication connections are trusted over TCP and the socket.
	for _, cs := range []string{c.ConnString("replication=database"), c.SocketConnString("replication=database")} {
		conn, err := pg.Connect(ctx, cs)
		if err != nil {
			t.Fatalf("replication connection %q: %v", cs, err)
		}
		if _, err := conn.PgConn().Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
			t.Errorf("IDENTIFY_SYSTEM over %q: %v", cs, err)
		}
		conn.Close(ctx)
	}

	// Command runs client programs with the cluster's libpq environment.
	out, err := c.Command(ctx, "psql", "-XAtc", "SELECT current_user").CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != pgtest.Superuser {
		t.Errorf("psql current_user: got %q, want %q", got, pgtest.Superuser)
	}
}

func TestStopRestartAndOptions(t *testing.T) {
	t.Parallel()
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: 64, DataChecksums: true})
	c.Exec(t, "CREATE TABLE kept (v int)")
	c.Exec(t, "INSERT INTO kept VALUES (42)")

	c.Stop(t, pgtest.StopFast)
	if c.Running() {
		t.Fatal("Running after Stop")
	}
	cd, err := pg.ReadControlData(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if cd.State != pg.DBShutdowned {
		t.Errorf("state after fast stop: got %q, want %q", cd.State, pg.DBShutdowned)
	}
	if cd.WALSegmentSize != 64<<20 || !cd.DataChecksums() {
		t.Errorf("control file: segment size %d, checksums %v; want 64 MiB and on", cd.WALSegmentSize, cd.DataChecksums())
	}

	c.Start(t)
	var v int
	c.QueryRow(t, "SELECT v FROM kept").Scan(&v)
	if v != 42 {
		t.Errorf("after restart: got %d, want 42", v)
	}
	c.AppendConf(t, "max_wal_senders = 7")
	c.Restart(t)
	var senders string
	c.QueryRow(t, "SHOW max_wal_senders").Scan(&senders)
	if senders != "7" {
		t.Errorf("after AppendConf+Restart: max_wal_senders %q, want 7", senders)
	}

	archive := c.MkdirOwned(t, "archive")
	if fi, err := os.Stat(archive); err != nil || !fi.IsDir() {
		t.Errorf("MkdirOwned(%q): %v", archive, err)
	}
	if filepath.Dir(archive) != c.Dir {
		t.Errorf("MkdirOwned put %q outside %q", archive, c.Dir)
	}
}

func TestArchiveCommandRunsAsServerUser(t *testing.T) {
	t.Parallel()
	c := pgtest.New(t, pgtest.Options{})
	archive := c.MkdirOwned(t, "archive")
	c.AppendConf(t,
		"archive_mode = on",
		"archive_command = 'cp %p "+archive+"/%f'",
	)
	c.Start(t)
	var name string
	c.QueryRow(t, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&name)
	c.Exec(t, "SELECT pg_switch_wal()")
	c.Exec(t, "CHECKPOINT")
	// The archiver is asynchronous: wait for the switched segment.
	var archived bool
	for range 300 {
		c.QueryRow(t, "SELECT coalesce(last_archived_wal >= $1, false) FROM pg_stat_archiver", name).Scan(&archived)
		if archived {
			break
		}
		c.Exec(t, "SELECT pg_sleep(0.05)")
	}
	if !archived {
		t.Fatalf("segment %s never archived", name)
	}
	if _, err := os.Stat(filepath.Join(archive, name)); err != nil {
		t.Errorf("archived segment: %v", err)
	}
}
