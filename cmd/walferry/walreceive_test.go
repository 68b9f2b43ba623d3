package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
)

func TestWalReceiveUsage(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	code, _, stderr := run(t, "wal-receive")
	expectFailure(t, exitUsage, stderr, code, "no repository configured")

	e := newHookEnv(t)
	code, _, stderr = run(t, "wal-receive", "--repo", e.repoURL, "--slot", "Bad-Name")
	expectFailure(t, exitUsage, stderr, code, "--slot", "lower-case")

	code, _, stderr = run(t, "wal-receive", "--repo", e.repoURL, "--spool-dir", t.TempDir(),
		"--pg-conn", "host=127.0.0.1 port=1 user=nobody sslmode=disable", "--max-attempts", "1")
	expectFailure(t, exitPostgres, stderr, code, "giving up after 1 failed attempts", "port=1")

	// A bad --metrics-address exits 2 before connecting: the server at
	// port 1 would make it exit 7.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, addr := range []string{"nonsense", "127.0.0.1:99999", "127.0.0.1:notaport", busy.Addr().String()} {
		code, _, stderr = run(t, "wal-receive", "--repo", e.repoURL, "--spool-dir", t.TempDir(),
			"--pg-conn", "host=127.0.0.1 port=1 user=nobody sslmode=disable", "--max-attempts", "1",
			"--metrics-address", addr)
		expectFailure(t, exitUsage, stderr, code, "--metrics-address", addr)
	}
	t.Setenv("WALFERRY_METRICS_ADDRESS", "nonsense")
	code, _, stderr = run(t, "wal-receive", "--repo", e.repoURL, "--spool-dir", t.TempDir(),
		"--pg-conn", "host=127.0.0.1 port=1 user=nobody sslmode=disable", "--max-attempts", "1")
	expectFailure(t, exitUsage, stderr, code, "--metrics-address", "nonsense")
}

// TestWalReceiveSynchronous runs wal-receive --synchronous against a real
// primary that lists it in synchronous_standby_names: a commit returns
// only once its WAL is in the repository.
func TestWalReceiveSynchronous(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL")
	}
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: 1, Conf: []string{"wal_keep_size = '256MB'"}})
	root := filepath.Join(t.TempDir(), "repo")
	repoURL := "file://" + root
	if code, _, stderr := run(t, "repo", "init", "--repo", repoURL, "--pg-conn", c.ConnString()); code != 0 {
		t.Fatalf("repo init: %d %s", code, stderr)
	}

	var logs syncBuffer
	a := newApp(io.Discard, &logs, buildInfo{Version: "test", Commit: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- a.Run(ctx, []string{"walferry", "wal-receive", "--repo", repoURL, "--pg-conn", c.ConnString(),
			"--slot", "cli_test", "--spool-dir", filepath.Join(t.TempDir(), "spool"),
			"--partial-interval", "200ms", "--synchronous", "--log-level", "debug"})
	}()

	c.Exec(t, "ALTER SYSTEM SET synchronous_standby_names = 'walferry'")
	c.Reload(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		c.QueryRow(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walferry' AND sync_state = 'sync'").Scan(&n)
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver never became a synchronous standby named walferry; log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Open(context.Background(), st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size, _ := rp.Metadata().SegmentSize()
	c.Exec(t, "CREATE TABLE t (v text)")
	for i := range 3 {
		// Everything before lsn precedes the commit record, so once COMMIT
		// returns it must be in the repository: whole or as .partial.
		c.Exec(t, "BEGIN")
		c.Exec(t, "INSERT INTO t SELECT repeat('y', 100) FROM generate_series(1, 1000)")
		var lsnText string
		c.QueryRow(t, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsnText)
		c.Exec(t, "COMMIT")
		lsn, err := pg.ParseLSN(lsnText)
		if err != nil {
			t.Fatal(err)
		}
		name := pg.SegmentNameOf(1, lsn, size)
		off := size.Offset(lsn)
		// The .partial is deleted once the whole segment is stored: look
		// for the segment again after missing the partial.
		got, ok := readStored(t, rp, size, name)
		if !ok {
			if got, ok = readStored(t, rp, size, name+".partial"); !ok {
				got, ok = readStored(t, rp, size, name)
			}
			if !ok {
				t.Fatalf("commit %d returned but neither %s nor its .partial is stored; log:\n%s", i, name, logs.String())
			}
		}
		want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:off], want[:off]) {
			t.Fatalf("commit %d returned but the repository does not hold %s up to %s", i, name, lsn)
		}
	}

	// Let commits go on without the receiver, then stop it.
	c.Exec(t, "ALTER SYSTEM RESET synchronous_standby_names")
	c.Reload(t)
	cancel()
	select {
	case err := <-done:
		if code := exitCode(err); code != exitOK {
			t.Fatalf("wal-receive after SIGTERM: exit %d (%v); log:\n%s", code, err, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("wal-receive did not stop")
	}
}

func readStored(t *testing.T, rp *repo.Repo, size pg.WALSegmentSize, name string) ([]byte, bool) {
	t.Helper()
	key, err := repo.WALKey(name, size)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := rp.Get(context.Background(), key)
	if errors.Is(err, storage.ErrNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		t.Fatal(err)
	}
	return b, true
}

// TestWalReceiveKill kills wal-receive (SIGKILL) several times while the
// server writes, restarts it each time, and finally stops it with SIGTERM:
// the repository holds every segment, without a gap and byte for byte as
// in pg_wal.
func TestWalReceiveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: 1, Conf: []string{"wal_keep_size = '256MB'"}})
	root := filepath.Join(t.TempDir(), "repo")
	repoURL := "file://" + root
	if code, _, stderr := run(t, "repo", "init", "--repo", repoURL, "--pg-conn", c.ConnString()); code != 0 {
		t.Fatalf("repo init: %d %s", code, stderr)
	}
	spool := filepath.Join(t.TempDir(), "spool")
	var logs syncBuffer
	startReceiver := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "wal-receive", "--repo", repoURL, "--pg-conn", c.ConnString(),
			"--slot", "kill_test", "--spool-dir", spool, "--partial-interval", "100ms")
		cmd.Env = append(os.Environ(), "WALFERRY_TEST_AS_MAIN=1")
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	c.Exec(t, "CREATE TABLE t (v text)")
	var names []string
	switchWAL := func() {
		c.Exec(t, "INSERT INTO t SELECT repeat('z', 200) FROM generate_series(1, 2000)")
		var name string
		c.QueryRow(t, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&name)
		names = append(names, name)
	}
	for i := range 3 {
		cmd := startReceiver()
		switchWAL()
		switchWAL()
		time.Sleep(time.Duration(100*(i+1)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
	}
	cmd := startReceiver()
	switchWAL()

	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	rp, err := repo.Open(context.Background(), st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	size, _ := rp.Metadata().SegmentSize()
	for _, name := range names {
		deadline := time.Now().Add(60 * time.Second)
		for {
			got, ok := readStored(t, rp, size, name)
			if ok {
				want, err := os.ReadFile(filepath.Join(c.DataDir, "pg_wal", name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s differs from pg_wal's copy", name)
				}
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("%s never stored; log:\n%s", name, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("wal-receive after SIGTERM: %v; log:\n%s", err, logs.String())
	}

	// Every segment from the first switched one to the last is there.
	_, first, _ := pg.ParseSegmentName(names[0], size)
	_, last, _ := pg.ParseSegmentName(names[len(names)-1], size)
	for n := first; n <= last; n++ {
		if _, ok := readStored(t, rp, size, pg.SegmentName(1, n, size)); !ok {
			t.Errorf("gap: %s is not stored", pg.SegmentName(1, n, size))
		}
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", logs.String())
	}
}

// TestWalReceiveMetrics runs wal-receive as a process with the metrics
// server (address from WALFERRY_METRICS_ADDRESS, port 0) and scrapes it:
// /metrics has the receiver's, Go's and the process's metrics, moving with
// the server's WAL; /healthz is 200 while streaming and 503 with a reason
// once the server is down; SIGTERM closes it.
func TestWalReceiveMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: 1, Conf: []string{"wal_keep_size = '256MB'"}})
	repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
	if code, _, stderr := run(t, "repo", "init", "--repo", repoURL, "--pg-conn", c.ConnString()); code != 0 {
		t.Fatalf("repo init: %d %s", code, stderr)
	}
	var logs syncBuffer
	logs.Write(nil)
	cmd := exec.Command(os.Args[0], "wal-receive", "--repo", repoURL, "--pg-conn", c.ConnString(),
		"--slot", "metrics_test", "--spool-dir", filepath.Join(t.TempDir(), "spool"), "--partial-interval", "200ms")
	cmd.Env = append(os.Environ(), "WALFERRY_TEST_AS_MAIN=1", "WALFERRY_METRICS_ADDRESS=127.0.0.1:0", "WALFERRY_LOG_FORMAT=text")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; log:\n%s", what, logs.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	addrRE := regexp.MustCompile(`msg="serving metrics" address=(\S+)`)
	var base string
	waitUntil("the metrics address in the log", func() bool {
		m := addrRE.FindStringSubmatch(logs.String())
		if m != nil {
			base = "http://" + m[1]
		}
		return m != nil
	})
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	// value returns a sample's value in a scrape, or -1 when missing.
	value := func(body, name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body)
		if m == nil {
			return -1
		}
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return v
	}

	waitUntil("/healthz 200 while streaming", func() bool {
		code, body := get("/healthz")
		return code == http.StatusOK && body == "ok\n"
	})
	_, body := get("/metrics")
	for _, want := range []string{
		"# TYPE walferry_walstream_received_lsn gauge", "# TYPE walferry_walstream_flushed_lsn gauge",
		"# TYPE walferry_walstream_uploaded_lsn gauge", "# TYPE walferry_walstream_server_lsn gauge",
		"# TYPE walferry_walstream_lag_bytes gauge", "# TYPE walferry_walstream_lag_seconds gauge",
		"# TYPE walferry_walstream_timeline gauge", "# TYPE walferry_walstream_connected gauge",
		"# TYPE walferry_walstream_segments_uploaded_total counter", "# TYPE walferry_walstream_partial_uploads_total counter",
		"# TYPE walferry_walstream_upload_errors_total counter", "# TYPE walferry_walstream_reconnects_total counter",
		"# TYPE walferry_walstream_upload_seconds histogram",
		"walferry_walstream_connected 1", "walferry_walstream_timeline 1",
		"# TYPE go_goroutines gauge", "# TYPE process_resident_memory_bytes gauge",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("/metrics:\n%s", body)
	}

	// The scraped positions follow the server's WAL.
	c.Exec(t, "CREATE TABLE t (v text)")
	c.Exec(t, "INSERT INTO t SELECT repeat('s', 200) FROM generate_series(1, 3000)")
	var lsnText string
	c.QueryRow(t, "SELECT pg_current_wal_flush_lsn()::text").Scan(&lsnText)
	lsn, err := pg.ParseLSN(lsnText)
	if err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "SELECT pg_switch_wal()")
	waitUntil("a stored segment and flushed_lsn past "+lsnText+" in /metrics", func() bool {
		_, body := get("/metrics")
		return value(body, "walferry_walstream_segments_uploaded_total") >= 1 &&
			value(body, "walferry_walstream_flushed_lsn") >= float64(lsn) &&
			value(body, "walferry_walstream_received_lsn") >= value(body, "walferry_walstream_flushed_lsn") &&
			value(body, "walferry_walstream_upload_seconds_count") >= 1
	})

	// The server goes away: 503 with the reason, on one line.
	c.Stop(t, pgtest.StopFast)
	waitUntil("/healthz 503 with the server down", func() bool {
		code, body := get("/healthz")
		if code == http.StatusOK {
			return false
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "not streaming from PostgreSQL") ||
			strings.Count(body, "\n") != 1 {
			t.Fatalf("/healthz with the server down: %d %q", code, body)
		}
		return true
	})
	if _, body := get("/metrics"); value(body, "walferry_walstream_connected") != 0 {
		t.Errorf("connected is not 0 with the server down")
	}

	// SIGTERM: a clean exit, and the server is closed.
	cmd.Process.Signal(syscall.SIGTERM)
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Fatalf("wal-receive after SIGTERM: %v; log:\n%s", err, logs.String())
	}
	if _, err := client.Get(base + "/healthz"); err == nil {
		t.Errorf("the metrics server still answers after wal-receive exited")
	}
}
