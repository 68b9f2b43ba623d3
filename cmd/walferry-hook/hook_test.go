package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/testbin"
)

// TestMain runs this test binary as walferry-hook itself when
// WALFERRY_HOOK_TEST_AS_MAIN=1, and removes the binaries the integration
// tests built.
func TestMain(m *testing.M) {
	if os.Getenv("WALFERRY_HOOK_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// asHook is the command line that runs this test binary as walferry-hook.
func asHook(args ...string) []string {
	return append([]string{os.Args[0]}, args...)
}

// pgTestdata is a file of internal/pg's test data: real PostgreSQL 15
// control files. pg15-default has 16 MiB segments, pg15-wal1-standby
// 1 MiB ones and another system identifier.
func pgTestdata(name string) string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(self), "..", "..", "internal", "pg", "testdata", name)
}

// dataDir makes a data directory with the control file of internal/pg's
// test data named control, PG_VERSION and pg_wal/archive_status: what the
// hooks and the daemon read.
func dataDir(t *testing.T, control string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pgdata")
	if err := os.MkdirAll(filepath.Join(dir, "pg_wal", "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "global"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pgTestdata(control))
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

// socketPath returns a socket path short enough for unix sockets.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wfh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "walferry.sock")
}

// result is how a process ended.
type result struct {
	code           int
	stdout, stderr string
}

// run runs argv in dir with the environment of this process less
// walferry's settings, plus env.
func run(t *testing.T, dir string, env []string, argv ...string) result {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "WALFERRY_") && k != "PGDATA" && k != "KUBERNETES_SERVICE_HOST" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %v", argv, err)
	}
	return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

// recorder writes a stand-in for walferry that records its argument vector
// (NUL-separated, into the file WALFERRY_HOOK_TEST_RECORD), prints a line
// on each output and exits 42.
func recorder(t *testing.T) (bin, record string) {
	t.Helper()
	dir := t.TempDir()
	bin, record = filepath.Join(dir, "walferry"), filepath.Join(dir, "argv")
	script := "#!/bin/sh\nprintf '%s\\0' \"$0\" \"$@\" > \"$WALFERRY_HOOK_TEST_RECORD\"\necho out; echo err >&2\nexit 42\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, record
}

// TestExecWalferry: every call walferry-hook does not serve itself runs
// walferry with the same arguments and environment, whose exit status,
// stdout and stderr are the call's.
func TestExecWalferry(t *testing.T) {
	data := dataDir(t, "pg15-default.pg_control")
	bin, record := recorder(t)
	dead := socketPath(t) // nobody listens there
	config := filepath.Join(t.TempDir(), "walferry.yaml")
	os.WriteFile(config, []byte("archive:\n  socket: "+dead+"\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  []string
	}{
		{"no socket", []string{"archive-push", "pg_wal/000000010000000000000001"}, nil},
		{"no daemon on the socket", []string{"archive-push", "--socket", dead, "pg_wal/000000010000000000000001"}, nil},
		{"no daemon, get", []string{"wal-fetch", "000000010000000000000001", "pg_wal/RECOVERYXLOG"}, []string{"WALFERRY_SOCKET=" + dead}},
		{"configuration file", []string{"archive-get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"}, []string{"WALFERRY_CONFIG=" + config}},
		{"unknown flag", []string{"archive-push", "--socket", dead, "--frobnicate", "x"}, nil},
		{"help of a hook", []string{"archive-get", "--help"}, []string{"WALFERRY_SOCKET=" + dead}},
		{"not a data directory", []string{"archive-push", "--pgdata", "/nonexistent", "x"}, []string{"WALFERRY_SOCKET=" + dead}},
		{"another command", []string{"repo", "info", "--repo", "file:///x"}, []string{"WALFERRY_SOCKET=" + dead}},
		{"wrong number of arguments", []string{"archive-get", "x"}, []string{"WALFERRY_SOCKET=" + dead}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(record)
			env := append([]string{"WALFERRY_HOOK_TEST_AS_MAIN=1", "WALFERRY_BIN=" + bin, "WALFERRY_HOOK_TEST_RECORD=" + record}, tt.env...)
			got := run(t, data, env, asHook(tt.args...)...)
			if got.code != 42 || got.stdout != "out\n" || got.stderr != "err\n" {
				t.Fatalf("got exit %d, stdout %q, stderr %q; want walferry's 42, out, err", got.code, got.stdout, got.stderr)
			}
			raw, err := os.ReadFile(record)
			if err != nil {
				t.Fatal(err)
			}
			argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
			if want := append([]string{bin}, tt.args...); !slices.Equal(argv, want) {
				t.Errorf("walferry ran with %q, want %q", argv, want)
			}
		})
	}

	t.Run("WALFERRY_BIN is walferry-hook", func(t *testing.T) {
		got := run(t, data, []string{"WALFERRY_HOOK_TEST_AS_MAIN=1", "WALFERRY_BIN=" + os.Args[0]}, asHook("archive-push", "x")...)
		if got.code != 1 || !strings.HasPrefix(got.stderr, "walferry-hook: error: cannot run walferry") || strings.Count(got.stderr, "\n") != 1 {
			t.Errorf("got exit %d, stderr %q; want 1 and one line", got.code, got.stderr)
		}
	})
	t.Run("no walferry", func(t *testing.T) {
		got := run(t, data, []string{"WALFERRY_HOOK_TEST_AS_MAIN=1", "PATH=" + t.TempDir()}, asHook("archive-get", "a", "b")...)
		if got.code != 1 || !strings.Contains(got.stderr, "nor in PATH") || strings.Count(got.stderr, "\n") != 1 {
			t.Errorf("got exit %d, stderr %q; want 1 and one line", got.code, got.stderr)
		}
	})
}

func TestHelp(t *testing.T) {
	got := run(t, t.TempDir(), []string{"WALFERRY_HOOK_TEST_AS_MAIN=1"}, asHook("--help")...)
	for _, want := range []string{"walferry-hook archive-push", "WALFERRY_SOCKET", "WHEN IT RUNS WALFERRY", "WALFERRY_BIN", "EXIT STATUS"} {
		if got.code != 0 || !strings.Contains(got.stdout, want) {
			t.Errorf("--help: exit %d, output lacks %q:\n%s", got.code, want, got.stdout)
		}
	}
	if got := run(t, t.TempDir(), []string{"WALFERRY_HOOK_TEST_AS_MAIN=1"}, asHook()...); got.code != 2 || !strings.Contains(got.stderr, "SYNOPSIS") {
		t.Errorf("no arguments: exit %d, stderr %q; want 2 and the help", got.code, got.stderr)
	}
}

// TestHookSignals holds a call in flight on a socket that takes the
// request and never answers, and sends each signal PostgreSQL may send:
// the hook exits 1 with one line, never dies by the signal.
func TestHookSignals(t *testing.T) {
	data := dataDir(t, "pg15-default.pg_control")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT} {
		for _, args := range [][]string{{"archive-get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"}, {"archive-push", "pg_wal/000000010000000000000001"}} {
			t.Run(args[0]+" "+sig.String(), func(t *testing.T) {
				sock := socketPath(t)
				ln, err := net.Listen("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				accepted := make(chan net.Conn, 1)
				go func() {
					if conn, err := ln.Accept(); err == nil {
						bufio.NewReader(conn).ReadBytes('\n')
						accepted <- conn
					}
				}()
				cmd := exec.Command(os.Args[0], args...)
				cmd.Dir = data
				cmd.Env = append(os.Environ(), "WALFERRY_HOOK_TEST_AS_MAIN=1", "WALFERRY_SOCKET="+sock, "WALFERRY_BIN=/nonexistent")
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
				ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if ws.Signaled() || ws.ExitStatus() != 1 {
					t.Errorf("after %s: %v (signaled %v), want exit status 1; stderr %q", sig, err, ws.Signaled(), stderr.String())
				}
				if s := stderr.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "walferry-hook: error: ") || !strings.Contains(s, "canceled") {
					t.Errorf("stderr is not one line: %q", s)
				}
			})
		}
	}
}

var hookBuild struct {
	once sync.Once
	path string
	err  error
}

// binaries builds walferry (internal/testbin) and walferry-hook next to
// it, as make install puts them.
func binaries(t *testing.T) (walferry, hook string) {
	t.Helper()
	walferry = testbin.Walferry(t)
	hookBuild.once.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		out := filepath.Join(filepath.Dir(walferry), "walferry-hook")
		cmd := exec.Command(goCmd, "build", "-trimpath", "-o", out, "github.com/walferry/walferry/cmd/walferry-hook")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			hookBuild.err = fmt.Errorf("%w\n%s", err, b)
			return
		}
		hookBuild.path = out
	})
	if hookBuild.err != nil {
		t.Fatalf("build walferry-hook: %v", hookBuild.err)
	}
	return walferry, hookBuild.path
}

// startDaemon runs "walferry daemon" as a process until stop (SIGTERM),
// which returns its exit status and output.
func startDaemon(t *testing.T, walferry, sock, data, repoURL string) (stop func() result) {
	t.Helper()
	cmd := exec.Command(walferry, "daemon", "--socket", sock, "--pgdata", data, "--repo", repoURL)
	cmd.Dir = data
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop = func() result {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			t.Fatal("the daemon did not stop within a minute")
		}
		return result{code: cmd.ProcessState.ExitCode(), stderr: out.String()}
	}
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			stop()
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return stop
		}
		select {
		case <-done:
			t.Fatalf("the daemon exited: %s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no daemon on %s after 30s: %s", sock, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// segment writes a random 16 MiB segment into pg_wal, marked .ready.
func segment(t *testing.T, data string, n int) (name string, content []byte) {
	t.Helper()
	name = fmt.Sprintf("00000001%08X%08X", 0, n)
	content = make([]byte, 16<<20)
	rand.Read(content)
	if err := os.WriteFile(filepath.Join(data, "pg_wal", name), content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "pg_wal", "archive_status", name+".ready"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return name, content
}

// TestHookWithDaemon runs both binaries against a real walferry daemon on
// a file:// repository, for a data directory with the control file of a
// real PostgreSQL 15 cluster (16 MiB segments).
func TestHookWithDaemon(t *testing.T) {
	walferry, hook := binaries(t)
	data := dataDir(t, "pg15-default.pg_control")
	repoURL := "file://" + filepath.Join(t.TempDir(), "repo")
	if r := run(t, data, nil, walferry, "repo", "init", "--repo", repoURL, "--pgdata", data); r.code != 0 {
		t.Fatalf("repo init: %+v", r)
	}
	sock := socketPath(t)
	stop := startDaemon(t, walferry, sock, data, repoURL)

	// No repository and no walferry: only the daemon can do this work.
	viaDaemon := []string{"WALFERRY_SOCKET=" + sock, "WALFERRY_BIN=/nonexistent/walferry"}
	name, content := segment(t, data, 1)
	if r := run(t, data, viaDaemon, hook, "archive-push", "pg_wal/"+name); r != (result{}) {
		t.Fatalf("archive-push: %+v, want exit 0 and no output", r)
	}
	if r := run(t, data, viaDaemon, hook, "archive-get", name, "pg_wal/RECOVERYXLOG"); r != (result{}) {
		t.Fatalf("archive-get: %+v, want exit 0 and no output", r)
	}
	if got, err := os.ReadFile(filepath.Join(data, "pg_wal", "RECOVERYXLOG")); err != nil || !bytes.Equal(got, content) {
		t.Fatalf("archive-get wrote other bytes (%v)", err)
	}
	missing := fmt.Sprintf("00000001%08X%08X", 0, 0x77)
	if r := run(t, data, viaDaemon, hook, "archive-get", missing, "pg_wal/RECOVERYXLOG"); r != (result{code: 1}) {
		t.Errorf("archive-get of a missing segment: %+v, want exit 1 and no output", r)
	}

	// The daemon's refusals: walferry-hook exits as walferry does, with
	// walferry's message.
	twin := dataDir(t, "pg15-default.pg_control") // same cluster, another data directory
	other := append([]byte(nil), content...)
	other[0] ^= 1
	os.WriteFile(filepath.Join(data, "pg_wal", name), other, 0o600)
	for _, tt := range []struct {
		name, dir string
		args      []string
		code      int
	}{
		{"push conflict", data, []string{"archive-push", "pg_wal/" + name}, 5},
		{"push from another data directory", data, []string{"archive-push", "--pgdata", twin, "pg_wal/" + name}, 5},
		{"get from another data directory", twin, []string{"archive-get", name, "pg_wal/RECOVERYXLOG"}, 1},
	} {
		h := run(t, tt.dir, viaDaemon, append([]string{hook}, tt.args...)...)
		w := run(t, tt.dir, viaDaemon, append([]string{walferry}, tt.args...)...)
		if h.code != tt.code || w.code != tt.code {
			t.Errorf("%s: walferry-hook exit %d, walferry exit %d, want %d", tt.name, h.code, w.code, tt.code)
		}
		if msg, ok := strings.CutPrefix(h.stderr, "walferry-hook: error: "); !ok || "walferry: error: "+msg != w.stderr || !strings.Contains(msg, sock) {
			t.Errorf("%s: walferry-hook says %q, walferry %q", tt.name, h.stderr, w.stderr)
		}
	}
	os.WriteFile(filepath.Join(data, "pg_wal", name), content, 0o600)

	// The cost of a call, for the log: get of a missing segment.
	for _, bin := range []string{walferry, hook} {
		var d []time.Duration
		for range 20 {
			start := time.Now()
			run(t, data, viaDaemon, bin, "archive-get", missing, "pg_wal/RECOVERYXLOG")
			d = append(d, time.Since(start))
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		t.Logf("%s archive-get of a missing segment through the daemon: median %s", filepath.Base(bin), d[len(d)/2])
	}

	// The daemon stops: walferry-hook runs the walferry next to it, which
	// works standalone.
	if r := stop(); r.code != 0 {
		t.Fatalf("daemon: exit %d after SIGTERM:\n%s", r.code, r.stderr)
	}
	standalone := []string{"WALFERRY_SOCKET=" + sock, "WALFERRY_REPO=" + repoURL, "WALFERRY_LOG_LEVEL=info"}
	name2, content2 := segment(t, data, 2)
	if r := run(t, data, standalone, hook, "archive-push", "pg_wal/"+name2); r.code != 0 || !strings.Contains(r.stderr, "daemon unreachable, working standalone") {
		t.Errorf("archive-push without the daemon: %+v, want exit 0 and walferry's notice", r)
	}
	if r := run(t, data, standalone, hook, "archive-get", name2, "pg_wal/RECOVERYXLOG"); r.code != 0 {
		t.Errorf("archive-get without the daemon: %+v", r)
	}
	if got, err := os.ReadFile(filepath.Join(data, "pg_wal", "RECOVERYXLOG")); err != nil || !bytes.Equal(got, content2) {
		t.Errorf("archive-get without the daemon wrote other bytes (%v)", err)
	}
	if r := run(t, data, standalone, hook, "archive-get", missing, "pg_wal/RECOVERYXLOG"); r.code != 1 || r.stdout != "" {
		t.Errorf("archive-get of a missing segment without the daemon: %+v, want exit 1", r)
	}
}

// TestFlagsMatchWalferry compares walferry-hook's flags with those
// walferry's hooks list in their --help: names, aliases, environment
// variables, whether they take a value, and the defaults walferry-hook
// reads.
func TestFlagsMatchWalferry(t *testing.T) {
	walferry, _ := binaries(t)
	for hook, own := range hookFlags {
		t.Run(hook, func(t *testing.T) {
			r := run(t, t.TempDir(), nil, walferry, hook, "--help")
			_, options, ok := strings.Cut(r.stdout, "OPTIONS:")
			if r.code != 0 || !ok {
				t.Fatalf("walferry %s --help: %+v", hook, r)
			}
			want := map[string]flagDef{}
			for _, d := range append(append([]flagDef(nil), commonFlags...), own...) {
				want[d.name] = d
			}
			defaults := map[string]string{"log-format": defaultLogFormat, "log-level": defaultLogLevel}
			seen := 0
			for _, line := range strings.Split(options, "\n") {
				// "   --repo URL, -r URL [ ... ]  usage [$WALFERRY_REPO]"
				spec, usage, _ := strings.Cut(strings.TrimSpace(line), "  ")
				if !strings.HasPrefix(spec, "--") || strings.HasPrefix(spec, "--help") {
					continue
				}
				fields := strings.Fields(strings.ReplaceAll(spec, ",", ""))
				name := strings.TrimPrefix(fields[0], "--")
				d, ok := want[name]
				if !ok {
					t.Errorf("walferry %s has --%s, walferry-hook does not know it", hook, name)
					continue
				}
				seen++
				var alias string
				for _, f := range fields[1:] {
					if a, ok := strings.CutPrefix(f, "-"); ok && !strings.HasPrefix(f, "--") {
						alias = a
					}
				}
				env := ""
				if i := strings.LastIndex(usage, "[$"); i >= 0 {
					// A command's copy of a common flag names its variable
					// before its default (see withCommonFlags).
					env, _, _ = strings.Cut(usage[i+2:], "]")
				}
				takesValue := len(fields) > 1 && !strings.HasPrefix(fields[1], "-")
				if alias != d.alias || env != d.env || takesValue != (d.kind != boolFlag) {
					t.Errorf("--%s: walferry has alias %q, variable %q, value %v; walferry-hook %+v", name, alias, env, takesValue, d)
				}
				if def, ok := defaults[name]; ok && !strings.Contains(usage, fmt.Sprintf("(default: %q)", def)) {
					t.Errorf("--%s: walferry's default is not %q: %s", name, def, usage)
				}
			}
			if seen != len(want) {
				t.Errorf("walferry %s --help lists %d of walferry-hook's %d flags", hook, seen, len(want))
			}
		})
	}
}
