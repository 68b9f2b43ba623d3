// Package e2e runs walferry the way PostgreSQL runs it: as archive_command
// and restore_command of real PostgreSQL 15 clusters, against a real MinIO
// and a filesystem repository, with the binary built once for the whole
// package. Nothing here calls walferry's Go API to do the work; the tests
// only read repositories through it to check what the binary left there.
//
// The tests need PostgreSQL 15 and MinIO (scripts/services.sh); without
// them they skip on a developer's machine and fail under
// WALFERRY_TEST_REQUIRE_SERVICES=1 (make test, CI). -short skips them all.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/testbin"
	"github.com/walferry/walferry/internal/teststore"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
)

// walferryBin is the binary under test, built by TestMain into a directory
// the postgres OS user can read and execute.
var walferryBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	code := func() int {
		defer testbin.Cleanup()
		bin, err := testbin.Build()
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build walferry: %v\n", err)
			return 1
		}
		walferryBin = bin
		// The servers the tests start inherit this process's environment,
		// and with it MinIO's credentials for their archive and restore
		// commands, as a real server gets them from its service manager.
		if ep := os.Getenv("WALFERRY_TEST_S3_ENDPOINT"); ep != "" {
			os.Setenv("AWS_ACCESS_KEY_ID", os.Getenv("WALFERRY_TEST_S3_ACCESS_KEY"))
			os.Setenv("AWS_SECRET_ACCESS_KEY", os.Getenv("WALFERRY_TEST_S3_SECRET_KEY"))
			region := os.Getenv("WALFERRY_TEST_S3_REGION")
			if region == "" {
				region = "us-east-1"
			}
			os.Setenv("AWS_REGION", region)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// needE2E skips in -short mode and returns MinIO's coordinates (failing
// or skipping per testenv when MinIO is not running).
func needE2E(t *testing.T) testenv.S3Env {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: real PostgreSQL and MinIO; skipped with -short")
	}
	if walferryBin == "" {
		t.Fatal("e2e: walferry binary was not built")
	}
	testenv.PGBin(t)
	return testenv.S3(t)
}

// repoKind is where a test repository lives.
type repoKind string

const (
	kindFS repoKind = "fs"
	kindS3 repoKind = "s3"
)

var repoKinds = []repoKind{kindFS, kindS3}

// forEachRepoKind runs test once per repository kind, as parallel subtests.
func forEachRepoKind(t *testing.T, s3 testenv.S3Env, test func(*testing.T, repoKind, testenv.S3Env)) {
	for _, kind := range repoKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			test(t, kind, s3)
		})
	}
}

// newRepoURL returns a fresh repository URL of the given kind: a directory
// owned by the cluster's OS user, or a unique prefix of the MinIO bucket.
// The repository is not initialized.
func newRepoURL(t *testing.T, c *pgtest.Cluster, kind repoKind, s3 testenv.S3Env) string {
	t.Helper()
	switch kind {
	case kindFS:
		return "file://" + c.MkdirOwned(t, "repo")
	case kindS3:
		return "s3://" + s3.Bucket + "/e2e/" + testenv.UniquePrefix(t) + "?endpoint=" + s3.Endpoint + "&path-style=true"
	}
	t.Fatalf("unknown repository kind %q", kind)
	return ""
}

// result is one finished walferry (or other) process.
type result struct {
	code           int // exit status; -1 when killed by a signal
	signal         syscall.Signal
	stdout, stderr string
	dur            time.Duration
}

func (r result) String() string {
	s := fmt.Sprintf("exit %d after %s", r.code, r.dur.Round(time.Millisecond))
	if r.code < 0 {
		s = fmt.Sprintf("killed by %v after %s", r.signal, r.dur.Round(time.Millisecond))
	}
	if e := strings.TrimSpace(r.stderr); e != "" {
		s += ": " + e
	}
	return s
}

// wf runs walferry as the cluster's OS user, in its data directory (where
// PostgreSQL runs its archive and restore commands) and with its
// environment, and waits up to two minutes.
func wf(t *testing.T, c *pgtest.Cluster, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return runCmd(t, hookCommand(ctx, c, args...))
}

// hookCommand is walferry with args, run like PostgreSQL runs its hooks.
func hookCommand(ctx context.Context, c *pgtest.Cluster, args ...string) *exec.Cmd {
	cmd := c.Command(ctx, walferryBin, args...)
	cmd.Dir = c.DataDir
	return cmd
}

// runCmd runs cmd and reports how it ended; only a failure to start fails t.
func runCmd(t *testing.T, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{dur: time.Since(start), stdout: stdout.String(), stderr: stderr.String()}
	r.code = exitStatus(t, cmd, err)
	if r.code < 0 {
		r.signal = cmd.ProcessState.Sys().(syscall.WaitStatus).Signal()
	}
	return r
}

// exitStatus returns the exit status of a finished command, -1 when a
// signal ended it; it fails t when the command could not run at all.
func exitStatus(t *testing.T, cmd *exec.Cmd, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1
		}
		return ee.ExitCode()
	}
	t.Fatalf("run %s: %v", strings.Join(cmd.Args, " "), err)
	return 0
}

// mustWF runs walferry and fails t unless it exits 0.
func mustWF(t *testing.T, c *pgtest.Cluster, args ...string) result {
	t.Helper()
	r := wf(t, c, args...)
	if r.code != 0 {
		t.Fatalf("walferry %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// pgRun runs a PostgreSQL program (psql, pgbench, pg_basebackup) or any
// program given by path as the cluster's OS user, failing t on error, and
// returns its standard output.
func pgRun(t *testing.T, c *pgtest.Cluster, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := c.Command(ctx, name, args...)
	r := runCmd(t, cmd)
	if r.code != 0 {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), r, r.stdout)
	}
	return r.stdout
}

// psql runs one SQL statement through psql -At and returns its trimmed output.
func psql(t *testing.T, c *pgtest.Cluster, sql string) string {
	t.Helper()
	return strings.TrimSpace(pgRun(t, c, 2*time.Minute, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql))
}

// openRepo opens a repository to inspect what the binary left there.
func openRepo(t *testing.T, url string) *repo.Repo { return teststore.OpenURL(t, url) }

// walNames lists the names of every WAL file (segments, .backup, .history,
// .partial) in the repository.
func walNames(t *testing.T, r *repo.Repo) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var names []string
	err := r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		if name, ok := repo.WALNameFromKey(oi.Key); ok {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", r, err)
	}
	return names
}

// decodeAll reads every object under the repository's WAL prefix through
// the verifying decoder and returns name -> sha256 of the raw bytes. Any
// object that does not decode completely is an error.
func decodeAll(ctx context.Context, r *repo.Repo) (map[string]string, error) {
	v := newVerifier(r)
	if err := v.check(ctx); err != nil {
		return nil, err
	}
	return v.sums, nil
}

// verifier decodes a repository's WAL objects, each one once: objects are
// immutable under their final names, so a key already decoded whole with
// the same size is not read again.
type verifier struct {
	r       *repo.Repo
	size    map[string]int64  // key -> size when decoded
	sums    map[string]string // name -> sha256 of the raw bytes
	decoded int
}

func newVerifier(r *repo.Repo) *verifier {
	return &verifier{r: r, size: map[string]int64{}, sums: map[string]string{}}
}

// check lists the WAL prefix and decodes every object it has not decoded.
func (v *verifier) check(ctx context.Context) error {
	var infos []storage.ObjectInfo
	if err := v.r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		infos = append(infos, oi)
		return nil
	}); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	for _, oi := range infos {
		if size, ok := v.size[oi.Key]; ok && size == oi.Size {
			continue
		} else if ok {
			return fmt.Errorf("%s changed size from %d to %d bytes", oi.Key, size, oi.Size)
		}
		sum, err := decodeObject(ctx, v.r, oi.Key)
		if err != nil {
			return err
		}
		name, _ := repo.WALNameFromKey(oi.Key)
		v.size[oi.Key], v.sums[name] = oi.Size, sum
		v.decoded++
	}
	return nil
}

// decodeObject reads one object to its verified end and returns the sha256
// of its raw bytes.
func decodeObject(ctx context.Context, r *repo.Repo, key string) (string, error) {
	obj, err := r.Get(ctx, key)
	if err != nil {
		return "", fmt.Errorf("get %s: %w", key, err)
	}
	defer obj.Close()
	h := sha256.New()
	if _, err := io.Copy(h, obj); err != nil {
		return "", fmt.Errorf("decode %s: %w", key, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fileSum returns the sha256 of a local file.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sameFile reports whether two local files have identical bytes.
func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(x, y)
}

// isSegmentName reports whether name is a plain WAL segment name.
func isSegmentName(name string) bool {
	if len(name) != 24 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// sqlQuote quotes s as an SQL / postgresql.conf string literal.
func sqlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
