package replication_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/pg/replication"
)

// testCluster starts PostgreSQL 15 ready for replication connections.
func testCluster(t *testing.T, opts pgtest.Options) *pgtest.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	opts.Conf = append([]string{"wal_level = replica", "max_wal_senders = 5", "wal_keep_size = '256MB'"}, opts.Conf...)
	return pgtest.Start(t, opts)
}

func connect(t *testing.T, c *pgtest.Cluster, extra ...string) *replication.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := replication.ConnectString(ctx, c.ConnString(extra...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestIdentify: the replication connection's view of the server agrees
// with the SQL one.
func TestIdentify(t *testing.T) {
	c := testCluster(t, pgtest.Options{WALSegSizeMB: 4, DataChecksums: true})
	ctx := context.Background()
	sys, err := connect(t, c).Identify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := pg.ClusterInfo(ctx, c.Conn(t))
	if err != nil {
		t.Fatal(err)
	}
	if sys.SystemID != want.SystemID || sys.Major != 15 || sys.VersionNum != want.VersionNum || sys.Version != want.Version ||
		sys.WALSegSize != 4<<20 || !sys.DataChecksums || sys.WALLogHints != want.WALLogHints ||
		sys.Timeline != 1 || sys.InRecovery || sys.BlockSize != pg.PageSize {
		t.Errorf("Identify = %+v\nClusterInfo = %+v", sys, want)
	}
	if !sys.XLogPos.IsValid() || sys.ArchiveMode != "off" {
		t.Errorf("XLogPos %s, archive_mode %q", sys.XLogPos, sys.ArchiveMode)
	}
}

// TestConnectErrors: failures name the server, never the password; a
// refusal by the server says what a replication user needs and keeps the
// server's error.
func TestConnectErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	ctx := context.Background()
	_, err = replication.ConnectString(ctx, "host=127.0.0.1 port="+strconv.Itoa(port)+" user=u password=sekrit-pw sslmode=disable connect_timeout=5")
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if msg := err.Error(); strings.Contains(msg, "sekrit-pw") || !strings.Contains(msg, "connect for replication to host=127.0.0.1 port="+strconv.Itoa(port)) {
		t.Errorf("error %q: want the target without the password", msg)
	}
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		t.Errorf("error %v does not wrap *pgconn.ConnectError", err)
	}
	_, err = replication.ConnectString(ctx, "postgres://u:sekrit-pw@127.0.0.1:bad/x")
	if err == nil || strings.Contains(err.Error(), "sekrit-pw") {
		t.Errorf("bad URL: %v", err)
	}

	c := testCluster(t, pgtest.Options{})
	c.Exec(t, "CREATE ROLE plain LOGIN")
	_, err = replication.ConnectString(ctx, c.ConnString("user=plain"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.Contains(err.Error(), "REPLICATION attribute") {
		t.Errorf("a user without REPLICATION: %v; want the server's error and the hint", err)
	}
}

// TestCreatePhysicalSlot: created once, then found as it is; a logical
// slot of the name is refused; bad names never reach the server.
func TestCreatePhysicalSlot(t *testing.T) {
	c := testCluster(t, pgtest.Options{Conf: []string{"wal_level = logical"}})
	ctx := context.Background()
	conn := connect(t, c)
	slot, created, err := conn.CreatePhysicalSlot(ctx, "bootstrap")
	if err != nil {
		t.Fatal(err)
	}
	if !created || slot.Type != "physical" || !slot.RestartLSN.IsValid() || slot.RestartTimeline != 1 {
		t.Errorf("new slot: %+v, created %v; want a physical slot reserving WAL", slot, created)
	}
	again, created, err := conn.CreatePhysicalSlot(ctx, "bootstrap")
	if err != nil || created || again != slot {
		t.Errorf("existing slot: %+v, created %v, %v; want %+v unchanged", again, created, err, slot)
	}
	var n int
	var restart string
	c.QueryRow(t, "SELECT count(*), min(restart_lsn)::text FROM pg_replication_slots WHERE slot_type = 'physical'").Scan(&n, &restart)
	if n != 1 || restart != slot.RestartLSN.String() {
		t.Errorf("pg_replication_slots: %d physical slots restarting at %s, want 1 at %s", n, restart, slot.RestartLSN)
	}
	missing, err := conn.ReadSlot(ctx, "nosuch")
	if err != nil || missing.Type != "" {
		t.Errorf("ReadSlot of a missing slot: %+v, %v", missing, err)
	}

	c.Exec(t, "SELECT pg_create_logical_replication_slot('logical1', 'test_decoding')")
	if _, _, err := conn.CreatePhysicalSlot(ctx, "logical1"); !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "logical") {
		t.Errorf("a logical slot's name: %v; want fs.ErrExist naming the kind", err)
	}
	if _, _, err := conn.CreatePhysicalSlot(ctx, "Bad-Name"); err == nil || !strings.Contains(err.Error(), "invalid replication slot name") {
		t.Errorf("bad name: %v", err)
	}
	// The connection is still usable after the refusals.
	if _, err := conn.Identify(ctx); err != nil {
		t.Errorf("Identify after the errors: %v", err)
	}
}
