package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// badCase is one command line a user could get wrong: every one must end
// at once with the documented exit code (2, or 1 for archive-get, whose
// every failure is 1: exit.go), one line on stderr naming the argument,
// no Go panic, and nothing written anywhere.
type badCase struct {
	args  []string
	wants []string // substrings of stderr: the bad argument, the fix
}

// badInputEnv is what the cases refer to: a data directory made of a
// control file, an initialized filesystem repository, and the working
// directory, three levels below the root every case is checked under (so
// "../../x" stays inside it).
type badInputEnv struct {
	root, pgdata, repoURL, cwd, target string
}

const (
	huge   = "99999999999999999999"
	aWAL   = "000000010000000000000001"
	badSeg = aWAL + "/../x"
)

// badInputCases lists, for every command of the tree (its full name),
// the bad command lines to try. TestBadInput fails for a command that has
// none, so a new command must bring its own.
func badInputCases(e badInputEnv) map[string][]badCase {
	long := strings.Repeat("a", 5000)
	R := []string{"--repo", e.repoURL}
	P := []string{"--pgdata", e.pgdata}
	with := func(pre []string, rest ...string) []string { return append(append([]string(nil), pre...), rest...) }
	return map[string][]badCase{
		"": {
			{[]string{"frobnicate"}, []string{`"frobnicate"`, "--help"}},
			{[]string{"help", "frobnicate"}, []string{`"frobnicate"`}},
			{[]string{"--concurrency", huge, "repo", "info"}, []string{"concurrency", huge}},
			{[]string{"--log-level", "loud", "repo", "info", "--repo", e.repoURL}, []string{"log-level", "loud", "fix"}},
		},
		"repo": {
			{nil, []string{"needs a command", "init"}},
			{[]string{"frob"}, []string{`"frob"`, "init"}},
		},
		"repo init": {
			{with(R, "extra"), []string{"takes no arguments", "extra"}},
			{with(P, "--repo", "s3:/x"), []string{"invalid repository URL", "s3:/x"}},
			{with(R, "--compression", "lz5"), []string{"compression", "lz5"}},
		},
		"repo check": {
			{with(R, "--concurrency", "-5"), []string{"concurrency", "-5", "fix"}},
			{[]string{"--repo", "ftp://x/y"}, []string{"unknown scheme", "ftp"}},
		},
		"repo info": {
			{with(R, "extra"), []string{"takes no arguments"}},
			{[]string{"--config", "/nonexistent/w.yaml"}, []string{"/nonexistent/w.yaml"}},
			{[]string{"--repo", "file://" + string([]byte{0x7f}) + "x"}, []string{"repository URL"}},
		},
		"archive-push": {
			{R, []string{"%p"}},
			{with(R, "../../etc/passwd"), []string{"passwd", "not a WAL file name"}},
			{with(R, badSeg), []string{badSeg, "not a WAL file name"}},
			{with(R, "pg_wal/notawal"), []string{"notawal", "not a WAL file name"}},
			{with(R, long), []string{"not a WAL file name", "(5000 bytes)"}},
			{with(R, "--ahead", huge, "pg_wal/"+aWAL), []string{"ahead", huge}},
			{with(R, "--ahead", "abc", "pg_wal/"+aWAL), []string{"ahead", "abc"}},
		},
		"archive-get": {
			{with(R, aWAL), []string{"%f", "%p"}},
			{with(R, "../../etc/passwd", "pg_wal/RECOVERYXLOG"), []string{"passwd", "not a WAL file name"}},
			{with(R, badSeg, "pg_wal/RECOVERYXLOG"), []string{badSeg, "not a WAL file name"}},
			{with(R, "00000000000000000000000Z", "pg_wal/RECOVERYXLOG"), []string{"0000000Z", "not a WAL file name"}},
			{with(R, aWAL, ""), []string{"empty destination"}},
			{with(R, "--prefetch", huge, aWAL, "x"), []string{"prefetch", huge}},
		},
		"daemon": {
			{with(R, P...), []string{"--socket"}},
			{with(R, "--socket", "../../s.sock", "--shutdown-timeout", "5x"), []string{"shutdown-timeout", "5x"}},
			{with(R, "--socket", "../../s.sock", "--shutdown-timeout", "-1s"), []string{"shutdown-timeout", "positive"}},
			{with(R, "--socket", "../../s.sock", "--pgdata", e.pgdata, "--metrics-address", "nope"), []string{"metrics-address", "nope", "HOST:PORT"}},
			{with(R, "extra"), []string{"takes no arguments"}},
		},
		"wal-receive": {
			{with(R, "--slot", "../x"), []string{"slot", "../x"}},
			{with(R, "--slot", "ok", "--partial-interval", "0s"), []string{"partial-interval", "positive"}},
			{with(R, "--slot", "ok", "--max-attempts", "-1"), []string{"max-attempts"}},
			{with(R, "--slot", "ok", "--pg-conn", "port=zz"), []string{"connection", "port"}},
			{with(R, "--slot", "ok", "--metrics-address", "nope"), []string{"metrics-address", "nope"}},
		},
		"backup-push": {
			{with(R, "extra"), []string{"takes no arguments"}},
			{with(R, "--jobs", "-1"), []string{"jobs", "-1"}},
			{with(R, "--incremental", "--full"), []string{"--incremental", "--full"}},
			{with(R, "--archive-timeout", "0s"), []string{"archive-timeout", "positive"}},
			{with(R, "--remote", "--server-compression", "lz5"), []string{"server-compression", "lz5"}},
		},
		"backup-list": {
			{with(R, "extra"), []string{"no arguments", "extra"}},
		},
		"backup-show": {
			{R, []string{"backup id"}},
			{with(R, "../../x"), []string{`"../../x"`, "not a backup id", "backup-list"}},
			{with(R, long), []string{"not a backup id"}},
			{with(R, "LATEST", "extra"), []string{"one backup id"}},
		},
		"backup-delete": {
			{R, []string{"--retain-full"}},
			{with(R, "--retain-full", huge), []string{"retain-full", huge}},
			{with(R, "--retain-full", "-1"), []string{"retain-full", "-1"}},
			{with(R, "--before", "yesterday"), []string{"before", "yesterday"}},
			{with(R, "--before", huge+"d"), []string{"before", huge}},
			{with(R, "../x"), []string{`"../x"`, "not a backup id"}},
		},
		"verify": {
			{with(R, "../x"), []string{`"../x"`, "not a backup id"}},
			{with(R, "a", "b"), []string{"at most one"}},
			{with(R, "--jobs", "0"), []string{"jobs", "0"}},
		},
		"restore": {
			{with(R, "--pgdata", e.target), []string{"backup id", "LATEST"}},
			{with(R, "--pgdata", e.target, "../x"), []string{`"../x"`, "not a backup id"}},
			{with(R, "--pgdata", e.target, "--target-lsn", "zz", "LATEST"), []string{"target-lsn", "zz"}},
			{with(R, "--pgdata", e.target, "--target-time", "nope", "LATEST"), []string{"target-time", "nope"}},
			{with(R, "--pgdata", e.target, "--target-xid", "-1", "LATEST"), []string{"target-xid", "-1"}},
			{with(R, "--pgdata", e.target, "--target-timeline", "abc", "LATEST"), []string{"target-timeline", "abc"}},
			{with(R, "--pgdata", e.target, "--tablespace-map", "foo", "LATEST"), []string{"tablespace-map", "foo"}},
			{with(R, "--pgdata", e.target, "--tablespace-map", "1=../../ts", "LATEST"), []string{"tablespace-map", "../../ts"}},
			{with(R, "--pgdata", e.target, "--target-action", "jump", "LATEST"), []string{"target-action", "jump"}},
			{with(R, "--pgdata", e.target, "--jobs", "-3", "LATEST"), []string{"jobs", "-3"}},
			{with(R, "--pgdata", e.target, "--alter-system-reset", "../x", "LATEST"), []string{"alter-system-reset", "../x"}},
			{with(R, "LATEST"), []string{"--pgdata"}},
		},
		"bootstrap": {
			{R, []string{"--pgdata"}},
			{with(R, "--pgdata", e.target, "--auto-max-wal-ratio", "-1"), []string{"auto-max-wal-ratio", "-1"}},
			{with(R, "--pgdata", e.target, "--auto-max-wal-ratio", "abc"), []string{"auto-max-wal-ratio", "abc"}},
			{with(R, "--pgdata", e.target, "--backup", "../../x"), []string{`"../../x"`, "not a backup id"}},
			{with(R, "--pgdata", e.target, "--slot", "../x"), []string{"slot", "../x"}},
			{with(R, "--pgdata", e.target, "--from", "nowhere"), []string{"from", "nowhere"}},
			{with(R, "--pgdata", e.target, "--from", "primary", "--source-conn", "port=zz"), []string{"source-conn", "port"}},
		},
		"sidecar": {
			{with(R, "extra"), []string{"no arguments"}},
			{with(with(R, P...), "--backup-schedule", "61 * * * *"), []string{"backup-schedule", "61"}},
			{with(with(R, P...), "--max-slot-retained", "10XB"), []string{"max-slot-retained", "10XB"}},
			{with(with(R, P...), "--max-slot-retained", huge+"GB"), []string{"max-slot-retained", huge}},
			{with(with(R, P...), "--listen", "nope"), []string{"listen", "nope"}},
			{with(with(R, P...), "--interval", "0s"), []string{"interval", "positive"}},
			{with(with(R, P...), "--backup-full-every", "-1"), []string{"backup-full-every", "-1"}},
			{with(with(R, P...), "--standby-slot", "../x"), []string{"../x", "slot"}},
			{with(with(R, P...), "--follow", "nope"), []string{"follow", "nope"}},
			{with(with(R, P...), "--kubeconfig", "/nonexistent/kubeconfig"), []string{"kubeconfig", "/nonexistent/kubeconfig"}},
		},
		"status": {
			{[]string{"--sidecar", "http://[::1"}, []string{"sidecar", "[::1"}},
			{[]string{"--sidecar", "h:" + huge}, []string{"sidecar", huge}},
			{[]string{"--fail-on", "sometimes"}, []string{"fail-on", "sometimes"}},
			{[]string{"extra"}, []string{"no arguments"}},
		},
		"demote": {
			{with(R, "extra"), []string{"no arguments"}},
			{with(with(R, P...), "--stop-timeout", "-1s"), []string{"stop-timeout", "positive"}},
			{with(with(R, P...), "--source-conn", "port=zz"), []string{"source-conn", "port"}},
			{with(with(R, P...), "--slot", "../x"), []string{"slot", "../x"}},
		},
		"promote": {
			{with(R, "extra"), []string{"no arguments"}},
			{with(with(R, P...), "--wait", "-5s"), []string{"wait", "positive"}},
			{with(with(R, P...), "--wait", "5"), []string{"wait", `"5"`}},
		},
		"rejoin": {
			{with(R, "extra"), []string{"no arguments"}},
			{with(with(R, P...), "--source-conn", "port=zz"), []string{"source-conn", "port"}},
			{with(with(R, P...), "--slot", "../x"), []string{"slot", "../x"}},
		},
		"k8s": {
			{nil, []string{"needs a command", "render"}},
			{[]string{"frob"}, []string{`"frob"`, "render"}},
		},
		"k8s render": {
			{[]string{"--name", "x"}, []string{"--site"}},
			{[]string{"--site", "moon", "--name", "x"}, []string{"site", "moon"}},
			{[]string{"--site", "primary", "--name", "../x"}, []string{"name", "../x"}},
			{[]string{"--site", "primary", "--name", "x", "--instances", huge}, []string{"instances", huge}},
			{[]string{"--site", "standby", "--name", "x", "--standby-instances", "-1"}, []string{"standby-instances", "-1"}},
			{[]string{"--site", "primary", "--name", "x", "--instances", "0"}, []string{"instances", "0"}},
			{[]string{"--site", "primary", "--name", "x", "--storage-size", "10XB"}, []string{"storage-size", "10XB"}},
			{[]string{"--site", "primary", "--name", "x", "--repo", "s3://b/p", "--backup-schedule", "bad cron"}, []string{"backup-schedule", "bad cron"}},
			{[]string{"--site", "primary", "--name", "x", "--repo", "s3://b/p", "--load-balancer-source-range", "1.2.3.4/99"}, []string{"load-balancer-source-range", "1.2.3.4/99"}},
			{[]string{"--site", "primary", "--name", "x", "extra"}, []string{"no arguments"}},
		},
		"version": {
			{[]string{"extra"}, []string{"no arguments"}},
			{[]string{"--bogus"}, []string{"bogus"}},
		},
		"switchover": {
			{nil, []string{"not in this build"}},
			{[]string{"--to", "../x"}, []string{"not in this build"}},
		},
	}
}

// commandTree returns the full names of every command and subcommand of
// the app as newApp builds it.
func commandTree() []string {
	var names []string
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			name := strings.TrimSpace(prefix + " " + c.Name)
			names = append(names, name)
			walk(name, c.Subcommands)
		}
	}
	walk("", newApp(io.Discard, io.Discard, buildInfo{}).cli.Commands)
	return names
}

// TestBadInput runs this test binary as walferry (TestMain) for every
// command with missing, malformed and hostile arguments.
func TestBadInput(t *testing.T) {
	root := t.TempDir()
	e := badInputEnv{
		root:    root,
		pgdata:  filepath.Join(root, "pgdata"),
		repoURL: "file://" + filepath.Join(root, "repo"),
		cwd:     filepath.Join(root, "a", "b", "cwd"),
		target:  filepath.Join(root, "a", "b", "cwd", "target"),
	}
	for _, d := range []string{"pgdata/global", "pgdata/pg_wal/archive_status", "a/b/cwd", "home", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	control, err := os.ReadFile(pgTestdata(t, hookControl))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.pgdata, "global", "pg_control"), control, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.pgdata, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	if code, _, stderr := run(t, "repo", "init", "--repo", e.repoURL, "--pgdata", e.pgdata); code != 0 {
		t.Fatalf("repo init: %d %s", code, stderr)
	}

	cases := badInputCases(e)
	for _, name := range append([]string{""}, commandTree()...) {
		if len(cases[name]) == 0 {
			t.Errorf("command %q has no bad-input cases: add them to badInputCases", name)
		}
	}
	names := make([]string, 0, len(cases))
	for name := range cases {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, bc := range cases[name] {
			args := append(strings.Fields(name), bc.args...)
			label := strings.Join(args, " ")
			if len(label) > 100 {
				label = label[:100]
			}
			t.Run(label, func(t *testing.T) {
				want := exitUsage
				if name == "archive-get" {
					want = exitFailure // PostgreSQL's rule for restore_command
				}
				before := snapshot(t, root)
				code, stderr := runMain(t, e, args)
				expectFailure(t, want, stderr, code, bc.wants...)
				if diff := changes(before, snapshot(t, root)); len(diff) > 0 {
					t.Errorf("walferry %s wrote: %s", label, strings.Join(diff, ", "))
				}
			})
		}
	}
}

// runMain runs walferry (this binary, as main) with args in e's working
// directory, in an environment with no walferry settings and no
// PostgreSQL to reach, and returns its exit code and stderr.
func runMain(t *testing.T, e badInputEnv, args []string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Dir = e.cwd
	env := []string{"WALFERRY_TEST_AS_MAIN=1", "HOME=" + filepath.Join(e.root, "home"), "TMPDIR=" + filepath.Join(e.root, "tmp"),
		"PATH=" + os.Getenv("PATH"), "PGHOST=/nonexistent", "PGCONNECT_TIMEOUT=2", "WALFERRY_LOG_FORMAT=text"}
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("walferry %s still ran after 30s: bad input must fail at once; stderr: %s", strings.Join(args, " "), stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stderr.String()
}

// snapshot records every path under root with its size and time.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		stamp := info.ModTime().String()
		if d.IsDir() {
			stamp = "dir" // a read (atime) or a listing does not count
		}
		out[path] = fmt.Sprint(stamp, " ", info.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// changes lists the paths that appeared, disappeared or changed.
func changes(before, after map[string]string) []string {
	var out []string
	for p, a := range after {
		if b, ok := before[p]; !ok {
			out = append(out, "new "+p)
		} else if a != b {
			out = append(out, "changed "+p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			out = append(out, "removed "+p)
		}
	}
	sort.Strings(out)
	return out
}
