package archive

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
)

// The daemon tests run a Daemon in-process on a filesystem repository with
// 1 MiB segments, and talk to it with Client as the hooks do.

const daemonSeg = 1 << 20

// daemonEnv is a data directory with a pg_wal, a repository, a daemon
// serving them and a client of the daemon.
type daemonEnv struct {
	dataDir, walDir string
	socket          string
	cluster         repo.Cluster
	cfg             Config
	store           storage.Store
	log             *bytes.Buffer
	logMu           *sync.Mutex
	cancel          context.CancelFunc
	served          chan error
}

// daemonSocketDir returns a short directory for sockets: t.TempDir() may
// be longer than a unix socket path allows.
func daemonSocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wfd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// daemonStore wraps a store; delay slows every Put so a request stays in
// flight.
type daemonStore struct {
	storage.Store
	delay time.Duration
}

func (s *daemonStore) Put(ctx context.Context, key string, r io.Reader) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Store.Put(ctx, key, r)
}

func (s *daemonStore) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if err := s.wait(ctx); err != nil {
		return err
	}
	return s.Store.(storage.ConditionalCreator).PutIfAbsent(ctx, key, r)
}

func (s *daemonStore) wait(ctx context.Context) error {
	if s.delay == 0 {
		return nil
	}
	select {
	case <-time.After(s.delay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type daemonEnvOptions struct {
	putDelay        time.Duration
	ahead           int
	shutdownTimeout time.Duration
	registry        *prometheus.Registry
	health          *DaemonHealth
}

func newDaemonEnv(t *testing.T, o daemonEnvOptions) *daemonEnv {
	t.Helper()
	e := &daemonEnv{
		dataDir: filepath.Join(t.TempDir(), "pgdata"),
		socket:  filepath.Join(daemonSocketDir(t), "wf.sock"),
		cluster: repo.Cluster{SystemID: 7310000000000000077, PGMajor: 15, WALSegmentSize: daemonSeg, Source: "data directory (test)"},
		log:     &bytes.Buffer{},
		logMu:   &sync.Mutex{},
	}
	e.walDir = filepath.Join(e.dataDir, "pg_wal")
	if err := os.MkdirAll(filepath.Join(e.walDir, "archive_status"), 0o700); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(root, 0o750); err != nil {
		t.Fatal(err)
	}
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: e.cluster, Compression: "lz4", CreatedBy: "daemon_test"}); err != nil {
		t.Fatal(err)
	}
	e.store = &daemonStore{Store: st, delay: o.putDelay}
	r, err := repo.Open(ctx, e.store, repo.OpenOptions{Codec: codec.New()})
	if err != nil {
		t.Fatal(err)
	}
	size, err := pg.NewWALSegmentSize(daemonSeg)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(lockedWriter{e.logMu, e.log}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.cfg = Config{Repos: []*repo.Repo{r}, Cluster: e.cluster, SegmentSize: size, Log: log}
	e.start(t, o)
	return e
}

// start runs a daemon until the test ends.
func (e *daemonEnv) start(t *testing.T, o daemonEnvOptions) {
	t.Helper()
	ln, err := Listen(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewDaemon(e.cfg, DaemonOptions{DataDir: e.dataDir, Push: PushOptions{Ahead: o.ahead}, ShutdownTimeout: o.shutdownTimeout,
		Registry: o.registry, Health: o.health})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.served = make(chan error, 1)
	go func() { e.served <- d.Serve(ctx, ln) }()
	t.Cleanup(func() { e.stop(t) })
}

// stop shuts the daemon down and returns Serve's error.
func (e *daemonEnv) stop(t *testing.T) error {
	t.Helper()
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.served:
		return err
	case <-time.After(time.Minute):
		t.Fatal("daemon did not stop within a minute")
	}
	return nil
}

func (e *daemonEnv) logs() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (e *daemonEnv) client() *Client {
	return &Client{Socket: e.socket, DataDir: e.dataDir, Cluster: e.cluster, DialTimeout: daemonDialTimeout}
}

// daemonDialTimeout is generous: a loaded test machine (-race) can take
// longer than the hooks' default to schedule a connect.
const daemonDialTimeout = 5 * time.Second

// segment writes segment i (timeline 1) with random bytes into pg_wal and
// returns its name, path and content.
func (e *daemonEnv) segment(t testing.TB, i int, ready bool) (name, path string, data []byte) {
	t.Helper()
	name = pg.SegmentName(1, pg.SegNo(i), e.cfg.SegmentSize)
	path = filepath.Join(e.walDir, name)
	data = make([]byte, daemonSeg)
	rand.Read(data)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if ready {
		if err := os.WriteFile(filepath.Join(e.walDir, "archive_status", name+".ready"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return name, path, data
}

func TestDaemonPushGetConcurrent(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{})
	const n = 24
	type seg struct {
		name, path string
		data       []byte
	}
	segs := make([]seg, n)
	for i := range segs {
		segs[i].name, segs[i].path, segs[i].data = e.segment(t, i+1, false)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, s := range segs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.client()
			if err := c.Push(ctx, s.path); err != nil {
				errs <- fmt.Errorf("push %s: %w", s.name, err)
				return
			}
			dest := filepath.Join(e.walDir, "got-"+s.name)
			if err := c.Get(ctx, s.name, dest); err != nil {
				errs <- fmt.Errorf("get %s: %w", s.name, err)
				return
			}
			if got, err := os.ReadFile(dest); err != nil || !bytes.Equal(got, s.data) {
				errs <- fmt.Errorf("get %s: content differs (%v)", s.name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Pushing again with the same content succeeds (idempotent).
	if err := e.client().Push(ctx, segs[0].path); err != nil {
		t.Errorf("second push: %v", err)
	}
	// A different file under the same name is a conflict, as in-process.
	other := append([]byte(nil), segs[0].data...)
	other[0] ^= 0xff
	if err := os.WriteFile(segs[0].path, other, 0o600); err != nil {
		t.Fatal(err)
	}
	err := e.client().Push(ctx, segs[0].path)
	var de *DaemonError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &de) || de.Class != hookproto.ClassConflict {
		t.Errorf("conflicting push: got %v, want a DaemonError wrapping ErrConflict", err)
	}
	if err != nil && !strings.Contains(err.Error(), e.socket) {
		t.Errorf("conflicting push: %q does not name the daemon's socket", err)
	}
	// A file in no repository is ErrNotArchived, and nothing is written.
	missing := pg.SegmentName(1, 500, e.cfg.SegmentSize)
	dest := filepath.Join(e.walDir, "RECOVERYXLOG")
	if err := e.client().Get(ctx, missing, dest); !errors.Is(err, ErrNotArchived) {
		t.Errorf("get of a missing file: got %v, want ErrNotArchived", err)
	}
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("get of a missing file wrote %s (%v)", dest, err)
	}
	if err := e.stop(t); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := os.Lstat(e.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after shutdown: %v", err)
	}
	if _, err := os.Lstat(e.socket + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left after shutdown: %v", err)
	}
}

// TestDaemonRelativePaths: the client resolves relative paths against its
// working directory, as PostgreSQL's %p is relative to the data directory.
func TestDaemonRelativePaths(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{})
	name, _, data := e.segment(t, 3, false)
	t.Chdir(e.dataDir)
	c := &Client{Socket: e.socket, DataDir: ".", Cluster: e.cluster, DialTimeout: daemonDialTimeout}
	if err := c.Push(context.Background(), "pg_wal/"+name); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(context.Background(), name, "pg_wal/RECOVERYXLOG"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(e.walDir, "RECOVERYXLOG")); !bytes.Equal(got, data) {
		t.Error("content differs")
	}
}

// TestDaemonLookAhead: a push with look-ahead uploads the other .ready
// segments in the background, and the calls for them are answered from
// the records.
func TestDaemonLookAhead(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{ahead: 4})
	var paths []string
	for i := 1; i <= 5; i++ {
		_, p, _ := e.segment(t, i, true)
		paths = append(paths, p)
	}
	ctx := context.Background()
	for _, p := range paths {
		if err := e.client().Push(ctx, p); err != nil {
			t.Fatalf("push %s: %v", p, err)
		}
		os.Rename(filepath.Join(e.walDir, "archive_status", filepath.Base(p)+".ready"),
			filepath.Join(e.walDir, "archive_status", filepath.Base(p)+".done"))
	}
	for _, p := range paths {
		name := filepath.Base(p)
		dest := filepath.Join(t.TempDir(), name)
		if err := e.client().Get(ctx, name, dest); err != nil {
			t.Errorf("get %s: %v", name, err)
		}
	}
}

func TestDaemonRefusesAnotherCluster(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{})
	_, path, _ := e.segment(t, 1, false)
	ctx := context.Background()

	other := e.client()
	other.Cluster.SystemID++
	err := other.Push(ctx, path)
	if !errors.Is(err, repo.ErrWrongCluster) {
		t.Errorf("push for another system identifier: got %v, want ErrWrongCluster", err)
	} else if !strings.Contains(err.Error(), "7310000000000000077") || !strings.Contains(err.Error(), "7310000000000000078") {
		t.Errorf("refusal %q does not name both system identifiers", err)
	}

	elsewhere := e.client()
	elsewhere.DataDir = t.TempDir()
	if err := elsewhere.Get(ctx, filepath.Base(path), filepath.Join(elsewhere.DataDir, "x")); !errors.Is(err, repo.ErrWrongCluster) {
		t.Errorf("get for another data directory: got %v, want ErrWrongCluster", err)
	} else if !strings.Contains(err.Error(), elsewhere.DataDir) {
		t.Errorf("refusal %q does not name the hook's data directory", err)
	}

	// The same data directory through a symbolic link is the same one.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(e.dataDir, link); err != nil {
		t.Fatal(err)
	}
	linked := e.client()
	linked.DataDir = link
	if err := linked.Push(ctx, path); err != nil {
		t.Errorf("push through a symlinked data directory: %v", err)
	}
}

// TestClientFallsBack: no socket, a stale socket, a connection closed
// before the answer, a daemon that speaks another protocol version: the
// client reports ErrDaemonUnavailable, for the hook to work standalone.
func TestClientFallsBack(t *testing.T) {
	dir := daemonSocketDir(t)
	cl := repo.Cluster{SystemID: 1, PGMajor: 15, WALSegmentSize: daemonSeg}
	client := func(sock string) *Client {
		return &Client{Socket: sock, DataDir: dir, Cluster: cl, DialTimeout: daemonDialTimeout}
	}
	ctx := context.Background()

	t.Run("no socket", func(t *testing.T) {
		start := time.Now()
		err := client(filepath.Join(dir, "none.sock")).Push(ctx, "/x/pg_wal/000000010000000000000001")
		if !errors.Is(err, ErrDaemonUnavailable) {
			t.Errorf("got %v, want ErrDaemonUnavailable", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %s", d)
		}
	})

	t.Run("stale socket", func(t *testing.T) {
		sock := filepath.Join(dir, "stale.sock")
		staleSocket(t, sock)
		if err := client(sock).Get(ctx, "000000010000000000000001", "/x/y"); !errors.Is(err, ErrDaemonUnavailable) {
			t.Errorf("got %v, want ErrDaemonUnavailable", err)
		}
	})

	// A daemon killed in the middle of a request: the connection closes
	// without an answer.
	t.Run("killed mid-request", func(t *testing.T) {
		sock := filepath.Join(dir, "dies.sock")
		fakeDaemon(t, sock, func(conn net.Conn, req hookproto.Request) {})
		err := client(sock).Push(ctx, "/x/pg_wal/000000010000000000000001")
		if !errors.Is(err, ErrDaemonUnavailable) {
			t.Errorf("got %v, want ErrDaemonUnavailable", err)
		}
	})

	t.Run("other protocol version", func(t *testing.T) {
		sock := filepath.Join(dir, "v2.sock")
		fakeDaemon(t, sock, func(conn net.Conn, req hookproto.Request) {
			fmt.Fprintf(conn, `{"v":2,"status":"error","class":"unsupported","message":"daemon speaks protocol version 2"}`+"\n")
		})
		if err := client(sock).Push(ctx, "/x/pg_wal/000000010000000000000001"); !errors.Is(err, ErrDaemonUnavailable) {
			t.Errorf("got %v, want ErrDaemonUnavailable", err)
		}
	})

	t.Run("garbage answer", func(t *testing.T) {
		sock := filepath.Join(dir, "garbage.sock")
		fakeDaemon(t, sock, func(conn net.Conn, req hookproto.Request) { fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\n") })
		if err := client(sock).Push(ctx, "/x/pg_wal/000000010000000000000001"); !errors.Is(err, ErrDaemonUnavailable) {
			t.Errorf("got %v, want ErrDaemonUnavailable", err)
		}
	})

	t.Run("request carries absolute paths and identity", func(t *testing.T) {
		sock := filepath.Join(dir, "echo.sock")
		got := make(chan hookproto.Request, 1)
		fakeDaemon(t, sock, func(conn net.Conn, req hookproto.Request) {
			got <- req
			fmt.Fprintf(conn, `{"v":1,"status":"ok"}`+"\n")
		})
		t.Chdir(dir)
		if err := client(sock).Get(ctx, "000000010000000000000001", "pg_wal/RECOVERYXLOG"); err != nil {
			t.Fatal(err)
		}
		req := <-got
		want := hookproto.Request{Version: 1, Op: hookproto.OpGet, Name: "000000010000000000000001", Dest: filepath.Join(dir, "pg_wal/RECOVERYXLOG"),
			DataDir: dir, SystemID: 1, PGMajor: 15, WALSegmentSize: daemonSeg}
		if req != want {
			t.Errorf("request = %+v, want %+v", req, want)
		}
	})
}

// TestClientDaemonDiesMidRequest kills a real daemon's connection while
// its push is in flight (the store is slow): the client falls back.
func TestClientDaemonDiesMidRequest(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{putDelay: 2 * time.Second, shutdownTimeout: 50 * time.Millisecond})
	_, path, _ := e.segment(t, 1, false)
	errc := make(chan error, 1)
	go func() { errc <- e.client().Push(context.Background(), path) }()
	time.Sleep(300 * time.Millisecond)
	// The shutdown timeout is shorter than the push: the daemon cancels it
	// and closes the connection without an answer, as a killed daemon does.
	e.stop(t)
	if err := <-errc; !errors.Is(err, ErrDaemonUnavailable) {
		t.Errorf("got %v, want ErrDaemonUnavailable", err)
	}
}

// TestDaemonGracefulShutdown: a request in flight when the shutdown starts
// is finished and answered; new connections are refused at once.
func TestDaemonGracefulShutdown(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{putDelay: 500 * time.Millisecond})
	_, path, _ := e.segment(t, 1, false)
	errc := make(chan error, 1)
	go func() { errc <- e.client().Push(context.Background(), path) }()
	time.Sleep(200 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- e.stop(t) }()
	time.Sleep(50 * time.Millisecond)
	if err := e.client().Push(context.Background(), path); !errors.Is(err, ErrDaemonUnavailable) {
		t.Errorf("push after the shutdown started: got %v, want ErrDaemonUnavailable", err)
	}
	if err := <-errc; err != nil {
		t.Errorf("push in flight during shutdown: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if !strings.Contains(e.logs(), "daemon stopped") {
		t.Errorf("logs do not show the shutdown:\n%s", e.logs())
	}
}

// TestClientCancel: a hook interrupted by a signal returns its context's
// error (not ErrDaemonUnavailable: nothing must run after it), and the
// daemon stops the work.
func TestClientCancel(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{putDelay: 5 * time.Second})
	_, path, _ := e.segment(t, 1, false)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.client().Push(ctx, path)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrDaemonUnavailable) {
		t.Errorf("got %v, want the context's error", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("cancelled push took %s", d)
	}
	// The daemon noticed the hook went away and cancelled the push: its
	// shutdown does not wait for the slow store.
	start = time.Now()
	if err := e.stop(t); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown after a cancelled request took %s", d)
	}
}

func TestListen(t *testing.T) {
	dir := daemonSocketDir(t)

	t.Run("mode 0600 and exclusive", func(t *testing.T) {
		sock := filepath.Join(dir, "sub", "a.sock")
		ln, err := Listen(sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		fi, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %s, want a socket with 0600", fi.Mode())
		}
		if _, err := Listen(sock); !errors.Is(err, ErrDaemonRunning) {
			t.Errorf("second Listen: got %v, want ErrDaemonRunning", err)
		} else if !strings.Contains(err.Error(), fmt.Sprint(os.Getpid())) {
			t.Errorf("second Listen: %q does not name the live daemon's process", err)
		}
		entries, _ := os.ReadDir(filepath.Dir(sock))
		if len(entries) != 2 {
			t.Errorf("socket directory holds %d entries, want the socket and its lock", len(entries))
		}
		ln.Close()
		if entries, _ := os.ReadDir(filepath.Dir(sock)); len(entries) != 0 {
			t.Errorf("files left after Close: %v", entries)
		}
	})

	t.Run("stale socket replaced", func(t *testing.T) {
		sock := filepath.Join(dir, "stale.sock")
		staleSocket(t, sock)
		ln, err := Listen(sock)
		if err != nil {
			t.Fatalf("Listen over a stale socket: %v", err)
		}
		ln.Close()
	})

	t.Run("stale lock file", func(t *testing.T) {
		sock := filepath.Join(dir, "lock.sock")
		if err := os.WriteFile(sock+".lock", []byte("99999999\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ln, err := Listen(sock)
		if err != nil {
			t.Fatalf("Listen with a lock file of a dead daemon: %v", err)
		}
		ln.Close()
	})

	t.Run("live daemon without the lock", func(t *testing.T) {
		sock := filepath.Join(dir, "live.sock")
		fakeDaemon(t, sock, func(net.Conn, hookproto.Request) {})
		if _, err := Listen(sock); !errors.Is(err, ErrDaemonRunning) {
			t.Errorf("got %v, want ErrDaemonRunning", err)
		}
	})

	t.Run("not a socket", func(t *testing.T) {
		sock := filepath.Join(dir, "file.sock")
		if err := os.WriteFile(sock, []byte("data"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("got %v, want a refusal", err)
		}
		if b, _ := os.ReadFile(sock); string(b) != "data" {
			t.Error("the file was touched")
		}
	})

	t.Run("path too long", func(t *testing.T) {
		if _, err := Listen("/tmp/" + strings.Repeat("x", 120)); err == nil || !strings.Contains(err.Error(), "--socket") {
			t.Errorf("got %v, want an error naming --socket", err)
		}
	})
}

// TestDaemonBadRequests: malformed or unknown requests get an answer, not
// a dropped connection.
func TestDaemonBadRequests(t *testing.T) {
	e := newDaemonEnv(t, daemonEnvOptions{})
	ask := func(line string) hookproto.Response {
		t.Helper()
		conn, err := net.Dial("unix", e.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintln(conn, line)
		answer, err := bufio.NewReader(conn).ReadBytes('\n')
		if err != nil {
			t.Fatalf("%s: no answer: %v", line, err)
		}
		var r hookproto.Response
		if err := json.Unmarshal(answer, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	id := fmt.Sprintf(`"pgdata":%q,"system_identifier":"%d","pg_major":15,"wal_segment_size":%d`, e.dataDir, e.cluster.SystemID, daemonSeg)
	tests := []struct {
		line  string
		class string
	}{
		{`not json`, hookproto.ClassBadRequest},
		{`{"v":9,"op":"push"}`, hookproto.ClassUnsupported},
		{`{"v":1,"op":"frob",` + id + `}`, hookproto.ClassUnsupported},
		{`{"v":1,"op":"push","path":"pg_wal/000000010000000000000001",` + id + `}`, hookproto.ClassBadRequest},
		{`{"v":1,"op":"get","name":"../x","dest":"/tmp/x",` + id + `}`, hookproto.ClassBadRequest},
		{`{"v":1,"op":"get","name":"000000010000000000000001","dest":"rel",` + id + `}`, hookproto.ClassBadRequest},
	}
	for _, tt := range tests {
		if r := ask(tt.line); r.Version != hookproto.ProtocolVersion || r.Status != hookproto.StatusError || r.Class != tt.class {
			t.Errorf("%s: got %+v, want class %s", tt.line, r, tt.class)
		}
	}
}

func TestClassOf(t *testing.T) {
	tests := []struct {
		err   error
		class string
	}{
		{fmt.Errorf("x: %w", ErrConflict), hookproto.ClassConflict},
		{fmt.Errorf("x: %w", repo.ErrWrongCluster), hookproto.ClassWrongCluster},
		{fmt.Errorf("x: %w", repo.ErrNotInitialized), hookproto.ClassNotInitialized},
		{fmt.Errorf("x: %w", storage.ErrNoBucket), hookproto.ClassNoBucket},
		{fmt.Errorf("x: %w", repo.ErrIncompatible), hookproto.ClassIncompatible},
		{fmt.Errorf("x: %w", codec.ErrWrongKey), hookproto.ClassPermission},
		{fmt.Errorf("x: %w", storage.ErrPermission), hookproto.ClassPermission},
		{fmt.Errorf("x: %w", codec.ErrCorrupt), hookproto.ClassCorrupt},
		{storage.Retryable(errors.New("503")), hookproto.ClassTransient},
		{errors.New("disk on fire"), hookproto.ClassFailure},
	}
	for _, tt := range tests {
		if got := ClassOf(tt.err); got != tt.class {
			t.Errorf("ClassOf(%v) = %s, want %s", tt.err, got, tt.class)
		}
		// And back: the client's error matches what the daemon's matched.
		de := &DaemonError{Class: tt.class, Message: tt.err.Error()}
		if tt.class != hookproto.ClassFailure && ClassOf(de) != tt.class {
			t.Errorf("DaemonError of class %s classifies as %s", tt.class, ClassOf(de))
		}
	}
}

// staleSocket leaves a socket file at path that nobody listens on, as a
// daemon killed with SIGKILL does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	t.Cleanup(func() { os.Remove(path) })
}

// fakeDaemon serves path with answer, which writes the answer (or nothing)
// to each request; the connection is closed after it.
func fakeDaemon(t *testing.T, path string, answer func(net.Conn, hookproto.Request)) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				line, err := bufio.NewReader(conn).ReadBytes('\n')
				if err != nil {
					return
				}
				var req hookproto.Request
				json.Unmarshal(line, &req)
				answer(conn, req)
			}()
		}
	}()
}

// TestDaemonMetricsAndHealth: the daemon counts what it answers on the
// registry it is given, says what it last archived and failed at, is
// healthy while it serves, and removes its metrics when it stops.
func TestDaemonMetricsAndHealth(t *testing.T) {
	reg := prometheus.NewRegistry()
	health := &DaemonHealth{}
	e := newDaemonEnv(t, daemonEnvOptions{registry: reg, health: health})
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Second)
	for health.Check() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := health.Check(); err != nil {
		t.Fatalf("health of a serving daemon: %v", err)
	}
	name, path, _ := e.segment(t, 5, false)
	if err := e.client().Push(ctx, path); err != nil {
		t.Fatal(err)
	}
	if err := e.client().Push(ctx, filepath.Join(e.walDir, "000000010000000000000042")); err == nil {
		t.Fatal("push of a missing file succeeded")
	}
	if err := e.client().Get(ctx, "000000010000000000000077", filepath.Join(e.walDir, "RECOVERYXLOG")); !errors.Is(err, ErrNotArchived) {
		t.Fatalf("get of a segment not archived: %v", err)
	}
	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{e.metricVec(t, reg, "walferry_archive_pushes_total", "ok"), 1},
		{e.metricVec(t, reg, "walferry_archive_pushes_total", "error"), 1},
		{e.metricVec(t, reg, "walferry_archive_gets_total", "not_archived"), 1},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%v = %v, want %v", tc.c, got, tc.want)
		}
	}
	st := health.State()
	if st.LastArchived != name || st.ArchivedAt.IsZero() || !strings.Contains(st.LastFailure, "000000010000000000000042") {
		t.Errorf("state %+v; want %s archived and the missing file's failure", st, name)
	}
	if err := e.stop(t); err != nil {
		t.Fatal(err)
	}
	if health.Check() == nil {
		t.Error("a stopped daemon is healthy")
	}
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Errorf("%d metrics left registered after the daemon stopped", n)
	}
}

// metricVec finds the counter of name with the result label value.
func (e *daemonEnv) metricVec(t *testing.T, reg *prometheus.Registry, name, result string) prometheus.Collector {
	t.Helper()
	return counterFor{reg: reg, name: name, result: result}
}

// counterFor is a Collector reading one labelled counter out of reg.
type counterFor struct {
	reg          *prometheus.Registry
	name, result string
}

func (c counterFor) Describe(chan<- *prometheus.Desc) {}

func (c counterFor) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := c.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != c.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == c.result {
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(c.name, "", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
				}
			}
		}
	}
}
