package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/repo"
)

// TestMain lets a test run this binary as walferry itself (for signals):
// with WALFERRY_TEST_AS_MAIN=1 the process is main().
func TestMain(m *testing.M) {
	if os.Getenv("WALFERRY_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// The hooks' tests use data directories made of a control file of
// internal/pg's test data (no server needed): a cluster with 1 MiB WAL
// segments, and another cluster.
const (
	hookControl      = "pg15-wal1-standby.pg_control"
	otherControl     = "pg15-default.pg_control"
	hookSegmentBytes = 1 << 20
)

// pgTestdata returns the path of a file of internal/pg's test data,
// whatever the working directory (tests change it).
func pgTestdata(t *testing.T, name string) string {
	t.Helper()
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", "internal", "pg", "testdata", name)
}

// fakeDataDir makes a data directory with the control file at control,
// PG_VERSION and an empty pg_wal/archive_status.
func fakeDataDir(t *testing.T, control string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pgdata")
	for _, d := range []string{"global", "pg_wal/archive_status"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(pgTestdata(t, control))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "global", "pg_control"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeSegment writes a random segment of timeline 1 into pg_wal, marks it
// .ready, and returns its name and content.
func writeSegment(t *testing.T, dataDir string, segNo int) (string, []byte) {
	t.Helper()
	name := fmt.Sprintf("00000001%08X%08X", 0, segNo)
	data := make([]byte, hookSegmentBytes)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(dataDir, "pg_wal", name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "pg_wal", "archive_status", name+".ready"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return name, data
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// hookEnv is a data directory (the working directory, as PostgreSQL runs
// its hooks) with an initialized file:// repository.
type hookEnv struct {
	dataDir, repoURL string
}

func newHookEnv(t *testing.T) hookEnv {
	t.Helper()
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("WALFERRY_SOCKET", "")
	t.Setenv("PGDATA", "")
	e := hookEnv{dataDir: fakeDataDir(t, hookControl), repoURL: "file://" + t.TempDir() + "/repo"}
	if code, _, stderr := run(t, "repo", "init", "--repo", e.repoURL, "--pgdata", e.dataDir); code != 0 {
		t.Fatalf("repo init: %d %s", code, stderr)
	}
	t.Chdir(e.dataDir)
	return e
}

func TestArchivePushGet(t *testing.T) {
	e := newHookEnv(t)
	name, data := writeSegment(t, e.dataDir, 1)

	code, out, stderr := run(t, "archive-push", "--repo", e.repoURL, "pg_wal/"+name)
	if code != 0 || out != "" || stderr != "" {
		t.Fatalf("archive-push: code %d, stdout %q, stderr %q", code, out, stderr)
	}
	// PostgreSQL repeats a call whose answer it lost: same content, 0.
	if code, _, stderr := run(t, "wal-push", "--repo", e.repoURL, "pg_wal/"+name); code != 0 {
		t.Fatalf("second archive-push: code %d, stderr %q", code, stderr)
	}
	// The data directory may also come from --pgdata, and the path be absolute.
	t.Chdir(t.TempDir())
	if code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "--pgdata", e.dataDir, filepath.Join(e.dataDir, "pg_wal", name)); code != 0 {
		t.Fatalf("archive-push with --pgdata: code %d, stderr %q", code, stderr)
	}
	t.Chdir(e.dataDir)

	code, out, stderr = run(t, "archive-get", "--repo", e.repoURL, name, "pg_wal/RECOVERYXLOG")
	if code != 0 || out != "" || stderr != "" {
		t.Fatalf("archive-get: code %d, stdout %q, stderr %q", code, out, stderr)
	}
	got, err := os.ReadFile(filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("archive-get wrote other bytes (%v)", err)
	}
	if code, _, _ := run(t, "wal-fetch", "--repo", e.repoURL, name, "pg_wal/RECOVERYXLOG"); code != 0 {
		t.Errorf("wal-fetch: code %d", code)
	}

	// A segment in no repository: 1, quickly, and not a byte of output.
	missing := fmt.Sprintf("00000001%08X%08X", 0, 9)
	start := time.Now()
	code, out, stderr = run(t, "archive-get", "--repo", e.repoURL, "--log-level", "info", missing, "pg_wal/RECOVERYXLOG.missing")
	if code != 1 || out != "" || stderr != "" {
		t.Errorf("archive-get of a missing segment: code %d, stdout %q, stderr %q; want 1 and no output", code, out, stderr)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("archive-get of a missing segment took %s", d)
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG.missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("archive-get of a missing segment created its destination (%v)", err)
	}
}

func TestArchivePushConflict(t *testing.T) {
	e := newHookEnv(t)
	name, data := writeSegment(t, e.dataDir, 2)
	if code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "pg_wal/"+name); code != 0 {
		t.Fatalf("archive-push: code %d, stderr %q", code, stderr)
	}
	other := append([]byte(nil), data...)
	other[100] ^= 1
	if err := os.WriteFile(filepath.Join(e.dataDir, "pg_wal", name), other, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "pg_wal/"+name)
	expectFailure(t, exitRepository, stderr, code, name, sum(data), sum(other))

	// Nothing was overwritten.
	if code, _, _ := run(t, "archive-get", "--repo", e.repoURL, name, "pg_wal/RECOVERYXLOG"); code != 0 {
		t.Fatal("archive-get after the conflict failed")
	}
	if got, _ := os.ReadFile(filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG")); !bytes.Equal(got, data) {
		t.Error("the archived segment changed")
	}
}

// TestArchivePushZstdDuplicates: zstd objects carry no SHA-256, so a
// repeated push compares the archived content itself: same content 0,
// other content 5 naming both SHA-256, a damaged archived copy 6 naming the
// object and the fix; nothing is overwritten.
func TestArchivePushZstdDuplicates(t *testing.T) {
	e := newHookEnv(t)
	name, data := writeSegment(t, e.dataDir, 4)
	push := func() (int, string) {
		code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "--compression", "zstd", "pg_wal/"+name)
		return code, stderr
	}
	if code, stderr := push(); code != 0 {
		t.Fatalf("archive-push: code %d, stderr %q", code, stderr)
	}
	if code, stderr := push(); code != 0 {
		t.Fatalf("archive-push of the same content again: code %d, stderr %q", code, stderr)
	}
	other := append([]byte(nil), data...)
	other[len(other)-1] ^= 1 // the last byte: the compare must read to the end
	if err := os.WriteFile(filepath.Join(e.dataDir, "pg_wal", name), other, 0o600); err != nil {
		t.Fatal(err)
	}
	code, stderr := push()
	expectFailure(t, exitRepository, stderr, code, name, sum(data), sum(other))

	key := "wal/0000000100000000/" + name
	object := filepath.Join(strings.TrimPrefix(e.repoURL, "file://"), key)
	stored := damageObject(t, object)
	if err := os.WriteFile(filepath.Join(e.dataDir, "pg_wal", name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, stderr = push()
	expectFailure(t, exitCorrupt, stderr, code, key, "delete it from the repository")
	if after, _ := os.ReadFile(object); !bytes.Equal(after, stored) {
		t.Error("the damaged object was overwritten")
	}
}

// TestArchiveWrongCluster: another cluster's repository is refused, exit 5
// for archive-push, 1 for archive-get (restore_command knows only 0 and 1).
func TestArchiveWrongCluster(t *testing.T) {
	e := newHookEnv(t)
	other := fakeDataDir(t, otherControl)
	name, _ := writeSegment(t, e.dataDir, 3)
	t.Chdir(other)
	if err := os.WriteFile(filepath.Join(other, "pg_wal", name), make([]byte, 16<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "pg_wal/"+name)
	expectFailure(t, exitRepository, stderr, code, "7711050576076627154", "7711050528598383445")
	code, _, stderr = run(t, "archive-get", "--repo", e.repoURL, name, "pg_wal/RECOVERYXLOG")
	expectFailure(t, exitFailure, stderr, code, "7711050576076627154", "7711050528598383445")
}

// TestHookUsageStatuses: mistakes exit 2 for archive-push (like every
// command) but 1 for archive-get, never above 125.
func TestHookUsageStatuses(t *testing.T) {
	e := newHookEnv(t)
	tests := []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"push without path", []string{"archive-push", "--repo", e.repoURL}, exitUsage, []string{"%p"}},
		{"push two paths", []string{"archive-push", "--repo", e.repoURL, "a", "b"}, exitUsage, []string{"one argument"}},
		{"push unknown flag", []string{"archive-push", "--bogus", "x"}, exitUsage, []string{"bogus"}},
		{"push no repository", []string{"archive-push", "pg_wal/000000010000000000000001"}, exitUsage, []string{"no repository"}},
		{"push bad ahead", []string{"archive-push", "--repo", e.repoURL, "--ahead", "-5", "pg_wal/000000010000000000000001"}, exitUsage, []string{"archive.push_ahead"}},
		{"get one argument", []string{"archive-get", "--repo", e.repoURL, "x"}, exitFailure, []string{"%f", "%p"}},
		{"get unknown flag", []string{"archive-get", "--bogus", "a", "b"}, exitFailure, []string{"bogus"}},
		{"get unknown flag before the command", []string{"--bogus", "archive-get", "a", "b"}, exitFailure, []string{"bogus"}},
		{"get bad URL", []string{"wal-fetch", "--repo", "s3:/x", "000000010000000000000001", "b"}, exitFailure, []string{"invalid repository URL"}},
		{"get no repository", []string{"archive-get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"}, exitFailure, []string{"no repository"}},
		{"get not a data directory", []string{"archive-get", "--repo", e.repoURL, "--pgdata", "/nonexistent", "000000010000000000000001", "b"}, exitFailure, []string{"/nonexistent"}},
		{"push a file that does not exist", []string{"archive-push", "--repo", e.repoURL, "pg_wal/000000010000000000000042"}, exitUsage, []string{"000000010000000000000042", "does not exist"}},
		{"push not a data directory", []string{"archive-push", "--repo", e.repoURL, "--pgdata", "/nonexistent", "pg_wal/000000010000000000000001"}, exitPostgres, []string{"/nonexistent"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, tt.args...)
			expectFailure(t, tt.code, stderr, code, tt.wants...)
		})
	}
}

// TestHookExitCodes checks exit.go's rules for the hooks.
func TestHookExitCodes(t *testing.T) {
	tests := []struct {
		hook string
		err  error
		want int
	}{
		{"archive-push", context.Canceled, exitFailure},
		{"archive-push", fmt.Errorf("x: %w", archive.ErrConflict), exitRepository},
		{"archive-push", fmt.Errorf("x: %w", repo.ErrWrongCluster), exitRepository},
		{"archive-push", usage(errors.New("x")), exitUsage},
		{"archive-push", &archive.DaemonError{Class: hookproto.ClassConflict}, exitRepository},
		{"archive-get", fmt.Errorf("x: %w", archive.ErrNotArchived), exitFailure},
		{"archive-get", context.Canceled, exitFailure},
		{"archive-get", usage(errors.New("x")), exitFailure},
		{"archive-get", fmt.Errorf("x: %w", repo.ErrWrongCluster), exitFailure},
		{"archive-get", &postgresError{errors.New("x")}, exitFailure},
	}
	for _, tt := range tests {
		if got := exitCode(&hookError{hook: tt.hook, err: tt.err}); got != tt.want {
			t.Errorf("%s: %v: exit %d, want %d", tt.hook, tt.err, got, tt.want)
		}
	}
	// Outside the hooks the general table holds.
	if got := exitCode(fmt.Errorf("x: %w", archive.ErrConflict)); got != exitRepository {
		t.Errorf("ErrConflict: exit %d, want %d", got, exitRepository)
	}
	if got := exitCode(context.Canceled); got != exitInterrupted {
		t.Errorf("context.Canceled: exit %d, want %d", got, exitInterrupted)
	}
	if !silent(fmt.Errorf("x: %w", archive.ErrNotArchived)) || silent(errors.New("x")) {
		t.Error("silent: only ErrNotArchived is reported by the exit status alone")
	}
}

// runDaemon starts "walferry daemon" in-process and returns a function
// stopping it (as SIGTERM does) that returns its exit code and stderr.
func runDaemon(t *testing.T, args ...string) (stop func() (int, string)) {
	t.Helper()
	var out, errOut syncBuffer
	a := newApp(&out, &errOut, buildInfo{Version: "test", Commit: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		err := a.Run(ctx, append([]string{"walferry", "daemon"}, args...))
		code := exitCode(err)
		if err != nil {
			a.reportError(err, code)
		}
		done <- code
	}()
	stopped := false
	stop = func() (int, string) {
		if stopped {
			return 0, errOut.String()
		}
		stopped = true
		cancel()
		select {
		case code := <-done:
			return code, errOut.String()
		case <-time.After(time.Minute):
			t.Fatal("daemon did not stop")
		}
		return 0, ""
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitSocket waits until a daemon answers on path.
func waitSocket(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no daemon on %s", path)
}

type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func (b *syncBuffer) lock() {
	if b.mu == nil {
		b.mu = make(chan struct{}, 1)
	}
	b.mu <- struct{}{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.lock()
	defer func() { <-b.mu }()
	return b.buf.String()
}

// socketPath returns a socket path short enough for unix sockets.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "walferry.sock")
}

// TestHooksWithDaemon: hooks hand their work to a live daemon (and say
// nothing about working standalone), get its answers as exit codes, and
// work standalone when it is gone.
func TestHooksWithDaemon(t *testing.T) {
	e := newHookEnv(t)
	sock := socketPath(t)
	stop := runDaemon(t, "--socket", sock, "--pgdata", e.dataDir, "--repo", e.repoURL, "--log-format", "json", "--log-level", "debug")
	waitSocket(t, sock)
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: mode %v (%v), want 0600", sock, fi.Mode(), err)
	}

	name, data := writeSegment(t, e.dataDir, 4)
	// No --repo: only the daemon can do this work.
	code, _, stderr := run(t, "archive-push", "--socket", sock, "--log-level", "info", "pg_wal/"+name)
	if code != 0 || stderr != "" {
		t.Fatalf("archive-push through the daemon: code %d, stderr %q", code, stderr)
	}
	code, _, stderr = run(t, "archive-get", "--socket", sock, "--log-level", "info", name, "pg_wal/RECOVERYXLOG")
	if code != 0 || stderr != "" {
		t.Fatalf("archive-get through the daemon: code %d, stderr %q", code, stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG")); !bytes.Equal(got, data) {
		t.Fatal("archive-get through the daemon wrote other bytes")
	}
	missing := fmt.Sprintf("00000001%08X%08X", 0, 0x77)
	code, out, stderr := run(t, "archive-get", "--socket", sock, missing, "pg_wal/RECOVERYXLOG")
	if code != 1 || out != "" || stderr != "" {
		t.Errorf("archive-get of a missing segment through the daemon: code %d, stdout %q, stderr %q", code, out, stderr)
	}
	other := append([]byte(nil), data...)
	other[0] ^= 1
	os.WriteFile(filepath.Join(e.dataDir, "pg_wal", name), other, 0o600)
	code, _, stderr = run(t, "archive-push", "--socket", sock, "pg_wal/"+name)
	expectFailure(t, exitRepository, stderr, code, sum(data), sum(other), sock)
	os.WriteFile(filepath.Join(e.dataDir, "pg_wal", name), data, 0o600)

	// The daemon refuses a hook of another data directory (same cluster).
	twin := fakeDataDir(t, hookControl)
	code, _, stderr = run(t, "archive-push", "--socket", sock, "--pgdata", twin, "pg_wal/"+name)
	expectFailure(t, exitRepository, stderr, code, twin, e.dataDir)

	// A second daemon on the same socket is refused.
	code, _, stderr = run(t, "daemon", "--socket", sock, "--pgdata", e.dataDir, "--repo", e.repoURL)
	expectFailure(t, exitFailure, stderr, code, "another walferry daemon")

	code, logs := stop()
	if code != 0 {
		t.Errorf("daemon exit code %d after SIGTERM; logs:\n%s", code, logs)
	}
	for _, want := range []string{`"msg":"daemon listening"`, `"msg":"daemon stopped"`, `"op":"push"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("daemon logs lack %s:\n%s", want, logs)
		}
	}

	// The daemon is gone: the hooks work standalone, and say so at info.
	name2, data2 := writeSegment(t, e.dataDir, 5)
	code, _, stderr = run(t, "archive-push", "--socket", sock, "--repo", e.repoURL, "--log-level", "info", "pg_wal/"+name2)
	if code != 0 || strings.Count(stderr, "daemon unreachable, working standalone") != 1 {
		t.Errorf("archive-push with a dead daemon: code %d, stderr %q", code, stderr)
	}
	code, _, stderr = run(t, "archive-get", "--socket", sock, "--repo", e.repoURL, name2, "pg_wal/RECOVERYXLOG")
	if code != 0 || stderr != "" {
		t.Errorf("archive-get with a dead daemon: code %d, stderr %q", code, stderr)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG")); !bytes.Equal(got, data2) {
		t.Error("archive-get with a dead daemon wrote other bytes")
	}

	// A socket file left by a daemon killed with SIGKILL: same.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	name3, _ := writeSegment(t, e.dataDir, 6)
	if code, _, stderr := run(t, "archive-push", "--socket", sock, "--repo", e.repoURL, "pg_wal/"+name3); code != 0 {
		t.Errorf("archive-push with a stale socket: code %d, stderr %q", code, stderr)
	}
	// And a new daemon replaces the stale socket.
	stop = runDaemon(t, "--socket", sock, "--pgdata", e.dataDir, "--repo", e.repoURL)
	waitSocket(t, sock)
	if code, _, stderr := run(t, "archive-get", "--socket", sock, name3, "pg_wal/RECOVERYXLOG"); code != 0 {
		t.Errorf("archive-get through the new daemon: code %d, stderr %q", code, stderr)
	}
	stop()
}

func TestDaemonUsage(t *testing.T) {
	e := newHookEnv(t)
	code, _, stderr := run(t, "daemon", "--pgdata", e.dataDir, "--repo", e.repoURL)
	expectFailure(t, exitUsage, stderr, code, "--socket")
	code, _, stderr = run(t, "daemon", "--socket", socketPath(t), "--repo", e.repoURL)
	expectFailure(t, exitUsage, stderr, code, "--pgdata")
	code, _, stderr = run(t, "daemon", "--socket", socketPath(t), "--pgdata", e.dataDir)
	expectFailure(t, exitUsage, stderr, code, "no repository")
}

// TestHookSignals runs archive-get as a real process waiting on a daemon
// that never answers, and sends it each signal PostgreSQL may send: it must
// exit 1, not die by the signal.
func TestHookSignals(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes")
	}
	e := newHookEnv(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT} {
		for _, hook := range []string{"archive-get", "archive-push"} {
			t.Run(hook+" "+sig.String(), func(t *testing.T) {
				sock := socketPath(t)
				ln, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				accepted := make(chan net.Conn, 1)
				go func() {
					conn, err := ln.Accept()
					if err == nil {
						bufio.NewReader(conn).ReadBytes('\n')
						accepted <- conn // held open, never answered
					}
				}()
				args := []string{hook, "--socket", sock, "--repo", e.repoURL, "000000010000000000000001", "pg_wal/RECOVERYXLOG"}
				if hook == "archive-push" {
					args = args[:len(args)-1]
				}
				cmd := exec.Command(os.Args[0], args...)
				cmd.Env = append(os.Environ(), "WALFERRY_TEST_AS_MAIN=1")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				select {
				case conn := <-accepted:
					defer conn.Close()
				case <-time.After(30 * time.Second):
					cmd.Process.Kill()
					t.Fatal("the hook never asked the daemon")
				}
				cmd.Process.Signal(sig)
				err = cmd.Wait()
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					t.Fatalf("hook: %v, want exit status 1", err)
				}
				ws := ee.Sys().(syscall.WaitStatus)
				if ws.Signaled() || ws.ExitStatus() != 1 {
					t.Errorf("hook after %s: %v (signaled %v, status %d), want exit status 1; stderr %q",
						sig, err, ws.Signaled(), ws.ExitStatus(), stderr.String())
				}
				if strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 || strings.Contains(stderr.String(), "goroutine") {
					t.Errorf("stderr is not one line: %q", stderr.String())
				}
			})
		}
	}
}

// TestArchiveGetByHand: a one-off archive-get outside a data directory
// needs no --pgdata (the repository says which cluster it is) and writes
// exactly the file asked for: prefetch is for recovery's RECOVERYXLOG
// calls, which still fill the spool.
func TestArchiveGetByHand(t *testing.T) {
	e := newHookEnv(t)
	var names []string
	var datas [][]byte
	for i := 1; i <= 6; i++ {
		name, data := writeSegment(t, e.dataDir, i)
		if code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "pg_wal/"+name); code != 0 {
			t.Fatalf("archive-push %s: %d %s", name, code, stderr)
		}
		names, datas = append(names, name), append(datas, data)
	}
	elsewhere := t.TempDir()
	t.Chdir(elsewhere)
	code, out, stderr := run(t, "archive-get", "--repo", e.repoURL, "--prefetch", "4", names[0], "copy")
	if code != 0 || out != "" || stderr != "" {
		t.Fatalf("archive-get by hand: code %d, stdout %q, stderr %q", code, out, stderr)
	}
	if got, err := os.ReadFile(filepath.Join(elsewhere, "copy")); err != nil || !bytes.Equal(got, datas[0]) {
		t.Fatalf("archive-get by hand wrote other bytes (%v)", err)
	}
	if got := dirEntries(t, elsewhere); !slices.Equal(got, []string{"copy"}) {
		t.Errorf("archive-get by hand left %v next to its destination, want only [copy]", got)
	}

	// Recovery's call prefetches the following segments into the spool.
	t.Chdir(e.dataDir)
	if code, _, stderr := run(t, "archive-get", "--repo", e.repoURL, "--prefetch", "4", names[0], "pg_wal/RECOVERYXLOG"); code != 0 {
		t.Fatalf("archive-get for recovery: %d %s", code, stderr)
	}
	if got := dirEntries(t, filepath.Join(e.dataDir, "pg_wal", ".walferry", "prefetch")); len(got) == 0 {
		t.Error("recovery's archive-get prefetched nothing")
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestMissingRepositoryDirectory: a file:// repository whose directory is
// gone (an unmounted NFS volume) is reported once, as missing, asking about
// the mount; never "mkdir -p", which would start a second, empty archive.
func TestMissingRepositoryDirectory(t *testing.T) {
	e := newHookEnv(t)
	name, _ := writeSegment(t, e.dataDir, 1)
	gone := "file://" + filepath.Join(t.TempDir(), "nfs", "repo")
	code, _, stderr := run(t, "archive-push", "--repo", gone, "pg_wal/"+name)
	expectFailure(t, exitRepository, stderr, code, "missing", "mounted", "repo init")
	if strings.Contains(stderr, "mkdir") || strings.Count(stderr, "does not exist") > 1 {
		t.Errorf("archive-push to a missing directory: %s", stderr)
	}
	if _, err := os.Stat(strings.TrimPrefix(gone, "file://")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("archive-push created the missing repository directory (%v)", err)
	}
}
