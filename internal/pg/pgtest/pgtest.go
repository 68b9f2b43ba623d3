// Package pgtest starts throwaway PostgreSQL clusters for integration tests.
//
// Each cluster lives in its own temporary directory: a data directory made by
// initdb, a Unix socket directory, and the server log. The server listens on
// a free port on 127.0.0.1 with trust authentication for local and loopback
// connections, replication included. When the test process runs as root
// (PostgreSQL refuses to), initdb, pg_ctl and the server run as the
// "postgres" OS user, which owns the temporary directory.
//
// The cluster is stopped (pg_ctl stop -m immediate) and removed when the test
// ends, pass or fail; a failed test gets the server log in its output.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/testenv"
)

// StopMode is pg_ctl's shutdown mode.
type StopMode string

// The shutdown modes of pg_ctl stop -m.
const (
	StopSmart     StopMode = "smart"
	StopFast      StopMode = "fast"
	StopImmediate StopMode = "immediate"
)

// Superuser is the name of the bootstrap superuser of every test cluster.
const Superuser = "postgres"

// ServerOSUser is the OS account the server runs as when tests run as root.
const ServerOSUser = "postgres"

// Timeouts for server start and stop, and for helper queries.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 60 * time.Second
	queryTimeout = 60 * time.Second
	portAttempts = 5
)

// Options configure a test cluster. The zero value gives a PostgreSQL 15
// cluster with 16 MiB segments, no data checksums and fsync off.
type Options struct {
	// Conf lines are appended to postgresql.conf, after pgtest's own
	// settings, so they win: "archive_mode = on", "wal_level = logical", ...
	Conf []string
	// HBA lines are put in pg_hba.conf before the trust rules.
	HBA []string
	// WALSegSizeMB is initdb --wal-segsize (a power of two, 1..1024); 0
	// means the default 16.
	WALSegSizeMB int
	// DataChecksums runs initdb --data-checksums.
	DataChecksums bool
	// InitDBArgs are extra initdb arguments.
	InitDBArgs []string
	// Durable keeps fsync on and lets initdb sync. Off by default: tests
	// don't survive power loss anyway, and fsync slows them.
	Durable bool
	// PGBin is the directory of initdb, pg_ctl and postgres; empty means
	// testenv.PGBin.
	PGBin string
	// BaseDir is where the cluster's temporary directory is made; empty
	// means os.TempDir(). Every directory above it must be searchable by
	// the server's OS user.
	BaseDir string
}

// Cluster is a test PostgreSQL cluster.
type Cluster struct {
	// Dir is the cluster's temporary directory, owned by the server's OS
	// user; DataDir, SocketDir and LogFile are inside it.
	Dir       string
	DataDir   string
	SocketDir string
	LogFile   string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// PGBin is the directory holding the PostgreSQL binaries used.
	PGBin string

	opts  Options
	owner *owner // nil when not running as root

	mu      sync.Mutex
	running bool
	conn    *pgx.Conn // shared by Exec and QueryRow
}

// owner is the OS account that runs PostgreSQL when tests run as root.
type owner struct {
	uid, gid uint32
	home     string
}

// Start makes a new cluster with initdb, starts it and waits until it
// accepts connections. The cluster is stopped and removed when t ends.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := New(t, opts)
	c.Start(t)
	return c
}

// New makes a new cluster with initdb but does not start it. The directory
// is removed when t ends (after stopping the server, if it was started).
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{opts: opts, PGBin: opts.PGBin}
	if c.PGBin == "" {
		c.PGBin = testenv.PGBin(t)
	}
	if err := c.setUp(); err != nil {
		if c.Dir != "" {
			_ = os.RemoveAll(c.Dir)
		}
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() { c.cleanup(t) })
	if err := c.initDB(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return c
}

// setUp creates the directory tree and decides who runs the server.
func (c *Cluster) setUp() error {
	if os.Geteuid() == 0 {
		u, err := user.Lookup(ServerOSUser)
		if err != nil {
			return fmt.Errorf("running as root, PostgreSQL needs the %q OS user: %w", ServerOSUser, err)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("user %q has a non-numeric uid/gid %s/%s", ServerOSUser, u.Uid, u.Gid)
		}
		c.owner = &owner{uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	}
	base := c.opts.BaseDir
	if base == "" {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "walferry-pg-")
	if err != nil {
		return fmt.Errorf("make cluster directory: %w", err)
	}
	c.Dir = dir
	c.DataDir = filepath.Join(dir, "data")
	c.SocketDir = filepath.Join(dir, "sock")
	c.LogFile = filepath.Join(dir, "postgres.log")
	if n := len(c.SocketDir) + len("/.s.PGSQL.65535"); n >= 108 {
		return fmt.Errorf("socket path under %s would be %d bytes, over the Unix limit of 107: set Options.BaseDir or TMPDIR to a shorter directory", dir, n)
	}
	if err := os.Mkdir(c.SocketDir, 0o700); err != nil {
		return fmt.Errorf("make socket directory: %w", err)
	}
	if c.owner != nil {
		if err := checkSearchable(base); err != nil {
			return err
		}
		for _, p := range []string{dir, c.SocketDir} {
			if err := os.Chown(p, int(c.owner.uid), int(c.owner.gid)); err != nil {
				return fmt.Errorf("give %s to %s: %w", p, ServerOSUser, err)
			}
		}
	}
	return nil
}

// checkSearchable fails when a directory on the way to dir cannot be
// entered by users other than root (the server's OS user must get there).
func checkSearchable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by the %q OS user (mode %v): set Options.BaseDir or TMPDIR to a directory every user can enter, e.g. /tmp", p, ServerOSUser, fi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// initDB runs initdb and writes pgtest's configuration.
func (c *Cluster) initDB() error {
	args := []string{"-D", c.DataDir, "-U", Superuser, "-A", "trust", "-E", "UTF8", "--locale=C"}
	if c.opts.WALSegSizeMB != 0 {
		args = append(args, "--wal-segsize="+strconv.Itoa(c.opts.WALSegSizeMB))
	}
	if c.opts.DataChecksums {
		args = append(args, "--data-checksums")
	}
	if !c.opts.Durable {
		args = append(args, "--no-sync")
	}
	args = append(args, c.opts.InitDBArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if out, err := c.Command(ctx, "initdb", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", strings.Join(args, " "), err, out)
	}

	var hba strings.Builder
	for _, l := range c.opts.HBA {
		hba.WriteString(l + "\n")
	}
	hba.WriteString("local all all trust\n" +
		"local replication all trust\n" +
		"host all all 127.0.0.1/32 trust\n" +
		"host replication all 127.0.0.1/32 trust\n")
	if err := c.writeOwned(filepath.Join(c.DataDir, "pg_hba.conf"), hba.String()); err != nil {
		return err
	}

	port, err := freePort()
	if err != nil {
		return err
	}
	c.Port = port
	if err := c.writePortConf(); err != nil {
		return err
	}
	conf := "\n# added by pgtest\ninclude 'pgtest.conf'\n"
	for _, l := range c.opts.Conf {
		conf += l + "\n"
	}
	return c.appendOwned(filepath.Join(c.DataDir, "postgresql.conf"), conf)
}

// writePortConf writes pgtest.conf, the settings pgtest owns.
func (c *Cluster) writePortConf() error {
	fsync := "off"
	if c.opts.Durable {
		fsync = "on"
	}
	conf := fmt.Sprintf(`# written by pgtest; rewritten when the port changes
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = %s
shared_buffers = 32MB
max_connections = 40
logging_collector = off
log_line_prefix = '%%m [%%p] '
`, c.Port, c.SocketDir, fsync)
	return c.writeOwned(filepath.Join(c.DataDir, "pgtest.conf"), conf)
}

func (c *Cluster) writeOwned(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return c.chown(path)
}

func (c *Cluster) appendOwned(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

func (c *Cluster) chown(path string) error {
	if c.owner == nil {
		return nil
	}
	if err := os.Chown(path, int(c.owner.uid), int(c.owner.gid)); err != nil {
		return fmt.Errorf("give %s to %s: %w", path, ServerOSUser, err)
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Command returns a command running PostgreSQL program name (looked up in
// PGBin unless it contains a slash) as the server's OS user, in Dir, with
// libpq's environment pointing at this cluster (PGHOST, PGPORT, PGUSER,
// PGDATABASE, PGDATA) and the C locale. Use it for psql, pg_basebackup,
// pg_rewind, pg_waldump...
func (c *Cluster) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if !strings.Contains(name, "/") {
		name = filepath.Join(c.PGBin, name)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.Dir
	cmd.Env = c.Env()
	cmd.WaitDelay = 5 * time.Second
	if c.owner != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: c.owner.uid, Gid: c.owner.gid},
		}
		cmd.Env = append(cmd.Env, "HOME="+c.Dir, "USER="+ServerOSUser, "LOGNAME="+ServerOSUser)
	}
	return cmd
}

// Env returns the process environment without libpq, locale and HOME
// variables, plus settings that point libpq clients at this cluster over
// its Unix socket.
func (c *Cluster) Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		if c.owner != nil && (k == "HOME" || k == "USER" || k == "LOGNAME") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"LC_ALL=C",
		"PGHOST="+c.SocketDir,
		"PGUSER="+Superuser,
		"PGDATABASE=postgres",
		"PGDATA="+c.DataDir,
	)
	if c.Port != 0 {
		env = append(env, "PGPORT="+strconv.Itoa(c.Port))
	}
	return env
}

// ConnString returns a key=value connection string for the superuser over
// TCP on 127.0.0.1; extra pairs ("dbname=app", "replication=database") are
// appended and override earlier ones.
func (c *Cluster) ConnString(extra ...string) string {
	s := fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", c.Port, Superuser)
	for _, e := range extra {
		s += " " + e
	}
	return s
}

// SocketConnString is ConnString over the Unix socket.
func (c *Cluster) SocketConnString(extra ...string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", c.SocketDir, c.Port, Superuser)
	for _, e := range extra {
		s += " " + e
	}
	return s
}

// Start starts the stopped server and waits until it accepts connections.
// If another process took the port, it retries on a new one.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

func (c *Cluster) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return errors.New("start: server is already running")
	}
	for attempt := 1; ; attempt++ {
		logStart := fileSize(c.LogFile)
		err := c.pgCtl("start", "-l", c.LogFile)
		if err == nil {
			c.running = true
			if err := c.waitReady(); err != nil {
				return fmt.Errorf("start: %w\nserver log:\n%s", err, c.LogTail(50))
			}
			return nil
		}
		newLog := readFrom(c.LogFile, logStart)
		if attempt < portAttempts && portTaken(newLog) {
			if c.Port, err = freePort(); err != nil {
				return err
			}
			if err := c.writePortConf(); err != nil {
				return err
			}
			continue
		}
		return fmt.Errorf("start: %w\nserver log:\n%s", err, tail(newLog, 50))
	}
}

// portTaken reports whether a server log says the port was in use.
func portTaken(log string) bool {
	return strings.Contains(log, "could not bind") ||
		strings.Contains(log, "Address already in use") ||
		strings.Contains(log, "could not create any TCP/IP sockets")
}

// pgCtl runs pg_ctl action with the cluster's data directory and waits.
func (c *Cluster) pgCtl(action string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout+10*time.Second)
	defer cancel()
	full := append([]string{action, "-D", c.DataDir, "-w", "-t", strconv.Itoa(int(startTimeout / time.Second))}, args...)
	out, err := c.Command(ctx, "pg_ctl", full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", strings.Join(full, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// waitReady connects until the server answers a query or the deadline
// passes.
func (c *Cluster) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	var lastErr error
	for {
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(attemptCtx, c.ConnString())
		if err == nil {
			err = conn.Ping(attemptCtx)
			conn.Close(attemptCtx)
		}
		attemptCancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("server on port %d not ready after %v: %w", c.Port, startTimeout, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop stops the server with the given mode and waits until it is down.
func (c *Cluster) Stop(t testing.TB, mode StopMode) {
	t.Helper()
	if err := c.stop(mode); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

func (c *Cluster) stop(mode StopMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeConnLocked()
	if !c.running {
		return nil
	}
	if err := c.pgCtl("stop", "-m", string(mode)); err != nil {
		return fmt.Errorf("stop: %w\nserver log:\n%s", err, c.LogTail(30))
	}
	c.running = false
	return nil
}

// Restart stops the server (fast mode) and starts it again, for settings
// that need a restart.
func (c *Cluster) Restart(t testing.TB) {
	t.Helper()
	c.Stop(t, StopFast)
	c.Start(t)
}

// Reload makes the server reread its configuration files.
func (c *Cluster) Reload(t testing.TB) {
	t.Helper()
	c.Exec(t, "SELECT pg_reload_conf()")
}

// AppendConf appends lines to postgresql.conf; Reload or Restart to apply.
func (c *Cluster) AppendConf(t testing.TB, lines ...string) {
	t.Helper()
	if err := c.appendOwned(filepath.Join(c.DataDir, "postgresql.conf"), strings.Join(lines, "\n")+"\n"); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
}

// Running reports whether pgtest started the server and has not stopped it.
// NoticeStopped records that something else stopped the server (a
// sidecar fencing it, a demote): it fails t when a postmaster still runs.
func (c *Cluster) NoticeStopped(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
		t.Fatalf("pgtest: the server of %s still runs (postmaster.pid is there)", c.DataDir)
	}
	c.closeConnLocked()
	c.running = false
}

func (c *Cluster) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.running
}

// MkdirOwned makes directory name inside Dir, owned by the server's OS user
// (e.g. a local archive for archive_command), and returns its path.
func (c *Cluster) MkdirOwned(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(c.Dir, name)
	if err := os.MkdirAll(p, 0o700); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if err := c.chown(p); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return p
}

// Conn opens a new connection to the cluster as the superuser; it is closed
// when t ends.
func (c *Cluster) Conn(t testing.TB, extra ...string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString(extra...))
	if err != nil {
		t.Fatalf("pgtest: connect to port %d: %v", c.Port, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(ctx)
	})
	return conn
}

// sharedConn returns the helper connection, opening it when needed.
func (c *Cluster) sharedConn(t testing.TB) *pgx.Conn {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && !c.conn.IsClosed() {
		return c.conn
	}
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.ConnString())
	if err != nil {
		t.Fatalf("pgtest: connect to port %d: %v", c.Port, err)
	}
	c.conn = conn
	return conn
}

func (c *Cluster) closeConnLocked() {
	if c.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.conn.Close(ctx)
	c.conn = nil
}

// Exec runs sql on a shared superuser connection and fails t on error.
func (c *Cluster) Exec(t testing.TB, sql string, args ...any) pgconn.CommandTag {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	defer cancel()
	tag, err := c.sharedConn(t).Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("pgtest: exec %q: %v", sql, err)
	}
	return tag
}

// QueryRow runs sql on a shared superuser connection; call Scan on the
// result (the connection stays busy until then):
//
//	var n int
//	c.QueryRow(t, "SELECT count(*) FROM t").Scan(&n)
func (c *Cluster) QueryRow(t testing.TB, sql string, args ...any) *Row {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), queryTimeout)
	return &Row{t: t, sql: sql, row: c.sharedConn(t).QueryRow(ctx, sql, args...), cancel: cancel}
}

// Row is the result of Cluster.QueryRow.
type Row struct {
	t      testing.TB
	sql    string
	row    pgx.Row
	cancel context.CancelFunc
}

// Scan copies the row's columns into dest and fails the test on error
// (including pgx.ErrNoRows).
func (r *Row) Scan(dest ...any) {
	r.t.Helper()
	defer r.cancel()
	if err := r.row.Scan(dest...); err != nil {
		r.t.Fatalf("pgtest: query %q: %v", r.sql, err)
	}
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	return tail(readFrom(c.LogFile, fileSize(c.LogFile)-64<<10), n)
}

// cleanup runs when the test ends: log on failure, stop, remove.
func (c *Cluster) cleanup(t testing.TB) {
	if t.Failed() {
		t.Logf("pgtest: server log of %s (port %d):\n%s", c.DataDir, c.Port, c.LogTail(200))
	}
	if err := c.stop(StopImmediate); err != nil {
		t.Logf("pgtest: %v", err)
		c.killPostmaster()
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		t.Logf("pgtest: remove %s: %v", c.Dir, err)
	}
}

// killPostmaster sends SIGQUIT (immediate shutdown) to the postmaster named
// in postmaster.pid, the last resort when pg_ctl could not stop it.
func (c *Cluster) killPostmaster() {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if pid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGQUIT)
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom returns path's content from offset (clamped to 0) on, or "".
func readFrom(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if offset < 0 {
		offset = 0
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
