//go:build faults

package faults

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// crashTrials is how many times PostgreSQL crashes under a backup-push.
const crashTrials = 10

const crashFault = "PostgreSQL crash"

// startLoad writes into the items table over its own connections until
// the returned function is called, reconnecting after the server
// crashed. The rows it adds get ids from 10^6 up.
func startLoad(t *testing.T, c *pgtest.Cluster) (stop func()) {
	t.Helper()
	psql(t, c, "CREATE SEQUENCE load_ids START 1000000")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			if conn == nil {
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				conn, _ = pgx.Connect(cctx, c.ConnString())
				ccancel()
				if conn == nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
			}
			if _, err := conn.Exec(ctx, "INSERT INTO items SELECT nextval('load_ids'), md5(random()::text) FROM generate_series(1, 200)"); err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// namesPostgres reports whether a failure message says PostgreSQL failed.
func namesPostgres(stderr string) bool {
	for _, s := range []string{"PostgreSQL", "postgres", "pg:", "server"} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

// TestPostgresCrash crashes PostgreSQL (pg_ctl stop -m immediate) at a
// random point (the suite's seed) of a backup-push from a primary under
// write load, and restarts it after a random outage of up to 3 s, as a
// supervisor would. backup-push must succeed with a backup that verifies
// (the crash came after what it needed) or fail within its limit with
// exit 7 naming PostgreSQL and list nothing new; after the restart the
// next backup-push succeeds and verifies. At the end every listed backup
// verifies and the newest restores to the table's rows.
func TestPostgresCrash(t *testing.T) {
	s3 := needServices(t)
	t.Parallel()
	r := rng(t)
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	prim := archivingPrimary(t, url)
	fillItems(t, prim, 20000)
	stopLoad := startLoad(t, prim)
	defer stopLoad()
	took := mustWF(t, prim, "backup-push", "--repo", url, "--json").dur
	const op = "backup-push"
	for i := 0; i < crashTrials; i++ {
		before := backupList(t, prim, url)
		delay, outage := randDelay(r, took), randDelay(r, 3*time.Second)
		cmd := prim.Command(context.Background(), walferryBin, "backup-push", "--repo", url, "--json")
		cmd.Dir = prim.DataDir
		done := make(chan result, 1)
		go func() { done <- run(t, cmd, backupLimit) }()
		var res result
		ended, crashed := false, false
		select {
		case res = <-done:
			ended = true
		case <-time.After(delay):
			prim.Stop(t, pgtest.StopImmediate)
			crashed = true
			select {
			case res = <-done:
				ended = true
			case <-time.After(outage):
			}
			prim.Start(t)
		}
		if !ended {
			res = <-done
		}
		after := backupList(t, prim, url)
		what := fmt.Sprintf("crash after %s, %s down", delay.Round(time.Millisecond), outage.Round(time.Millisecond))
		if !crashed {
			what = "no crash (backup-push ended first)"
		}
		why, o := "", ok
		switch {
		case res.timedOut:
			why, o = res.String(), hang
		case res.code == 0:
			id := backupID(res.stdout)
			if !slices.Contains(after, id) {
				why, o = fmt.Sprintf("backup-push reported %q, backup-list shows %v", id, after), dataLost
			} else if v := wf(t, prim, backupLimit, "verify", "--repo", url, id); v.code != 0 {
				why, o = fmt.Sprintf("backup %s made across the crash does not verify: %v", id, v), dataLost
			} else {
				why = fmt.Sprintf("%s: backup %s verified", what, id)
			}
		case len(after) != len(before):
			why, o = fmt.Sprintf("a failed backup-push (%v) changed backup-list from %v to %v", res, before, after), dataLost
		case !crashed:
			why, o = "backup-push failed without a crash: "+res.String(), unclear
		case res.code == 7 && namesPostgres(res.stderr):
			why, o = fmt.Sprintf("%s: %v", what, res), clearError
		default:
			why, o = fmt.Sprintf("%s: want exit 7 naming PostgreSQL: %v", what, res), unclear
		}
		// The next backup-push, PostgreSQL up again, must succeed.
		if o == ok || o == clearError {
			again := wf(t, prim, backupLimit, "backup-push", "--repo", url, "--json")
			if again.code != 0 {
				why, o = "the backup-push after the crash failed: "+again.String(), unclear
			} else if v := wf(t, prim, backupLimit, "verify", "--repo", url, backupID(again.stdout)); v.code != 0 {
				why, o = "the backup-push after the crash does not verify: "+v.String(), dataLost
			} else {
				why += "; next backup-push ok, verified"
			}
		}
		record(t, crashFault, op, o, why)
	}
	stopLoad()
	if v := wf(t, prim, backupLimit, "verify", "--repo", url); v.code != 0 {
		record(t, crashFault, op, dataLost, "verify of every listed backup after the crashes: "+v.String())
	}
	// Row check: the newest backup and the WAL after it give the table's
	// rows, the load's included.
	want := digest(t, prim)
	waitArchived(t, prim)
	d := newRestoreTarget(t)
	ids := backupList(t, prim, url)
	if res := d.restore(t, backupLimit, nil, url, ids[len(ids)-1]); res.code != 0 {
		record(t, crashFault, op, dataLost, "the newest backup after the crashes does not restore: "+res.String())
	} else if p := d.check(t, want); p != "" {
		record(t, crashFault, op, dataLost, "the newest backup after the crashes: "+p)
	} else {
		t.Logf("the newest backup %s of %d restored: rows equal (%s)", ids[len(ids)-1], len(ids), want)
	}
}
