package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
)

// The walstream end-to-end tests: walferry wal-receive, run as the server's
// OS user against real PostgreSQL 15 clusters, streams into MinIO while
// pgbench writes and a client commits numbered rows one per transaction,
// recording each acknowledgement. Then the site is lost (the receiver
// killed, the primary stopped with pg_ctl -m immediate), the receiver is
// killed and restarted, MinIO goes away for 30 seconds, or a standby is
// promoted; the repository alone must then restore every acknowledged
// commit (synchronous mode) or all but the last partial interval's
// (asynchronous mode), hold a gap-free WAL chain that walferry verify --wal
// accepts, and hold only the bytes the server wrote.
//
// The primaries run archive_mode = on with an empty archive_command:
// backup-push refuses a server with archive_mode off, and an empty
// archive_command archives nothing, so every WAL byte in the repository
// comes from wal-receive, and pg_wal keeps every segment (never archived,
// never recycled) to compare the repository with.
//
// TestWalstreamSyncLatency measures, without asserting, the commit latency
// synchronous mode adds, beside a synchronous physical standby.

const (
	wsScale       = 1     // pgbench -i -s
	wsPgbenchRate = "200" // pgbench -R: transactions per second, both clients together
	wsApp         = "walferry"
	// wsSmallSegMB is the WAL segment size (MiB) of the tests that need
	// many segments in little time from a small pgbench: kill -9, the
	// MinIO outage, promotion. The recovery point and latency tests keep
	// the default 16 MiB, as users run it.
	wsSmallSegMB = 1
	// wsAsyncInterval is wal-receive's default --partial-interval, the
	// bound on what asynchronous mode may lose.
	wsAsyncInterval = 10 * time.Second
	// wsSlack is what the recovery point may lag beyond one interval: the
	// upload of the partial itself and the status message, on a busy
	// shared machine.
	wsSlack = 5 * time.Second
)

// TestWalstreamRPO streams a primary under pgbench and a committing client
// into MinIO, then stops the primary with pg_ctl -m immediate. In "sync"
// and "async" the whole site is lost at once: the receiver is killed
// (SIGKILL) just before. In "async-receiver-survives" only the primary
// dies; the receiver is killed one partial interval later. The latest
// backup, restored with --use-partial and replayed to the end of the
// repository, must hold every commit the client saw acknowledged in
// synchronous mode; in asynchronous mode all but at most the last partial
// interval's (plus slack) when the site is lost, the gap measured and
// logged, and all but the last second's when the receiver survives (it
// uploads what it received after losing the server). The restored rows
// are then compared with the primary's own after its crash recovery.
func TestWalstreamRPO(t *testing.T) {
	s3 := needE2E(t)
	for _, m := range []wsRPOMode{
		{name: "sync", sync: true},
		{name: "async"},
		{name: "async-receiver-survives", survives: true},
	} {
		t.Run(m.name, func(t *testing.T) {
			testWalstreamRPO(t, m, s3)
		})
	}
}

type wsRPOMode struct {
	name     string
	sync     bool // --synchronous, synchronous_standby_names = 'walferry'
	survives bool // the receiver outlives the primary by one partial interval
}

func testWalstreamRPO(t *testing.T, m wsRPOMode, s3 testenv.S3Env) {
	start := time.Now()
	primary := wsPrimary(t, pgtest.Options{})
	url := newRepoURL(t, primary, kindS3, s3)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	spool := primary.MkdirOwned(t, "spool")
	var args []string
	if m.sync {
		args = append(args, "--synchronous") // --partial-interval 1s
	} // else the default --partial-interval, wsAsyncInterval
	recv := wsStartReceiver(t, primary, url, primary.ConnString(), spool, args...)
	wsWaitStreaming(t, primary, wsApp, false)

	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(wsScale))
	b := backupPush(t, primary, url)
	if m.sync {
		wsSetSyncNames(t, primary, wsApp)
	}
	stopBench := wsPgbench(t, primary)
	defer stopBench()
	pause := time.Duration(0)
	if !m.sync {
		pause = 10 * time.Millisecond // ~100 commits a second
	}
	cm := wsStartCommitter(t, primary, "ack", pause)
	load := 15 * time.Second
	if !m.sync && !m.survives {
		// At a random phase of the partial uploads' cycle: the recovery
		// point measured is one sample of what a site loss costs.
		load = 2*wsAsyncInterval + time.Duration(rand.Int64N(int64(wsAsyncInterval)))
	}
	time.Sleep(load)
	recv.checkRunning(t)
	var lost time.Time
	if m.survives {
		lost = time.Now()
		primary.Stop(t, pgtest.StopImmediate)
		time.Sleep(wsAsyncInterval + 3*time.Second)
		recv.checkRunning(t)
		recv.kill(t)
		t.Logf("%s: primary stopped (immediate); the receiver killed %s later", m.name, time.Since(lost).Round(time.Millisecond))
	} else {
		lost = wsDisaster(t, primary, recv)
	}
	cm.wait()
	lastAck, acks := cm.acked()
	t.Logf("%s: backup %s; %d commits acknowledged in %s under pgbench, the last %s the loss (then: %v); %s",
		m.name, b.ID, lastAck, load, wsSince(acks, lastAck, lost), cm.err, wsLatencyStats(cm.latencies()))
	if lastAck == 0 {
		t.Fatal("no commit was acknowledged")
	}

	dst, restoredMax := wsRecover(t, url, true)
	wsCompareAck(t, dst.c, primary, "ack", restoredMax, lastAck)
	missing := max(0, lastAck-restoredMax)
	span := wsSpanDuration(acks, restoredMax, lastAck)
	switch {
	case m.sync:
		if restoredMax < lastAck {
			t.Errorf("sync: the restore holds commits 1..%d, but %d were acknowledged: %d acknowledged commits lost (the last %s of them)",
				restoredMax, lastAck, missing, span.Round(time.Millisecond))
		} else {
			t.Logf("sync: the restore holds commits 1..%d: every one of the %d acknowledged, none lost", restoredMax, lastAck)
		}
	default:
		t.Logf("%s: RECOVERY POINT: the restore holds commits 1..%d of %d acknowledged: %d acknowledged commits lost, spanning %s of commits (the newest restored commit was acknowledged %s the loss); partial interval %s",
			m.name, restoredMax, lastAck, missing, span.Round(time.Millisecond), wsSince(acks, restoredMax, lost), wsAsyncInterval)
		if restoredMax == 0 {
			t.Errorf("%s: the restore holds no commit of the %d acknowledged over %s", m.name, lastAck, load)
		}
		bound := wsAsyncInterval + wsSlack
		if m.survives {
			// Only what the server had not sent when it died.
			bound = time.Second
		}
		if span > bound {
			t.Errorf("%s: %s of acknowledged commits lost, over the bound of %s", m.name, span.Round(time.Millisecond), bound)
		}
	}
	wsVerifyWAL(t, primary, url)
	segs := wsCheckAgainstServer(t, openRepo(t, url), primary, 1, b.StartWAL, "")
	t.Logf("%s: repository: %d contiguous segments %s..%s and the .partial after them, identical to the primary's pg_wal", m.name, len(segs), segs[0], segs[len(segs)-1])
	t.Logf("%s: total %s", m.name, time.Since(start).Round(time.Second))
}

// TestWalstreamKill9 kills the receiver with SIGKILL at random moments
// while pgbench writes, and restarts it on the same spool: the repository
// must end up with a contiguous chain from before the backup to the last
// segment, every segment byte for byte as the server wrote it (a restart
// that re-sent a segment with other bytes would have stopped with a
// conflict), walferry verify --wal clean, and a restore equal to the
// primary row for row.
func TestWalstreamKill9(t *testing.T) {
	s3 := needE2E(t)
	start := time.Now()
	primary := wsPrimary(t, pgtest.Options{WALSegSizeMB: wsSmallSegMB})
	url := newRepoURL(t, primary, kindS3, s3)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	spool := primary.MkdirOwned(t, "spool")
	args := []string{"--partial-interval", "1s"}
	recv := wsStartReceiver(t, primary, url, primary.ConnString(), spool, args...)
	wsWaitStreaming(t, primary, wsApp, false)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(wsScale))
	b := backupPush(t, primary, url)
	stopBench := wsPgbench(t, primary)
	defer stopBench()

	r := openRepo(t, url)
	for round := 1; round <= 6; round++ {
		// Wait for a new complete segment at least, so that each run
		// uploads segments and partials, then kill at a random moment;
		// every other round just after a segment switch, while the
		// segment is being received, spooled or uploaded.
		before := wsNewestSegment(t, r, 1)
		wsWaitFor(t, fmt.Sprintf("round %d: a segment after %s in the repository", round, before), 2*time.Minute, func() bool {
			return wsNewestSegment(t, r, 1) > before
		})
		how := "at a random moment"
		if round%2 == 0 {
			psql(t, primary, "SELECT pg_switch_wal()")
			time.Sleep(time.Duration(rand.Int64N(int64(50 * time.Millisecond))))
			how = "just after a segment switch"
		} else {
			time.Sleep(time.Duration(rand.Int64N(int64(3 * time.Second))))
		}
		recv.checkRunning(t)
		recv.kill(t)
		spooled := wsSpooled(t, spool)
		down := time.Duration(rand.Int64N(int64(3 * time.Second)))
		time.Sleep(down)
		t.Logf("round %d: receiver killed %s, after %s (spool: %v), restarted %s later",
			round, how, recv.ran().Round(time.Millisecond), spooled, down.Round(time.Millisecond))
		recv = wsStartReceiver(t, primary, url, primary.ConnString(), spool, args...)
	}
	time.Sleep(3 * time.Second)
	stopBench()
	want := tablesDigest(t, primary, pgbenchTables...)
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	wsWaitFor(t, last+" in the repository", 2*time.Minute, func() bool { return wsHas(t, r, last) })
	if code := recv.stop(t); code != 0 {
		t.Errorf("wal-receive after SIGTERM: exit %d, want 0", code)
	}
	for _, rv := range wsAllReceivers(t) {
		if strings.Contains(strings.ToLower(rv.log()), "conflict") {
			t.Errorf("a receiver reported a conflict:\n%s", rv.log())
		}
	}

	segs := wsCheckAgainstServer(t, r, primary, 1, b.StartWAL, last)
	t.Logf("repository: %d contiguous segments %s..%s, each identical to the primary's pg_wal", len(segs), segs[0], segs[len(segs)-1])
	wsVerifyWAL(t, primary, url)

	dst, _ := wsRecover(t, url, false)
	if got := tablesDigest(t, dst.c, pgbenchTables...); got != want {
		t.Errorf("restored pgbench tables differ from the primary's:\n got %s\nwant %s", got, want)
	}
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// TestWalstreamMinIOOutage stops a dedicated MinIO for 30 seconds while a
// synchronous receiver streams into it and pgbench writes (with
// synchronous_commit = local, so WAL keeps coming and segments pile up in
// the spool): the committing client's commits must wait meanwhile (none is
// acknowledged during the outage), resume once MinIO is back and the
// receiver caught up, and after a site loss the repository alone must
// restore every acknowledged commit, pass verify --wal, and hold every
// segment as the server wrote it. In "receiver-killed" the receiver is
// also killed (SIGKILL) halfway through the outage, with segments waiting
// in its spool, and restarted at once: started while MinIO is still down,
// it must wait for the store, as it does once running, rather than exit.
func TestWalstreamMinIOOutage(t *testing.T) {
	s3 := needE2E(t)
	for _, kill := range []bool{false, true} {
		name := "receiver-running"
		if kill {
			name = "receiver-killed"
		}
		t.Run(name, func(t *testing.T) { testWalstreamMinIOOutage(t, kill, s3) })
	}
}

func testWalstreamMinIOOutage(t *testing.T, kill bool, s3 testenv.S3Env) {
	start := time.Now()
	minio := wsStartMinIO(t, s3)
	primary := wsPrimary(t, pgtest.Options{WALSegSizeMB: wsSmallSegMB})
	url := minio.repoURL(t)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	spool := primary.MkdirOwned(t, "spool")
	recv := wsStartReceiver(t, primary, url, primary.ConnString(), spool, "--synchronous")
	wsWaitStreaming(t, primary, wsApp, false)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(wsScale))
	b := backupPush(t, primary, url)
	wsSetSyncNames(t, primary, wsApp)
	stopBench := wsPgbench(t, primary, "PGOPTIONS=-c synchronous_commit=local")
	defer stopBench()
	cm := wsStartCommitter(t, primary, "ack", 0)
	time.Sleep(8 * time.Second)

	recv.checkRunning(t)
	stopped := time.Now()
	ackedBefore, _ := cm.acked()
	minio.stop(t)
	var serverAtStop string
	primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&serverAtStop)
	t.Logf("MinIO stopped at commit %d, server WAL at %s", ackedBefore, serverAtStop)
	if kill {
		time.Sleep(15 * time.Second)
		recv.checkRunning(t)
		recv.kill(t)
		t.Logf("receiver killed and restarted with %d files waiting in its spool: %v", len(wsSpooled(t, spool)), wsSpooled(t, spool))
		recv = wsStartReceiver(t, primary, url, primary.ConnString(), spool, "--synchronous")
		time.Sleep(15 * time.Second)
		if recv.exited() {
			// Once running, the receiver rides out an outage of any
			// length; started during one, it must not give up either:
			// with --synchronous every commit then waits until something
			// restarts it. The test goes on as a supervisor would,
			// restarting it once MinIO is back.
			t.Errorf("wal-receive started while MinIO was down exited by itself with status %d after %s, instead of retrying until the store is back:\n%s",
				recv.code, recv.lifetime().Round(time.Millisecond), recv.log())
		}
	} else {
		time.Sleep(30 * time.Second)
	}
	spooled := wsSpooled(t, spool)
	var flushLSN, sentLSN, serverLSN string
	primary.QueryRow(t, `SELECT coalesce(max(flush_lsn)::text, '-'), coalesce(max(sent_lsn)::text, '-'), pg_current_wal_lsn()::text
		FROM pg_stat_replication WHERE application_name = $1`, wsApp).Scan(&flushLSN, &sentLSN, &serverLSN)
	ackedDuring, _ := cm.acked()
	restarted := time.Now()
	minio.start(t)
	if recv.exited() {
		recv = wsStartReceiver(t, primary, url, primary.ConnString(), spool, "--synchronous")
	}
	t.Logf("MinIO down for %s: commits acknowledged %d -> %d; %d segments waiting in the spool %v; receiver flushed %s, sent %s, server at %s",
		restarted.Sub(stopped).Round(time.Millisecond), ackedBefore, ackedDuring, len(spooled), spooled, flushLSN, sentLSN, serverLSN)
	if len(spooled) == 0 {
		t.Errorf("no segment waited in the spool during the outage: pgbench wrote too little WAL for the test to mean anything")
	}

	// Catching up: the commit that waited is acknowledged, the spool
	// empties, and the receiver's flush position passes where the server
	// was when MinIO came back.
	wsWaitFor(t, "a commit acknowledged after MinIO came back", 3*time.Minute, func() bool {
		n, _ := cm.acked()
		return n > ackedDuring
	})
	resumed := time.Since(restarted)
	wsWaitFor(t, "the receiver to catch up", 3*time.Minute, func() bool {
		var caught bool
		primary.QueryRow(t, `SELECT coalesce(bool_or(flush_lsn >= $1::text::pg_lsn), false) FROM pg_stat_replication WHERE application_name = $2`,
			serverLSN, wsApp).Scan(&caught)
		return caught && len(wsSpooled(t, spool)) == 0
	})
	caughtUp := time.Since(restarted)
	_, acks := cm.acked()
	during := 0
	var waited time.Duration
	for _, a := range acks {
		if a.at.After(stopped.Add(2*time.Second)) && a.at.Before(restarted) {
			during++
		}
		if a.start.Before(restarted) && a.at.After(restarted) {
			waited = max(waited, a.at.Sub(a.start))
		}
	}
	t.Logf("after MinIO came back: commits resumed in %s, the receiver caught up (spool empty, flush past %s) in %s; the commit in flight waited %s",
		resumed.Round(time.Millisecond), serverLSN, caughtUp.Round(time.Millisecond), waited.Round(time.Millisecond))
	if during > 0 {
		t.Errorf("%d commits were acknowledged while MinIO was down (between %s after it stopped and its restart)", during, 2*time.Second)
	}
	if waited == 0 {
		t.Errorf("no commit was waiting when MinIO came back")
	}
	var logs string
	for _, rv := range wsAllReceivers(t) {
		logs += rv.log()
	}
	if !strings.Contains(logs, "upload failed") && !strings.Contains(logs, "storage operation failed") {
		t.Errorf("the receivers logged no failed upload or storage operation during the outage:\n%s", logs)
	}

	time.Sleep(5 * time.Second)
	recv.checkRunning(t)
	lost := wsDisaster(t, primary, recv)
	cm.wait()
	lastAck, acks := cm.acked()
	t.Logf("backup %s; %d commits acknowledged, the last %s the receiver was killed; %s",
		b.ID, lastAck, wsSince(acks, lastAck, lost), wsLatencyStats(cm.latencies()))
	dst, restoredMax := wsRecover(t, url, true)
	wsCompareAck(t, dst.c, primary, "ack", restoredMax, lastAck)
	if restoredMax < lastAck {
		t.Errorf("the restore holds commits 1..%d, but %d were acknowledged: %d acknowledged commits lost", restoredMax, lastAck, lastAck-restoredMax)
	} else {
		t.Logf("the restore holds commits 1..%d: every one of the %d acknowledged", restoredMax, lastAck)
	}
	wsVerifyWAL(t, primary, url)
	segs := wsCheckAgainstServer(t, openRepo(t, url), primary, 1, b.StartWAL, "")
	t.Logf("repository: %d contiguous segments %s..%s, each identical to the primary's pg_wal", len(segs), segs[0], segs[len(segs)-1])
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// TestWalstreamPromotion streams a primary that has a streaming standby;
// the primary fails (pg_ctl -m immediate), the standby is promoted to
// timeline 2, and a receiver on the same repository and spool is pointed
// at it while pgbench writes there. In "caught-up" the standby replayed
// everything the primary wrote before it failed; in "under-load" pgbench
// was still writing when it failed; in "diverged" the standby was down
// while the primary wrote a few more segments, which the receiver stored:
// the repository then holds timeline 1 WAL past the switch point, a
// history the new primary does not share. The repository must hold
// timeline 1 (its switch segment whole or as .partial),
// wal/history/00000002.history, and timeline 2 from the switch on, each
// byte for byte as the servers wrote them; verify --wal must follow the
// switch, and the backup taken on timeline 1 must restore to the new
// primary's data, row for row.
func TestWalstreamPromotion(t *testing.T) {
	s3 := needE2E(t)
	for _, how := range []string{"caught-up", "under-load", "diverged"} {
		t.Run(how, func(t *testing.T) { testWalstreamPromotion(t, how, s3) })
	}
}

func testWalstreamPromotion(t *testing.T, how string, s3 testenv.S3Env) {
	start := time.Now()
	primary := wsPrimary(t, pgtest.Options{WALSegSizeMB: wsSmallSegMB})
	standby := wsStandby(t, primary, pgtest.Options{}, "standby1",
		"archive_mode = on", "archive_command = ''", "wal_keep_size = '1GB'", "log_checkpoints = off")
	url := newRepoURL(t, primary, kindS3, s3)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	spool := primary.MkdirOwned(t, "spool")
	args := []string{"--partial-interval", "1s"}
	recv := wsStartReceiver(t, primary, url, primary.ConnString(), spool, args...)
	wsWaitStreaming(t, primary, wsApp, false)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(wsScale))
	b := backupPush(t, primary, url)
	stopBench := wsPgbench(t, primary)
	time.Sleep(8 * time.Second)

	// The failure: the primary stops dead, under load or once the standby
	// replayed everything; the standby is promoted once it replayed what
	// it received.
	var endLSN string
	switch how {
	case "diverged":
		standby.Stop(t, pgtest.StopFast)
		r := openRepo(t, url)
		from := wsNewestSegment(t, r, 1)
		wsWaitFor(t, "two segments past "+from+" in the repository", 2*time.Minute, func() bool {
			n := wsNewestSegment(t, r, 1)
			return n > from && wsPrevSegment(t, r, n) > from
		})
		primary.Stop(t, pgtest.StopImmediate)
		stopBench()
		standby.Start(t)
		standby.QueryRow(t, "SELECT pg_last_wal_replay_lsn()::text").Scan(&endLSN)
	case "under-load":
		primary.Stop(t, pgtest.StopImmediate)
		stopBench()
		prev := ""
		wsWaitFor(t, "the standby to replay what it received", 2*time.Minute, func() bool {
			var cur string
			standby.QueryRow(t, "SELECT pg_last_wal_receive_lsn()::text || ' ' || pg_last_wal_replay_lsn()::text").Scan(&cur)
			f := strings.Fields(cur)
			done := len(f) == 2 && f[0] == f[1] && cur == prev
			prev = cur
			return done
		})
		endLSN = strings.Fields(prev)[1]
	default:
		stopBench()
		primary.QueryRow(t, "SELECT pg_current_wal_lsn()::text").Scan(&endLSN)
		wsWaitFor(t, "the standby to replay "+endLSN, 2*time.Minute, func() bool {
			var ok bool
			standby.QueryRow(t, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", endLSN).Scan(&ok)
			return ok
		})
		primary.Stop(t, pgtest.StopImmediate)
	}
	if code := recv.stop(t); code != 0 {
		t.Errorf("wal-receive of the failed primary after SIGTERM: exit %d, want 0", code)
	}
	var promoted bool
	standby.QueryRow(t, "SELECT pg_promote(true, 60)").Scan(&promoted)
	if !promoted {
		t.Fatal("pg_promote failed")
	}
	var seg string
	standby.QueryRow(t, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg)
	t.Logf("primary stopped; standby promoted after replaying up to %s, now writing %s", endLSN, seg)
	recordPromotion(t, url, standby, endLSN)

	// The receiver, pointed at the new primary.
	recv = wsStartReceiver(t, standby, url, standby.ConnString(), spool, args...)
	wsWaitStreaming(t, standby, wsApp, false)
	stopBench = wsPgbench(t, standby)
	time.Sleep(8 * time.Second)
	stopBench()
	want := tablesDigest(t, standby, pgbenchTables...)
	last := psql(t, standby, "SELECT pg_walfile_name(pg_switch_wal())")
	if !strings.HasPrefix(last, "00000002") {
		t.Fatalf("the new primary's segment %s is not on timeline 2", last)
	}
	r := openRepo(t, url)
	wsWaitFor(t, last+" in the repository", 2*time.Minute, func() bool { return wsHas(t, r, last) })
	if code := recv.stop(t); code != 0 {
		t.Errorf("wal-receive of the new primary after SIGTERM: exit %d, want 0", code)
	}

	// The history file, under its documented key, as the server wrote it.
	hist := readRepoFile(t, r, "wal/history/00000002.history")
	local, err := os.ReadFile(filepath.Join(standby.DataDir, "pg_wal", "00000002.history"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hist, local) {
		t.Errorf("wal/history/00000002.history is %q, the server's is %q", hist, local)
	}
	switchLSN, switchSeg := wsHistorySwitch(t, string(hist), wsSegSize(t, r))
	t.Logf("00000002.history: timeline 1 ends at %s, in segment %s", switchLSN, switchSeg)

	// Timeline 1 up to the switch as the old primary wrote it, its last
	// segment as .partial unless the switch is at a segment boundary;
	// timeline 2 from the switch on as the new primary wrote it.
	tl1 := wsCheckAgainstServer(t, r, primary, 1, b.StartWAL, "")
	old := "00000001" + switchSeg[8:] // the switch segment on timeline 1
	whole, partial := wsHas(t, r, old), wsHas(t, r, old+".partial")
	if n := len(tl1); n == 0 || tl1[n-1] < "00000001"+wsPrevSegment(t, r, switchSeg)[8:] {
		t.Fatalf("timeline 1 segments in the repository: %v; want them up to the switch segment %s", tl1, old)
	}
	switch how {
	case "caught-up":
		if tl1[len(tl1)-1] >= old {
			t.Errorf("timeline 1 segments in the repository: %v; want them up to, not including, the switch segment %s", tl1, old)
		}
		if whole == partial {
			t.Errorf("timeline 1's switch segment %s: want it stored either whole or as .partial (whole %v, .partial %v)", old, whole, partial)
		}
	case "diverged":
		if tl1[len(tl1)-1] <= old {
			t.Errorf("timeline 1 segments in the repository: %v; want them past the switch segment %s (the test did not diverge)", tl1, old)
		}
	}
	if !whole && !partial {
		t.Errorf("timeline 1's switch segment %s is stored neither whole nor as .partial", old)
	}
	tl2 := wsCheckAgainstServer(t, r, standby, 2, switchSeg, last)
	t.Logf("repository: timeline 1 %s..%s (%d segments; switch segment %s whole %v, .partial %v), 00000002.history, timeline 2 %s..%s (%d segments)",
		tl1[0], tl1[len(tl1)-1], len(tl1), old, whole, partial, tl2[0], tl2[len(tl2)-1], len(tl2))
	wsVerifyWAL(t, standby, url)

	dst, _ := wsRecover(t, url, false)
	if got := tablesDigest(t, dst.c, pgbenchTables...); got != want {
		t.Errorf("the backup of timeline 1 restored to the end of the repository differs from the new primary:\n got %s\nwant %s", got, want)
	}
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// TestWalstreamSyncLatency measures the commit latency of one client
// committing one-row transactions back to back on a durable primary
// (fsync on): alone; with a local synchronous physical standby (durable
// too); and with walferry wal-receive --synchronous into MinIO, at the
// default partial interval (1s) and at 200ms. It asserts nothing about
// time; the figures go to the log (docs/benchmarks.md quotes them).
func TestWalstreamSyncLatency(t *testing.T) {
	s3 := needE2E(t)
	start := time.Now()
	primary := wsPrimary(t, pgtest.Options{Durable: true})
	wsStandby(t, primary, pgtest.Options{Durable: true}, "standby1")
	url := newRepoURL(t, primary, kindS3, s3)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	spool := primary.MkdirOwned(t, "spool")

	type phase struct {
		name  string
		names string   // synchronous_standby_names
		recv  []string // wal-receive flags; nil: no receiver
		d     time.Duration
	}
	phases := []phase{
		{"no synchronous standby", "", nil, 10 * time.Second},
		{"synchronous physical standby (local, fsync on)", "standby1", nil, 10 * time.Second},
		{"walferry --synchronous (--partial-interval 1s, MinIO)", wsApp, []string{"--synchronous"}, 20 * time.Second},
		{"walferry --synchronous --partial-interval 200ms (MinIO)", wsApp, []string{"--synchronous", "--partial-interval", "200ms"}, 15 * time.Second},
	}
	var lines []string
	for i, p := range phases {
		var recv *wsReceiver
		if p.recv != nil {
			recv = wsStartReceiver(t, primary, url, primary.ConnString(), spool, p.recv...)
		}
		wsSetSyncNames(t, primary, p.names)
		cm := wsStartCommitter(t, primary, fmt.Sprintf("lat%d", i), 0)
		time.Sleep(p.d)
		cm.stop(t)
		lines = append(lines, fmt.Sprintf("%-58s %s", p.name+":", wsLatencyStats(cm.latencies())))
		if recv != nil {
			wsSetSyncNames(t, primary, "")
			if code := recv.stop(t); code != 0 {
				t.Errorf("wal-receive %v after SIGTERM: exit %d", p.recv, code)
			}
		}
	}
	t.Logf("COMMIT LATENCY, one client, one-row transactions back to back:\n%s", strings.Join(lines, "\n"))
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// ---- clusters ----------------------------------------------------------

// wsPrimary starts a primary for wal-receive: replication, and archive_mode
// on with an empty archive_command (see the top of this file).
func wsPrimary(t *testing.T, opts pgtest.Options) *pgtest.Cluster {
	t.Helper()
	c := pgtest.New(t, opts)
	c.AppendConf(t,
		"wal_level = replica",
		"max_wal_senders = 10",
		"archive_mode = on",
		"archive_command = ''",
		"max_wal_size = 1GB",
		"log_checkpoints = off",
	)
	c.Start(t)
	return c
}

// wsStandby makes a streaming hot standby of primary with pg_basebackup -R
// -X stream, connecting with application_name app; it keeps its own
// postgresql.conf (plus conf) and port settings, and is started.
func wsStandby(t *testing.T, primary *pgtest.Cluster, opts pgtest.Options, app string, conf ...string) *pgtest.Cluster {
	t.Helper()
	s := pgtest.New(t, opts)
	conn := primary.ConnString("application_name=" + app)
	args := []string{"-R", "-X", "stream", "-c", "fast"}
	if !opts.Durable {
		args = append(args, "--no-sync")
	}
	cloneInto(t, s, conn, args, append([]string{"hot_standby = on"}, conf...)...)
	auto, err := os.ReadFile(filepath.Join(s.DataDir, "postgresql.auto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	writeOwned(t, s, filepath.Join(s.DataDir, "postgresql.auto.conf"), append(auto, []byte("primary_conninfo = "+sqlQuote(conn)+"\n")...))
	s.Start(t)
	wsWaitStreaming(t, primary, app, false)
	return s
}

// wsSetSyncNames sets the primary's synchronous_standby_names and waits
// until the named standby is synchronous (or, for "", none is).
func wsSetSyncNames(t *testing.T, c *pgtest.Cluster, names string) {
	t.Helper()
	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = "+sqlQuote(names))
	c.Exec(t, "SELECT pg_reload_conf()")
	if names == "" {
		wsWaitFor(t, "no synchronous standby", time.Minute, func() bool {
			var n int
			c.QueryRow(t, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'").Scan(&n)
			return n == 0
		})
		return
	}
	wsWaitStreaming(t, c, names, true)
}

// wsWaitStreaming waits until a walsender streams to application name app
// (as a synchronous standby when sync).
func wsWaitStreaming(t *testing.T, c *pgtest.Cluster, app string, sync bool) {
	t.Helper()
	q := "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'"
	if sync {
		q += " AND sync_state = 'sync'"
	}
	wsWaitFor(t, app+" streaming", 2*time.Minute, func() bool {
		var n int
		c.QueryRow(t, q, app).Scan(&n)
		return n == 1
	})
}

// wsPgbench runs pgbench (2 clients, rate-limited) on c in the background
// until the returned function is called or the server goes away; env
// entries are added to its environment.
func wsPgbench(t *testing.T, c *pgtest.Cluster, env ...string) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := c.Command(ctx, "pgbench", "-n", "-c", "2", "-j", "2", "-R", wsPgbenchRate, "-T", "600")
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

// wsDisaster loses the site at once: the receiver is killed (SIGKILL),
// then the primary is stopped with pg_ctl -m immediate. It returns the
// moment the receiver died.
func wsDisaster(t *testing.T, primary *pgtest.Cluster, recv *wsReceiver) time.Time {
	t.Helper()
	recv.kill(t)
	at := time.Now()
	primary.Stop(t, pgtest.StopImmediate)
	t.Logf("disaster: receiver killed, primary stopped (immediate) %s later", time.Since(at).Round(time.Millisecond))
	return at
}

// wsRecover restores the latest backup into a new cluster (with
// --use-partial when partial), starts it to replay the repository to its
// end and promote, and returns it with the highest id of its table ack
// (0 when there is no such table). The ids must be 1..max, none missing.
func wsRecover(t *testing.T, url string, partial bool) (*restoreTarget, int) {
	t.Helper()
	step := time.Now()
	dst := newRestoreTarget(t)
	var args []string
	if partial {
		args = append(args, "--use-partial")
	}
	res := mustRestore(t, dst, url, "LATEST", args...)
	dst.configure(t)
	dst.c.Start(t)
	waitPromoted(t, dst.c, 5*time.Minute)
	logText, _ := os.ReadFile(dst.c.LogFile)
	t.Logf("restored %s (%s) and replayed %d WAL files from the repository in %s",
		res.Backup, mib(res.BytesFetched), strings.Count(string(logText), "restored log file "), time.Since(step).Round(time.Millisecond))
	if psql(t, dst.c, "SELECT to_regclass('ack') IS NULL") == "t" {
		return dst, 0
	}
	var n, top int
	if _, err := fmt.Sscanf(psql(t, dst.c, "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM ack"), "%d %d", &n, &top); err != nil {
		t.Fatal(err)
	}
	if n != top {
		t.Errorf("the restored ack table has %d rows with ids up to %d: a commit in the middle is missing", n, top)
	}
	wsPgbenchConsistent(t, dst.c)
	return dst, top
}

// wsCompareAck restarts the primary (crash recovery after the immediate
// stop) and compares the restored table's rows with the primary's rows
// 1..restoredMax; the primary must hold every acknowledged commit.
func wsCompareAck(t *testing.T, restored, primary *pgtest.Cluster, table string, restoredMax, lastAck int) {
	t.Helper()
	primary.Start(t)
	primaryMax, _ := strconv.Atoi(psql(t, primary, "SELECT coalesce(max(id), 0) FROM "+table))
	if primaryMax < lastAck {
		t.Errorf("the primary itself holds commits up to %d after crash recovery, but %d were acknowledged", primaryMax, lastAck)
	}
	if restoredMax > primaryMax {
		t.Errorf("the restore holds commits up to %d, the primary only up to %d", restoredMax, primaryMax)
	}
	q := fmt.Sprintf("SELECT coalesce(md5(string_agg(id || ' ' || committed, E'\\n' ORDER BY id)), '-') FROM %s WHERE id <= %d", table, restoredMax)
	if got, want := psql(t, restored, q), psql(t, primary, q); got != want {
		t.Errorf("restored rows 1..%d of %s differ from the primary's (md5 %s, want %s)", restoredMax, table, got, want)
	}
	wsPgbenchConsistent(t, primary)
	primary.Stop(t, pgtest.StopFast)
}

// wsPgbenchConsistent checks pgbench's invariant, true at every
// transaction boundary: the balances of accounts, branches and tellers
// and the deltas of the history all sum to the same amount.
func wsPgbenchConsistent(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	got := psql(t, c, `SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
		(SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' || (SELECT count(*) FROM pgbench_history)`)
	f := strings.Fields(got)
	if len(f) != 5 || f[0] != f[1] || f[1] != f[2] || f[2] != f[3] {
		t.Errorf("pgbench sums (accounts, branches, tellers, history, history rows) on port %d: %s; want the four sums equal", c.Port, got)
	}
}

// wsVerifyWAL runs walferry verify --wal and fails t unless it exits 0.
func wsVerifyWAL(t *testing.T, c *pgtest.Cluster, url string) {
	t.Helper()
	v := wf(t, c, "verify", "--repo", url, "--wal")
	if v.code != 0 {
		t.Errorf("walferry verify --repo %s --wal: %v\n%s", url, v, v.stdout)
		return
	}
	t.Logf("verify --wal: %s", lastLine(v.stdout+"\n"+v.stderr))
}

// ---- the receiver process ----------------------------------------------

// wsBuffer collects a process's output.
type wsBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *wsBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *wsBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// wsReceiver is one walferry wal-receive process.
type wsReceiver struct {
	cmd     *exec.Cmd
	out     wsBuffer
	started time.Time
	ended   time.Time // once done
	done    chan struct{}
	code    int // exit status once done; -1 when a signal ended it
}

var (
	wsReceiversMu sync.Mutex
	wsReceivers   = map[*testing.T][]*wsReceiver{}
)

// wsStartReceiver starts walferry wal-receive --slot walferry as c's OS
// user, streaming from conn into url with the given spool. It is killed
// when t ends; its log is shown if t failed.
func wsStartReceiver(t *testing.T, c *pgtest.Cluster, url, conn, spool string, args ...string) *wsReceiver {
	t.Helper()
	all := append([]string{"wal-receive", "--repo", url, "--pg-conn", conn, "--slot", "walferry", "--spool-dir", spool}, args...)
	r := &wsReceiver{cmd: c.Command(context.Background(), walferryBin, all...), done: make(chan struct{}), started: time.Now()}
	r.cmd.Dir = c.Dir
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start wal-receive: %v", err)
	}
	go func() {
		err := r.cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				r.code = -1
			} else {
				r.code = ee.ExitCode()
			}
		default:
			r.code = -2
		}
		r.ended = time.Now()
		close(r.done)
	}()
	wsReceiversMu.Lock()
	wsReceivers[t] = append(wsReceivers[t], r)
	n := len(wsReceivers[t])
	wsReceiversMu.Unlock()
	t.Cleanup(func() {
		r.kill(t)
		if t.Failed() {
			t.Logf("wal-receive #%d (%s):\n%s", n, strings.Join(all[1:], " "), r.log())
		}
		wsReceiversMu.Lock()
		delete(wsReceivers, t)
		wsReceiversMu.Unlock()
	})
	return r
}

// wsAllReceivers returns every receiver t started.
func wsAllReceivers(t *testing.T) []*wsReceiver {
	wsReceiversMu.Lock()
	defer wsReceiversMu.Unlock()
	return slices.Clone(wsReceivers[t])
}

func (r *wsReceiver) log() string { return r.out.String() }

func (r *wsReceiver) ran() time.Duration { return time.Since(r.started) }

// lifetime is how long the process ran, once it ended.
func (r *wsReceiver) lifetime() time.Duration {
	<-r.done
	return r.ended.Sub(r.started)
}

// exited reports whether the process has ended.
func (r *wsReceiver) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// checkRunning fails t when the receiver exited by itself.
func (r *wsReceiver) checkRunning(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		t.Fatalf("wal-receive exited by itself with status %d:\n%s", r.code, r.log())
	default:
	}
}

// kill sends SIGKILL and waits for the process to end.
func (r *wsReceiver) kill(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		return
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("kill wal-receive: %v", err)
	}
	<-r.done
}

// stop sends SIGTERM and returns the exit status (a minute at most, then
// SIGKILL and -1).
func (r *wsReceiver) stop(t *testing.T) int {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("stop wal-receive: %v", err)
	}
	select {
	case <-r.done:
	case <-time.After(time.Minute):
		t.Errorf("wal-receive still running a minute after SIGTERM:\n%s", r.log())
		r.kill(t)
	}
	if r.code != 0 {
		t.Logf("wal-receive log:\n%s", r.log())
	}
	return r.code
}

// ---- the committing client -----------------------------------------------

// wsAck is one acknowledged commit, as the client saw it.
type wsAck struct {
	start, at time.Time // when the INSERT was sent; when its commit returned
}

// wsCommitter commits rows id = 1, 2, ... into its table, one transaction
// each, and records when each commit was acknowledged, until it is
// stopped or a commit fails (the server went away).
type wsCommitter struct {
	cancel context.CancelFunc
	quit   chan struct{}
	done   chan struct{}

	mu     sync.Mutex
	acks   []wsAck // acks[i] is the commit of id i+1
	notice string  // a server notice about synchronous replication
	err    error   // why the loop ended, nil when stopped
}

// wsStartCommitter creates table (id int PRIMARY KEY, committed
// timestamptz) and starts committing into it, pausing between commits.
func wsStartCommitter(t *testing.T, c *pgtest.Cluster, table string, pause time.Duration) *wsCommitter {
	t.Helper()
	cfg, err := pgx.ParseConfig(c.ConnString("application_name=committer"))
	if err != nil {
		t.Fatal(err)
	}
	cm := &wsCommitter{quit: make(chan struct{}), done: make(chan struct{})}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		// "canceling wait for synchronous replication": committed
		// locally but not acknowledged by the synchronous standby.
		if strings.Contains(n.Message, "synchronous replication") {
			cm.mu.Lock()
			cm.notice = n.Message
			cm.mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cm.cancel = cancel
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE "+table+" (id int PRIMARY KEY, committed timestamptz NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(cm.done)
		defer conn.Close(context.Background())
		insert := "INSERT INTO " + table + " VALUES ($1, clock_timestamp())"
		for id := 1; ; id++ {
			select {
			case <-cm.quit:
				return
			default:
			}
			start := time.Now()
			_, err := conn.Exec(ctx, insert, id)
			at := time.Now()
			cm.mu.Lock()
			if err == nil && cm.notice != "" {
				err = fmt.Errorf("commit %d returned with a notice: %s", id, cm.notice)
			}
			if err != nil {
				cm.err = fmt.Errorf("commit %d: %w", id, err)
				cm.mu.Unlock()
				return
			}
			cm.acks = append(cm.acks, wsAck{start: start, at: at})
			cm.mu.Unlock()
			if pause > 0 {
				select {
				case <-cm.quit:
					return
				case <-time.After(pause):
				}
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-cm.done })
	return cm
}

// stop ends the loop after the commit in flight and fails t if it had
// ended on an error.
func (cm *wsCommitter) stop(t *testing.T) {
	t.Helper()
	close(cm.quit)
	<-cm.done
	if cm.err != nil {
		t.Errorf("committer: %v", cm.err)
	}
}

// wait waits for the loop to end on its own (the server went away).
func (cm *wsCommitter) wait() {
	select {
	case <-cm.done:
	case <-time.After(2 * time.Minute):
		cm.cancel()
		<-cm.done
	}
}

// acked returns the highest acknowledged id and every acknowledgement.
func (cm *wsCommitter) acked() (int, []wsAck) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	return len(cm.acks), slices.Clone(cm.acks)
}

func (cm *wsCommitter) latencies() []time.Duration {
	_, acks := cm.acked()
	out := make([]time.Duration, len(acks))
	for i, a := range acks {
		out[i] = a.at.Sub(a.start)
	}
	return out
}

// wsLatencyStats summarizes commit latencies.
func wsLatencyStats(d []time.Duration) string {
	if len(d) == 0 {
		return "no commit"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	pct := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	r := func(x time.Duration) string {
		switch {
		case x < time.Millisecond:
			return x.Round(time.Microsecond).String()
		case x < time.Second:
			return x.Round(10 * time.Microsecond).String()
		}
		return x.Round(time.Millisecond).String()
	}
	return fmt.Sprintf("%d commits, latency mean %s, p50 %s, p90 %s, p99 %s, max %s",
		len(s), r(sum/time.Duration(len(s))), r(pct(.5)), r(pct(.9)), r(pct(.99)), r(s[len(s)-1]))
}

// wsSince says how long before (or after) moment the commit of id was
// acknowledged.
func wsSince(acks []wsAck, id int, moment time.Time) string {
	if id < 1 || id > len(acks) {
		return "(none)"
	}
	d := moment.Sub(acks[id-1].at)
	if d < 0 {
		return (-d).Round(time.Millisecond).String() + " after"
	}
	return d.Round(time.Millisecond).String() + " before"
}

// wsSpanDuration is the time between the acknowledgements of commits from
// and to (from 0: since the first commit started).
func wsSpanDuration(acks []wsAck, from, to int) time.Duration {
	if to <= from || to > len(acks) {
		return 0
	}
	if from < 1 {
		return acks[to-1].at.Sub(acks[0].start)
	}
	return acks[to-1].at.Sub(acks[from-1].at)
}

// ---- the repository --------------------------------------------------------

// wsHas reports whether the repository holds WAL file name.
func wsHas(t *testing.T, r *repo.Repo, name string) bool {
	t.Helper()
	key, err := repo.WALKey(name, wsSegSize(t, r))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = r.Store().Stat(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatalf("stat %s: %v", key, err)
	}
	return true
}

// readRepoFile reads one object of the repository through the verifying
// decoder.
func readRepoFile(t *testing.T, r *repo.Repo, key string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	obj, err := r.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

// wsSegments returns the complete segments of timeline tli in the
// repository, sorted.
func wsSegments(t *testing.T, r *repo.Repo, tli int) []string {
	t.Helper()
	prefix := fmt.Sprintf("%08X", tli)
	var out []string
	for _, n := range walNames(t, r) {
		if isSegmentName(n) && strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// wsNewestSegment returns the newest complete segment of tli in the
// repository, or "".
func wsNewestSegment(t *testing.T, r *repo.Repo, tli int) string {
	t.Helper()
	segs := wsSegments(t, r, tli)
	if len(segs) == 0 {
		return ""
	}
	return segs[len(segs)-1]
}

// wsCheckAgainstServer checks timeline tli in the repository against the
// server's pg_wal: the complete segments must run without a gap from at
// or before first up to last (when given), each identical to the server's
// file, and every .partial of the timeline must hold the server's bytes
// (up to its last non-zero byte). It returns the segments.
func wsCheckAgainstServer(t *testing.T, r *repo.Repo, c *pgtest.Cluster, tli int, first, last string) []string {
	t.Helper()
	segs := wsSegments(t, r, tli)
	if len(segs) == 0 {
		t.Fatalf("no segment of timeline %d in the repository", tli)
	}
	wsContiguous(t, wsSegSize(t, r), segs)
	if segs[0][8:] > first[8:] {
		t.Errorf("timeline %d in the repository starts at %s, after %s", tli, segs[0], first)
	}
	if last != "" && segs[len(segs)-1] != last {
		t.Errorf("timeline %d in the repository ends at %s, want %s", tli, segs[len(segs)-1], last)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	wal := filepath.Join(c.DataDir, "pg_wal")
	for _, s := range segs {
		key, err := repo.WALKey(s, wsSegSize(t, r))
		if err != nil {
			t.Fatal(err)
		}
		sum, err := decodeObject(ctx, r, key)
		if err != nil {
			t.Fatal(err)
		}
		if local := filepath.Join(wal, s); !wsExists(local) {
			t.Errorf("%s is in the repository but not in the server's pg_wal", s)
		} else if want := fileSum(t, local); sum != want {
			t.Errorf("%s in the repository differs from the server's pg_wal", s)
		}
	}
	prefix := fmt.Sprintf("%08X", tli)
	for _, n := range walNames(t, r) {
		if !strings.HasPrefix(n, prefix) || !strings.HasSuffix(n, ".partial") {
			continue
		}
		seg := strings.TrimSuffix(n, ".partial")
		key, err := repo.WALKey(n, wsSegSize(t, r))
		if err != nil {
			t.Fatal(err)
		}
		got := readRepoFile(t, r, key)
		local := filepath.Join(wal, seg)
		if !wsExists(local) {
			local += ".partial" // a promoted server's copy of its old timeline's last segment
		}
		want, err := os.ReadFile(local)
		if err != nil {
			t.Errorf("%s is in the repository: %v", n, err)
			continue
		}
		end := len(bytes.TrimRight(got, "\x00"))
		if end > len(want) || !bytes.Equal(got[:end], want[:end]) {
			t.Errorf("%s in the repository differs from the server's %s in its first %d bytes", n, filepath.Base(local), end)
		}
	}
	return segs
}

// wsSegSize is the repository's WAL segment size.
func wsSegSize(t *testing.T, r *repo.Repo) pg.WALSegmentSize {
	t.Helper()
	size, err := r.Metadata().SegmentSize()
	if err != nil {
		t.Fatal(err)
	}
	return size
}

func wsExists(p string) bool { _, err := os.Stat(p); return err == nil }

// wsSpooled lists the WAL files waiting in a receiver's spool.
func wsSpooled(t *testing.T, spool string) []string {
	t.Helper()
	ents, err := os.ReadDir(spool)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if n := e.Name(); isSegmentName(n) || strings.HasSuffix(n, ".partial") || strings.HasSuffix(n, ".history") {
			out = append(out, n)
		}
	}
	return out
}

// wsHistorySwitch reads the last line of a timeline history file: the
// switch LSN and the name of the segment holding it on the new timeline.
func wsHistorySwitch(t *testing.T, hist string, size pg.WALSegmentSize) (string, string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(hist), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		t.Fatalf("history file %q", hist)
	}
	lsn, err := pg.ParseLSN(f[1])
	if err != nil {
		t.Fatalf("history file %q: %v", hist, err)
	}
	return f[1], pg.SegmentNameOf(2, lsn, size)
}

// wsPrevSegment returns the name of the segment before name.
func wsPrevSegment(t *testing.T, r *repo.Repo, name string) string {
	t.Helper()
	tli, n, err := pg.ParseSegmentName(name, wsSegSize(t, r))
	if err != nil || n == 0 {
		t.Fatalf("segment before %q: %v", name, err)
	}
	return pg.SegmentName(tli, n-1, wsSegSize(t, r))
}

// wsContiguous fails t when sorted segment names of one timeline skip one.
func wsContiguous(t *testing.T, size pg.WALSegmentSize, segs []string) {
	t.Helper()
	for i := 1; i < len(segs); i++ {
		tli, n, err := pg.ParseSegmentName(segs[i-1], size)
		if err != nil {
			t.Fatal(err)
		}
		if want := pg.SegmentName(tli, n+1, size); segs[i] != want {
			t.Errorf("the repository's segments jump from %s to %s (missing %s)", segs[i-1], segs[i], want)
		}
	}
}

// ---- a dedicated MinIO -----------------------------------------------------

// wsMinIO is a MinIO server of one test, on its own port and data
// directory, with the shared server's credentials (so the environment
// TestMain set up serves both), that the test may stop and start.
type wsMinIO struct {
	bin, dir, bucket string
	port, console    int
	access, secret   string
	cmd              *exec.Cmd
	done             chan struct{}
	out              wsBuffer
}

// wsStartMinIO starts a MinIO for t from the binary scripts/services.sh
// uses and creates its bucket; it is stopped when t ends.
func wsStartMinIO(t *testing.T, s3 testenv.S3Env) *wsMinIO {
	t.Helper()
	cache := os.Getenv("WALFERRY_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "walferry")
	}
	bin := filepath.Join(cache, "bin", "minio")
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("minio"); err != nil {
			msg := "no minio binary in " + filepath.Join(cache, "bin") + " or PATH (scripts/install-test-deps.sh installs it)"
			if testenv.RequireServices() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	m := &wsMinIO{bin: bin, dir: t.TempDir(), bucket: "walstream", access: s3.AccessKey, secret: s3.SecretKey,
		port: wsFreePort(t), console: wsFreePort(t)}
	m.start(t)
	t.Cleanup(func() {
		m.stop(t)
		if t.Failed() {
			t.Logf("dedicated MinIO log:\n%s", m.out.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", "-sS", "-f", "--max-time", "20",
		"--aws-sigv4", "aws:amz:us-east-1:s3", "--user", m.access+":"+m.secret,
		"-X", "PUT", fmt.Sprintf("http://127.0.0.1:%d/%s", m.port, m.bucket)).CombinedOutput()
	if err != nil {
		t.Fatalf("create bucket %s in the dedicated MinIO: %v\n%s", m.bucket, err, out)
	}
	return m
}

func (m *wsMinIO) repoURL(t *testing.T) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=http://127.0.0.1:%d&path-style=true", m.bucket, testenv.UniquePrefix(t), m.port)
}

// start launches the server on its port and waits until it is live.
func (m *wsMinIO) start(t *testing.T) {
	t.Helper()
	m.cmd = exec.Command(m.bin, "server", "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", m.port),
		"--console-address", fmt.Sprintf("127.0.0.1:%d", m.console), m.dir)
	m.cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.access, "MINIO_ROOT_PASSWORD="+m.secret,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	m.cmd.Stdout, m.cmd.Stderr = &m.out, &m.out
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start minio: %v", err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(m.cmd, m.done)
	health := fmt.Sprintf("http://127.0.0.1:%d/minio/health/live", m.port)
	wsWaitFor(t, "the dedicated MinIO on port "+strconv.Itoa(m.port), time.Minute, func() bool {
		select {
		case <-m.done:
			t.Fatalf("minio exited while starting:\n%s", m.out.String())
		default:
		}
		resp, err := http.Get(health)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// stop stops the server (SIGTERM, then SIGKILL after 15 seconds).
func (m *wsMinIO) stop(t *testing.T) {
	t.Helper()
	if m.cmd == nil {
		return
	}
	select {
	case <-m.done:
		return
	default:
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
}

// wsFreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func wsFreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// wsWaitFor polls cond every 200ms until it holds, failing t after timeout.
func wsWaitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// recordPromotion records in the repository's lineage record what walferry
// promote records for a failover (the old primary fenced at the point the
// promoted standby replayed to, then the new timeline from its switch
// point): without it the new primary's WAL is refused (exit 9).
func recordPromotion(t *testing.T, url string, promoted *pgtest.Cluster, fencedAt string) {
	t.Helper()
	ctx := context.Background()
	r := openRepo(t, url)
	g, ok, err := r.Lineage(ctx)
	if err != nil || !ok {
		t.Fatalf("lineage record of %s: %v, %v", url, ok, err)
	}
	at, err := pg.ParseLSN(fencedAt)
	if err != nil {
		t.Fatal(err)
	}
	var tli int
	var history string
	promoted.QueryRow(t, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int").Scan(&tli)
	promoted.QueryRow(t, "SELECT pg_read_file('pg_wal/' || lpad(upper(to_hex($1::int)), 8, '0') || '.history')", tli).Scan(&history)
	entries, err := pg.ParseHistory(strings.NewReader(history))
	if err != nil || len(entries) == 0 {
		t.Fatalf("history of timeline %d: %v (%q)", tli, err, history)
	}
	fence, err := r.NextGeneration(ctx, g.Number, repo.Generation{Instance: "promoted", Reason: "failover", Timeline: g.Timeline, TimelineStart: g.TimelineStart, FencedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.NextGeneration(ctx, fence.Number, repo.Generation{Instance: "promoted", Reason: "promote",
		Timeline: pg.TimeLineID(tli), TimelineStart: entries[len(entries)-1].SwitchLSN}); err != nil {
		t.Fatal(err)
	}
}
