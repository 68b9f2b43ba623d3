//go:build faults

package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/walstream"
)

// wal-receive's limits (docs/configuration.md, "Retries": reconnection
// and uploads keep trying, backoff 1 s to 1 min, until the store comes
// back; README, wal-receive: SIGTERM finishes within --shutdown-timeout).
const (
	// recvFaultFor is how long each fault lasts while the server writes.
	recvFaultFor = 8 * time.Second
	// recvCatchUp bounds how long after a fault heals the repository may
	// take to hold every segment the server completed: a request stuck in
	// the fault ends by the store's own timeouts or the stall watchdog
	// (65 s), the next attempt waits at most the longest backoff (1 min),
	// then 30 s of transfer.
	recvCatchUp = storeTimeouts + time.Minute + 30*time.Second
	// recvPartialInterval is the walReceiver's --partial-interval in the
	// suite: every trial sees several partial uploads.
	recvPartialInterval = 2 * time.Second
	// recvReceiveTimeout is the receiver's --receive-timeout in the suite
	// (1 min by default): a server link that hangs must be given up within
	// it (plus one status interval's slack).
	recvReceiveTimeout = 10 * time.Second
	// recvStopLimit bounds a SIGTERM with the store hanging: the shutdown
	// timeout, then 15 s to exit.
	recvStopLimit = walstream.DefaultShutdownTimeout + 15*time.Second
)

// TestWalReceive streams a primary into MinIO through the fault front
// (toxiproxy and the 500/503 front of TestNetwork) with walferry
// wal-receive, once per fault of netFaults, while the server writes WAL.
// During each fault, what the walReceiver reported flushed to the server
// (pg_stat_replication.flush_lsn, which a physical slot trusts) must
// already be in the repository, read directly; after the fault heals the
// repository must hold, within recvCatchUp, every segment the server
// completed, each equal to pg_wal's, and every .partial equal to pg_wal's
// segment up to its end. The walReceiver must keep running through every
// fault (it retries forever). Last, it is stopped with SIGTERM while the
// store hangs: it must exit within its shutdown timeout, and a walReceiver
// started again on the same spool must complete the repository.
func TestWalReceive(t *testing.T) {
	s3 := needServices(t)
	t.Parallel()
	const op = "wal-receive"
	f := newFront(t, s3)
	prefix := testenv.UniquePrefix(t)
	direct, faulty := s3URL(s3, prefix, s3.Endpoint), s3URL(s3, prefix, f.Endpoint)
	prim := pgtest.New(t, pgtest.Options{WALSegSizeMB: segMB})
	prim.AppendConf(t,
		"wal_level = replica",
		"max_wal_senders = 10",
		// Archiving on with an empty command: pg_wal keeps every segment
		// to compare the repository with.
		"archive_mode = on",
		"archive_command = ''",
		"max_wal_size = 1GB",
		"log_checkpoints = off",
	)
	prim.Start(t)
	mustWF(t, prim, "repo", "init", "--repo", direct, "--pgdata", prim.DataDir)
	psql(t, prim, "CREATE EXTENSION pgcrypto")
	psql(t, prim, "CREATE TABLE noise (id bigint, a text)")
	rp := openRepo(t, direct)
	size := clusterSegSize(t, prim)
	spool := prim.MkdirOwned(t, "spool")

	pgLink := newTCPFront(t, fmt.Sprintf("127.0.0.1:%d", prim.Port))
	conn := prim.ConnString("port=" + strings.TrimPrefix(pgLink.Endpoint, "127.0.0.1:"))
	recv := startWalReceive(t, prim, faulty, conn, spool)
	waitWalStreaming(t, prim)
	writeNoise(t, prim, 2)

	// trial runs one fault on link while the server writes; silent, when
	// not "", must appear in the receiver's log during the fault.
	trial := func(link *front, fault netFault, silent string) {
		if !recv.running() {
			record(t, fault.name, op, unclear, "the receiver exited before the fault: "+recv.String())
			return
		}
		logged := len(recv.log())
		end := strike(t, link, fault)
		writeNoise(t, prim, 3)
		faultFor := recvFaultFor
		if silent != "" {
			faultFor = 3 * recvReceiveTimeout
		}
		deadline := time.Now().Add(faultFor)
		acked := ""
		for time.Now().Before(deadline) && acked == "" {
			acked = checkAcked(t, prim, rp, size)
			time.Sleep(500 * time.Millisecond)
		}
		during := recv.log()[logged:]
		end()
		if acked != "" {
			record(t, fault.name, op, dataLost, acked)
			return
		}
		if !recv.running() {
			record(t, fault.name, op, unclear, "the receiver exited during the fault (it retries forever): "+recv.String())
			return
		}
		if silent != "" && !strings.Contains(during, silent) {
			record(t, fault.name, op, hang, fmt.Sprintf("the server link hung for %s and the receiver did not notice (no %q in its log; --receive-timeout %s)",
				faultFor, silent, recvReceiveTimeout))
			return
		}
		last := switchSegment(t, prim, size)
		healed := time.Now()
		p, timedOut := waitRepo(t, prim, rp, size, last, recvCatchUp)
		switch {
		case p != "":
			record(t, fault.name, op, dataLost, p)
		case timedOut:
			record(t, fault.name, op, hang, fmt.Sprintf("the repository did not reach %s within %s of the fault healing", last, recvCatchUp))
		case !recv.running():
			record(t, fault.name, op, unclear, "the receiver exited after the fault: "+recv.String())
		default:
			record(t, fault.name, op, ok, fmt.Sprintf("every segment up to %s in the repository %s after healing, equal to pg_wal's, partials too",
				last, time.Since(healed).Round(time.Second)))
		}
	}
	for _, fault := range netFaults {
		trial(f, fault, "")
	}
	for _, fault := range pgLinkFaults {
		silent := ""
		if strings.Contains(fault.name, "hang") {
			silent = "no message from the server"
		}
		trial(pgLink, fault, silent)
	}

	// SIGTERM while the store hangs: the shutdown timeout bounds it.
	const stopFault = "hang, no answer + SIGTERM"
	writeNoise(t, prim, 2)
	end := strike(t, f, netFault{name: stopFault, apply: func(t *testing.T, f *front) {
		f.toxic(t, "hang", "timeout", "downstream", `"timeout":0`)
	}})
	time.Sleep(3 * time.Second)
	code, took, stopped := recv.stop(recvStopLimit)
	end()
	if !stopped {
		record(t, stopFault, op, hang, fmt.Sprintf("still running %s after SIGTERM: killed", recvStopLimit))
		return
	}
	recv2 := startWalReceive(t, prim, faulty, conn, spool)
	last := switchSegment(t, prim, size)
	p, timedOut := waitRepo(t, prim, rp, size, last, recvCatchUp)
	_, _, _ = recv2.stop(recvStopLimit)
	switch {
	case p != "":
		record(t, stopFault, op, dataLost, "after a restart: "+p)
	case timedOut:
		record(t, stopFault, op, hang, fmt.Sprintf("after a restart the repository did not reach %s within %s", last, recvCatchUp))
	case code != 0 && !namesStore(recv.log(), s3, f.Endpoint):
		record(t, stopFault, op, unclear, fmt.Sprintf("exit %d after SIGTERM, naming no store: %s", code, lastLines(recv.log(), 3)))
	default:
		record(t, stopFault, op, ok, fmt.Sprintf("exit %d %s after SIGTERM; restarted, every segment up to %s in the repository, equal to pg_wal's",
			code, took.Round(time.Second), last))
	}
}

// walReceiver is one walferry wal-receive process.
type walReceiver struct {
	cmd     *exec.Cmd
	log     func() string // what it wrote so far
	started time.Time
	done    chan struct{}
	err     error
}

// pgLinkFaults strike the replication connection between wal-receive and
// PostgreSQL.
var pgLinkFaults = []netFault{
	{name: "pg link: latency 150ms", apply: func(t *testing.T, f *front) {
		f.toxic(t, "lat-up", "latency", "upstream", `"latency":150,"jitter":50`)
		f.toxic(t, "lat-down", "latency", "downstream", `"latency":150,"jitter":50`)
	}},
	{name: "pg link: reset, 3s", healAfter: 3 * time.Second, apply: func(t *testing.T, f *front) {
		f.toxic(t, "reset", "reset_peer", "upstream", `"timeout":0`)
	}},
	{name: "pg link: hang, no close", apply: func(t *testing.T, f *front) {
		f.toxic(t, "hang-up", "timeout", "upstream", `"timeout":0`)
		f.toxic(t, "hang-down", "timeout", "downstream", `"timeout":0`)
	}},
}

// newTCPFront is a toxiproxy (no HTTP front) to upstream, host:port; it is
// stopped when t ends. Its Endpoint is host:port.
func newTCPFront(t *testing.T, upstream string) *front {
	t.Helper()
	zerolog.SetGlobalLevel(zerolog.Disabled) // the toxics log through the global logger
	tsrv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	f := &front{proxy: toxiproxy.NewProxy(tsrv, "tcp", "127.0.0.1:0", upstream)}
	if err := f.proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.proxy.Stop)
	f.Endpoint = f.proxy.Listen
	return f
}

// startWalReceive starts wal-receive for c (reached with conn) into url
// with a slot, as the server's OS user; it is killed when t ends, its log
// shown if t failed.
func startWalReceive(t *testing.T, c *pgtest.Cluster, url, conn, spool string) *walReceiver {
	t.Helper()
	r := &walReceiver{done: make(chan struct{}), started: time.Now()}
	r.cmd = c.Command(context.Background(), walferryBin, "wal-receive", "--repo", url, "--pg-conn", conn,
		"--slot", "walferry", "--spool-dir", spool, "--partial-interval", recvPartialInterval.String(),
		"--receive-timeout", recvReceiveTimeout.String())
	r.cmd.SysProcAttr.Setpgid = true
	r.log = processLog(t, r.cmd)
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start wal-receive: %v", err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
		if t.Failed() {
			t.Logf("wal-receive log:\n%s", lastLines(r.log(), 40))
		}
	})
	return r
}

func (r *walReceiver) running() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

func (r *walReceiver) String() string {
	if r.running() {
		return "running"
	}
	return fmt.Sprintf("%v after %s: %s", r.err, time.Since(r.started).Round(time.Second), lastLines(r.log(), 3))
}

// stop sends SIGTERM and waits up to limit; it returns the exit code, how
// long the exit took, and false (after SIGKILL) when it did not exit.
func (r *walReceiver) stop(limit time.Duration) (code int, took time.Duration, stopped bool) {
	at := time.Now()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(limit):
		syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
		return -1, time.Since(at), false
	}
	var ee *exec.ExitError
	if errors.As(r.err, &ee) {
		code = ee.ExitCode()
	}
	return code, time.Since(at), true
}

// waitWalStreaming waits until the walReceiver streams from c.
func waitWalStreaming(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for psql(t, c, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "0" {
		if time.Now().After(deadline) {
			t.Fatal("wal-receive did not stream within a minute")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// writeNoise writes about n segments of poorly compressible WAL.
func writeNoise(t *testing.T, c *pgtest.Cluster, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		psql(t, c, "INSERT INTO noise SELECT g, encode(gen_random_bytes(512), 'hex') FROM generate_series(1, 900) g")
	}
}

// switchSegment ends the current segment and returns its name.
func switchSegment(t *testing.T, c *pgtest.Cluster, size pg.WALSegmentSize) string {
	t.Helper()
	return pg.SegmentName(1, size.SegNoBefore(queryLSN(t, c, "SELECT pg_switch_wal()")), size)
}

// checkAcked returns what the walReceiver reported flushed to the server but
// the repository does not hold: every segment before the flush position's
// must be there.
func checkAcked(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, size pg.WALSegmentSize) string {
	t.Helper()
	s := psql(t, c, "SELECT coalesce(flush_lsn::text, '') FROM pg_stat_replication WHERE application_name = 'walferry'")
	if s == "" {
		return ""
	}
	flush, err := pg.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	names, err := repoWALNames(rp)
	if err != nil {
		t.Fatal(err)
	}
	// From the first segment the receiver stored (it starts streaming at
	// the server's current segment) to the one before the flush position.
	first := firstSegment(names)
	for segNo := size.SegNoOf(flush); segNo > 0; {
		segNo--
		name := pg.SegmentName(1, segNo, size)
		if first == "" || name < first {
			break
		}
		if !names[name] {
			return fmt.Sprintf("the receiver reported %s flushed to the server, but %s is not in the repository", flush, name)
		}
	}
	return ""
}

// repoWALNames lists the WAL file names in the repository.
func repoWALNames(rp *repo.Repo) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names := map[string]bool{}
	err := rp.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		if name, ok := repo.WALNameFromKey(oi.Key); ok {
			names[name] = true
		}
		return nil
	})
	return names, err
}

// firstSegment is the oldest segment name in names, "" when there is none.
func firstSegment(names map[string]bool) string {
	first := ""
	for n := range names {
		if len(n) == 24 && (first == "" || n < first) {
			first = n
		}
	}
	return first
}

// waitRepo waits up to limit for the repository to hold every segment up
// to last, then checks them and the .partials against pg_wal; it returns
// what is wrong ("" when nothing) and whether the wait timed out.
func waitRepo(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, size pg.WALSegmentSize, last string, limit time.Duration) (string, bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		names, err := repoWALNames(rp)
		if err != nil {
			t.Fatal(err)
		}
		if names[last] {
			break
		}
		if time.Now().After(deadline) {
			return "", true
		}
		time.Sleep(time.Second)
	}
	names, err := repoWALNames(rp)
	if err != nil {
		t.Fatal(err)
	}
	if p := checkWAL(t, rp, c, segmentRange(t, firstSegment(names), last, size)); p != "" {
		return p, false
	}
	return checkPartials(t, c, rp, size, names), false
}

// checkPartials compares every .partial in names with pg_wal's segment:
// the stored bytes up to their end (a partial is the segment up to the
// flush position, then zeros) must be the server's.
func checkPartials(t *testing.T, c *pgtest.Cluster, rp *repo.Repo, size pg.WALSegmentSize, names map[string]bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for n := range names {
		seg, ok := strings.CutSuffix(n, ".partial")
		if !ok {
			continue
		}
		key, err := repo.WALKey(n, size)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := rp.Get(ctx, key)
		if err != nil {
			return fmt.Sprintf("get %s: %v", n, err)
		}
		got, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			return fmt.Sprintf("%s does not decode whole: %v", n, err)
		}
		want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", seg))
		if err != nil {
			return fmt.Sprintf("%s is in the repository: %v", n, err)
		}
		end := len(bytes.TrimRight(got, "\x00"))
		if end > len(want) || !bytes.Equal(got[:end], want[:end]) {
			return fmt.Sprintf("%s differs from pg_wal's %s in its first %d bytes", n, seg, end)
		}
	}
	return ""
}
