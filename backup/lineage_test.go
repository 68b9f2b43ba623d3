package backup_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
)

// TestPushFenced: backup-push refuses, before any work, a server the
// lineage record does not name as primary (fenced on its timeline, or on
// another timeline), locally and remotely, with exit 9.
func TestPushFenced(t *testing.T) {
	c, r, _ := archivingCluster(t, pgtest.Options{})
	ctx := context.Background()
	g, ok, err := r.Lineage(ctx)
	if err != nil || !ok || g.Number != 1 || g.Reason != "init" || g.Timeline != 1 {
		t.Fatalf("repo init recorded %+v, %v, %v; want generation 1 on timeline 1", g, ok, err)
	}
	// The record's primary is backed up.
	if _, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir}); err != nil {
		t.Fatalf("backup of the record's primary: %v", err)
	}
	before, _, err := backup.IDs(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what, want string) {
		t.Helper()
		for _, remote := range []bool{false, true} {
			_, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir, Remote: remote})
			if !errors.Is(err, repo.ErrFenced) || failure.Of(err).ExitCode() != 9 || !strings.Contains(err.Error(), want) {
				t.Errorf("%s (remote %v): %v (kind %v); want fenced, exit 9, naming %q", what, remote, err, failure.Of(err), want)
			}
		}
		complete, incomplete, err := backup.IDs(ctx, r)
		if err != nil || len(complete) != len(before) || len(incomplete) != 0 {
			t.Errorf("%s: backups %v %v (%v); want only %v", what, complete, incomplete, err, before)
		}
	}

	var lsn string
	c.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	at, err := pg.ParseLSN(lsn)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := r.NextGeneration(ctx, 1, repo.Generation{Instance: "pg-1", Site: "b", Reason: "failover", Timeline: 1, FencedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	refused("fenced on its timeline", "generation 2")
	if _, err := r.NextGeneration(ctx, g2.Number, repo.Generation{Instance: "pg-1", Site: "b", Reason: "promote", Timeline: 2, TimelineStart: at}); err != nil {
		t.Fatal(err)
	}
	refused("another timeline is the primary's", "walferry rejoin")
}
