//go:build faults

package faults

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testbin"
	"github.com/walferry/walferry/internal/testenv"
)

// walferryBin is the binary under test, built once by TestMain.
var walferryBin string

// seed drives every random choice of the suite (kill points, flipped
// bytes); WALFERRY_FAULT_SEED replays a run.
var seed uint64

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	seed = uint64(time.Now().UnixNano())
	if s := os.Getenv("WALFERRY_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "faults: WALFERRY_FAULT_SEED=%q is not a number\n", s)
			os.Exit(2)
		}
		seed = v
	}
	fmt.Printf("faults: seed %d (replay with WALFERRY_FAULT_SEED=%d)\n", seed, seed)
	code := func() int {
		defer testbin.Cleanup()
		bin, err := testbin.Build()
		if err != nil {
			fmt.Fprintf(os.Stderr, "faults: build walferry: %v\n", err)
			return 1
		}
		walferryBin = bin
		if os.Getenv("WALFERRY_TEST_S3_ENDPOINT") != "" {
			os.Setenv("AWS_ACCESS_KEY_ID", os.Getenv("WALFERRY_TEST_S3_ACCESS_KEY"))
			os.Setenv("AWS_SECRET_ACCESS_KEY", os.Getenv("WALFERRY_TEST_S3_SECRET_KEY"))
			region := os.Getenv("WALFERRY_TEST_S3_REGION")
			if region == "" {
				region = "us-east-1"
			}
			os.Setenv("AWS_REGION", region)
		}
		if cs := os.Getenv("WALFERRY_TEST_AZURE_CONNECTION_STRING"); cs != "" {
			os.Setenv("AZURE_STORAGE_CONNECTION_STRING", cs)
		}
		return m.Run()
	}()
	if bad := results.print(os.Stdout); bad && code == 0 {
		code = 1
	}
	fmt.Printf("faults: seed %d\n", seed)
	os.Exit(code)
}

// rng returns a random source for one test, derived from the suite's seed
// and the test's name, so a replay gives each test the same choices
// whatever order the tests run in.
func rng(t *testing.T) *rand.Rand {
	h := sha256.Sum256([]byte(t.Name()))
	var k uint64
	for _, b := range h[:8] {
		k = k<<8 | uint64(b)
	}
	return rand.New(rand.NewPCG(seed, k))
}

// needServices skips in -short mode and returns MinIO's coordinates
// (failing under WALFERRY_TEST_REQUIRE_SERVICES=1 when it is missing).
func needServices(t *testing.T) testenv.S3Env {
	t.Helper()
	if testing.Short() {
		t.Skip("faults: real PostgreSQL and MinIO; skipped with -short")
	}
	if walferryBin == "" {
		t.Fatal("faults: walferry binary was not built")
	}
	testenv.PGBin(t)
	testenv.Root(t)
	return testenv.S3(t)
}

// outcome is how one trial ended.
type outcome int

const (
	ok         outcome = iota // succeeded, data checked
	clearError                // failed in time, documented exit code, message names the store or object
	unclear                   // failed in time, but with another exit code or a message naming nothing
	dataLost                  // reported success with wrong data, lost data, or left something partial under a final name
	hang                      // did not end within its documented limit
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"ok", "clear error", "unclear error", "data lost", "hang"}

func (o outcome) String() string { return outcomeNames[o] }

// table collects trial outcomes, fault x operation.
type table struct {
	mu   sync.Mutex
	rows map[[2]string]*[nOutcomes]int
}

var results = &table{rows: map[[2]string]*[nOutcomes]int{}}

// record counts one trial of op under fault; any outcome but ok and clear
// error fails t with why.
func record(t *testing.T, fault, op string, o outcome, why string) {
	t.Helper()
	results.mu.Lock()
	k := [2]string{fault, op}
	if results.rows[k] == nil {
		results.rows[k] = new([nOutcomes]int)
	}
	results.rows[k][o]++
	results.mu.Unlock()
	switch o {
	case ok, clearError:
		t.Logf("%s / %s: %s: %s", fault, op, o, why)
	default:
		t.Errorf("%s / %s: %s: %s", fault, op, strings.ToUpper(o.String()), why)
	}
}

// print writes the table and reports whether any trial lost data, hung or
// failed unclearly.
func (tb *table) print(w io.Writer) bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	keys := make([][2]string, 0, len(tb.rows))
	for k := range tb.rows {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return keys[i][0] < keys[j][0]
		}
		return keys[i][1] < keys[j][1]
	})
	var total [nOutcomes]int
	fmt.Fprintln(w)
	fmt.Fprintln(w, "==> fault suite: fault x operation")
	line := func(fault, op string, c [nOutcomes]int) {
		n := 0
		for _, v := range c {
			n += v
		}
		fmt.Fprintf(w, "%-26s %-20s %6d %5d %11d %13d %9d %4d\n", fault, op, n, c[ok], c[clearError], c[unclear], c[dataLost], c[hang])
	}
	fmt.Fprintf(w, "%-26s %-20s %6s %5s %11s %13s %9s %4s\n", "fault", "operation", "trials", "ok", "clear error", "unclear error", "data lost", "hang")
	for _, k := range keys {
		line(k[0], k[1], *tb.rows[k])
		for i, v := range tb.rows[k] {
			total[i] += v
		}
	}
	line("TOTAL", "", total)
	bad := total[dataLost]+total[hang]+total[unclear] > 0
	if bad {
		fmt.Fprintln(w, "FAIL: the data lost, hang and unclear error columns must be zero")
	}
	return bad
}

// result is one finished walferry (or other) process.
type result struct {
	code           int // exit status; -1 when killed by a signal
	stdout, stderr string
	dur            time.Duration
	timedOut       bool // killed by the test's deadline
}

func (r result) String() string {
	s := fmt.Sprintf("exit %d after %s", r.code, r.dur.Round(time.Millisecond))
	if r.timedOut {
		s = fmt.Sprintf("still running after %s: killed", r.dur.Round(time.Millisecond))
	}
	if e := strings.TrimSpace(r.stderr); e != "" {
		s += ": " + lastLines(e, 3)
	}
	return s
}

// run runs cmd, killing its process group after limit, and reports how it
// ended; only a failure to start fails t.
func run(t *testing.T, cmd *exec.Cmd, limit time.Duration) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	timedOut := false
	select {
	case err = <-done:
	case <-time.After(limit):
		timedOut = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = <-done
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // whatever it left behind
	r := result{dur: time.Since(start), stdout: stdout.String(), stderr: stderr.String(), timedOut: timedOut}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run %s: %v", strings.Join(cmd.Args, " "), err)
	}
	return r
}

// wf runs walferry as the cluster's OS user in its data directory, as
// PostgreSQL runs its hooks, with extra environment variables, killing it
// after limit.
func wfEnv(t *testing.T, c *pgtest.Cluster, limit time.Duration, env []string, args ...string) result {
	t.Helper()
	cmd := c.Command(context.Background(), walferryBin, args...)
	cmd.Dir = c.DataDir
	cmd.Env = append(cmd.Env, env...)
	return run(t, cmd, limit)
}

func wf(t *testing.T, c *pgtest.Cluster, limit time.Duration, args ...string) result {
	t.Helper()
	return wfEnv(t, c, limit, nil, args...)
}

// mustWF runs walferry (two minutes at most) and fails t unless it exits 0.
func mustWF(t *testing.T, c *pgtest.Cluster, args ...string) result {
	t.Helper()
	r := wf(t, c, 2*time.Minute, args...)
	if r.code != 0 || r.timedOut {
		t.Fatalf("walferry %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// psql runs one SQL statement through psql -At and returns its output.
func psql(t *testing.T, c *pgtest.Cluster, sql string) string {
	t.Helper()
	cmd := c.Command(context.Background(), "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
	r := run(t, cmd, 3*time.Minute)
	if r.code != 0 || r.timedOut {
		t.Fatalf("psql -c %q: %v", sql, r)
	}
	return strings.TrimSpace(r.stdout)
}

// fileSum returns the sha256 of a local file, "" when it does not exist.
func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
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

// writeOwned writes a file owned by the cluster's OS user.
func writeOwned(t *testing.T, c *pgtest.Cluster, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid(t), gid(t)); err != nil {
		t.Fatal(err)
	}
}

// chownTree gives dir and everything in it to the server's OS user.
func chownTree(t *testing.T, dir string) {
	t.Helper()
	u, g := uid(t), gid(t)
	if err := filepathWalk(dir, func(p string) error { return os.Lchown(p, u, g) }); err != nil {
		t.Fatal(err)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
func sqlQuote(s string) string   { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
