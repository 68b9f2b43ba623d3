package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// run executes the command line in-process and returns the exit code and
// what it printed, as main would.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	a := newApp(&out, &errOut, buildInfo{Version: "test", Commit: "test"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := a.Run(ctx, append([]string{"walferry"}, args...))
	code = exitCode(err)
	if err != nil {
		a.reportError(err, code)
	}
	return code, out.String(), errOut.String()
}

// damageObject flips a bit in the middle of the stored object file at
// path (its body: the header and trailer stay readable) and returns the
// damaged bytes.
func damageObject(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// expectFailure checks the exit code and that stderr is one clear line
// containing every want, and never a Go stack trace.
func expectFailure(t *testing.T, wantCode int, stderr string, gotCode int, wants ...string) {
	t.Helper()
	if gotCode != wantCode {
		t.Errorf("exit code %d, want %d; stderr: %s", gotCode, wantCode, stderr)
	}
	if strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
		t.Errorf("stderr is more than one line:\n%s", stderr)
	}
	if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
		t.Errorf("stderr shows a stack trace:\n%s", stderr)
	}
	for _, w := range wants {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr %q does not contain %q", stderr, w)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	tests := []struct {
		name  string
		args  []string
		wants []string
	}{
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`}},
		{"unknown flag", []string{"repo", "info", "--no-such-flag"}, []string{"no-such-flag"}},
		{"malformed URL", []string{"repo", "info", "--repo", "s3:/bucket"}, []string{"invalid repository URL", "examples:"}},
		{"unknown scheme", []string{"repo", "info", "--repo", "ftp://x/y"}, []string{"unknown scheme"}},
		{"no repository", []string{"repo", "info"}, []string{"no repository configured", "--repo"}},
		{"bad compression", []string{"repo", "info", "--repo", "file:///tmp", "--compression", "lz5"}, []string{"compression", "fix:"}},
		{"bad log format", []string{"repo", "info", "--repo", "file:///tmp", "--log-format", "xml"}, []string{"log-format"}},
		{"no cluster", []string{"repo", "init", "--repo", "file:///tmp/x"}, []string{"--pgdata"}},
		{"missing config file", []string{"repo", "info", "--config", "/nonexistent.yaml"}, []string{"/nonexistent.yaml"}},
		{"planned command", []string{"switchover"}, []string{"not in this build yet"}},
		{"planned command with arguments", []string{"switchover", "--to", "b"}, []string{"not in this build yet"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, tt.args...)
			expectFailure(t, exitUsage, stderr, code, tt.wants...)
		})
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, "version", "--json")
	if code != 0 || !strings.Contains(out, `"version": "test"`) || !strings.Contains(out, `"go": "go1.`) ||
		!strings.Contains(out, `"zstd": "`) {
		t.Errorf("version --json: code %d, output %s", code, out)
	}
}

func TestHelpListsEveryCommand(t *testing.T) {
	_, out, _ := run(t, "--help")
	for _, name := range []string{"repo", "archive-push", "archive-get", "backup-push", "backup-list", "backup-show",
		"backup-delete", "restore", "verify", "wal-receive", "bootstrap", "sidecar", "status", "promote", "demote",
		"rejoin", "k8s", "version", "EXIT CODES"} {
		if !strings.Contains(out, name) {
			t.Errorf("--help does not mention %s", name)
		}
	}
}

// TestHelpListsEveryExitCode: every exit code of exit.go, each in the
// README's table, is also in --help's EXIT CODES section.
func TestHelpListsEveryExitCode(t *testing.T) {
	_, out, _ := run(t, "--help")
	i := strings.Index(out, "EXIT CODES")
	if i < 0 {
		t.Fatal("--help has no EXIT CODES section")
	}
	section := out[i:]
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, code := range []int{exitOK, exitFailure, exitUsage, exitUnreachable, exitPermission, exitRepository,
		exitCorrupt, exitPostgres, exitLocked, exitInterrupted} {
		if !regexp.MustCompile(fmt.Sprintf(`(^|[ ;(])%d `, code)).MatchString(section) {
			t.Errorf("--help's EXIT CODES does not explain exit code %d:\n%s", code, section)
		}
		if !strings.Contains(string(readme), fmt.Sprintf("\n| %d | ", code)) {
			t.Errorf("README.md's exit code table has no row for %d", code)
		}
	}
}

func TestMissingDataDirectory(t *testing.T) {
	code, _, stderr := run(t, "repo", "init", "--repo", "file://"+t.TempDir(), "--pgdata", "/nonexistent/pgdata")
	expectFailure(t, exitPostgres, stderr, code, "/nonexistent/pgdata", "--pgdata")
}

// TestRepoInitCheck runs repo init and repo check against a filesystem
// path and a real MinIO for a real PostgreSQL 15 data directory, and a
// check with another cluster's data directory.
func TestRepoInitCheck(t *testing.T) {
	a := pgtest.New(t, pgtest.Options{})
	b := pgtest.New(t, pgtest.Options{})
	s3env := testenv.S3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", s3env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", s3env.SecretKey)
	t.Setenv("AWS_REGION", s3env.Region)

	repos := map[string]string{
		"fs": "file://" + t.TempDir() + "/repo",
		"s3": "s3://" + s3env.Bucket + "/" + testenv.UniquePrefix(t) + "?endpoint=" + s3env.Endpoint,
	}
	for name, url := range repos {
		t.Run(name, func(t *testing.T) {
			code, out, stderr := run(t, "repo", "init", "--repo", url, "--pgdata", a.DataDir)
			if code != 0 || !strings.Contains(out, "initialized") {
				t.Fatalf("repo init: code %d, out %q, err %q", code, out, stderr)
			}
			code, out, stderr = run(t, "repo", "check", "--repo", url, "--pgdata", a.DataDir)
			if code != 0 || !strings.Contains(out, "ok") {
				t.Fatalf("repo check: code %d, out %q, err %q", code, out, stderr)
			}
			code, out, _ = run(t, "repo", "info", "--repo", url, "--json")
			if code != 0 || !strings.Contains(out, `"system_identifier"`) {
				t.Fatalf("repo info --json: code %d, out %q", code, out)
			}
			code, _, stderr = run(t, "repo", "check", "--repo", url, "--pgdata", b.DataDir)
			idA, idB := systemID(t, a.DataDir), systemID(t, b.DataDir)
			expectFailure(t, exitRepository, stderr, code, idA, idB, b.DataDir)
		})
	}
}

// TestStoreFailures checks that a wrong endpoint, wrong credentials and a
// missing bucket each end quickly with one clear message and their exit code.
func TestStoreFailures(t *testing.T) {
	s3env := testenv.S3(t)
	t.Setenv("AWS_REGION", s3env.Region)
	prefix := testenv.UniquePrefix(t)
	tests := []struct {
		name       string
		url        string
		key        string
		code       int
		wants      []string
		maxSeconds float64
	}{
		{"wrong endpoint", "s3://" + s3env.Bucket + "/" + prefix + "?endpoint=http://127.0.0.1:1", s3env.SecretKey,
			exitUnreachable, []string{"127.0.0.1:1"}, 30},
		{"wrong credentials", "s3://" + s3env.Bucket + "/" + prefix + "?endpoint=" + s3env.Endpoint, "not-the-secret",
			exitPermission, []string{"AWS_SECRET_ACCESS_KEY"}, 30},
		{"missing bucket", "s3://no-such-bucket-walferry/" + prefix + "?endpoint=" + s3env.Endpoint, s3env.SecretKey,
			exitRepository, []string{"no-such-bucket-walferry"}, 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("AWS_ACCESS_KEY_ID", s3env.AccessKey)
			t.Setenv("AWS_SECRET_ACCESS_KEY", tt.key)
			start := time.Now()
			code, _, stderr := run(t, "repo", "info", "--repo", tt.url)
			took := time.Since(start)
			t.Logf("%s: exit %d after %s: %s", tt.name, code, took.Round(time.Millisecond), strings.TrimSpace(stderr))
			expectFailure(t, tt.code, stderr, code, tt.wants...)
			// Not a speed goal: a bound on hanging, the retry policy's
			// documented limit with room for a loaded machine.
			if limit := time.Duration(tt.maxSeconds * float64(time.Second)); took > limit {
				t.Errorf("%s took %s; failures must end within %s", tt.name, took.Round(time.Millisecond), limit)
			}
		})
	}
}

func systemID(t *testing.T, dataDir string) string {
	t.Helper()
	code, out, stderr := run(t, "repo", "init", "--repo", "file://"+t.TempDir()+"/id", "--pgdata", dataDir, "--json")
	if code != 0 {
		t.Fatalf("repo init for %s: %s", dataDir, stderr)
	}
	_, rest, _ := strings.Cut(out, `"system_identifier": "`)
	id, _, _ := strings.Cut(rest, `"`)
	return id
}
