package archive

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
)

// Protocol limits.
const (
	// requestReadTimeout bounds how long a connection may take to send its
	// request; answerWriteTimeout how long the daemon waits to hand over
	// the answer.
	requestReadTimeout = 10 * time.Second
	answerWriteTimeout = 10 * time.Second
	// maxSocketPath is the longest unix socket path Linux accepts.
	maxSocketPath = 107
	// DefaultShutdownTimeout bounds a graceful shutdown when
	// DaemonOptions.ShutdownTimeout is zero.
	DefaultShutdownTimeout = time.Minute
	// DefaultMaxConcurrent bounds the requests served at once when
	// DaemonOptions.MaxConcurrent is zero.
	DefaultMaxConcurrent = 64
)

// ErrDaemonRunning: another daemon holds the socket.
var ErrDaemonRunning = errors.New("another walferry daemon is serving this socket")

// DaemonOptions configure a Daemon.
type DaemonOptions struct {
	// DataDir is the data directory of Config.Cluster. Hooks running for
	// another data directory are refused.
	DataDir string
	// Push and Get configure the long-lived Pusher and Getter; their
	// Background field is forced to true.
	Push PushOptions
	Get  GetOptions
	// ShutdownTimeout bounds a graceful shutdown: finishing the requests in
	// flight, then the background uploads and prefetches. Zero means
	// DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// MaxConcurrent bounds the requests served at once; further hooks wait
	// in the socket's backlog. Zero means DefaultMaxConcurrent.
	MaxConcurrent int
	// Registry, when set, gets the daemon's metrics (daemonmetrics.go) for
	// as long as Serve runs; the caller serves it.
	Registry *prometheus.Registry
	// Health, when set, tells the caller whether the daemon serves and what
	// it last archived or failed at.
	Health *DaemonHealth
}

// Daemon serves archive-push and archive-get for one cluster over a unix
// socket, with a long-lived Pusher and Getter (warm store connections,
// look-ahead and prefetch running in the background). It is safe for many
// concurrent hook calls. The protocol, its requests, answers and failure
// classes, is package hookproto's.
type Daemon struct {
	cfg     Config
	o       DaemonOptions
	log     *slog.Logger
	dataDir os.FileInfo
	pusher  *Pusher
	getter  *Getter
	metrics *daemonMetrics
}

// NewDaemon builds the daemon's Pusher and Getter. cfg.Repos must already
// be checked against cfg.Cluster. Serve runs it; a Daemon that is never
// served must be closed with Close.
func NewDaemon(cfg Config, o DaemonOptions) (*Daemon, error) {
	if o.DataDir == "" || !filepath.IsAbs(o.DataDir) {
		return nil, fmt.Errorf("daemon: the data directory must be an absolute path, got %q", o.DataDir)
	}
	fi, err := os.Stat(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("daemon: data directory: %w", err)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	o.Push.Background, o.Get.Background = true, true
	d := &Daemon{cfg: cfg, o: o, log: cfg.logger(), dataDir: fi}
	if d.pusher, err = NewPusher(cfg, o.Push); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if d.getter, err = NewGetter(cfg, o.Get); err != nil {
		d.pusher.Close(context.Background())
		return nil, fmt.Errorf("daemon: %w", err)
	}
	spool := d.getter.spoolDir
	if spool == "" { // recovery's default, next to pg_wal/RECOVERYXLOG
		spool = defaultSpoolDir(filepath.Join(o.DataDir, "pg_wal", "RECOVERYXLOG"))
	}
	if d.metrics, err = newDaemonMetrics(o.Registry, o.Health, cfg.SegmentSize, spool); err != nil {
		d.pusher.Close(context.Background())
		d.getter.Close(context.Background())
		return nil, err
	}
	return d, nil
}

// Serve answers hooks on ln until ctx is cancelled, then shuts down
// gracefully: it stops accepting (and removes the socket, so new hooks work
// standalone at once), lets the requests in flight finish, then waits for
// the background uploads and prefetches, all within ShutdownTimeout;
// requests still running then are cancelled. Serve closes ln and the
// daemon before it returns; it returns nil after a clean shutdown.
func (d *Daemon) Serve(ctx context.Context, ln *Listener) error {
	d.log.Info("daemon listening", "socket", ln.Path(), "pgdata", d.o.DataDir,
		"system_identifier", strconv.FormatUint(d.cfg.Cluster.SystemID, 10), "repos", len(d.cfg.Repos))
	d.o.Health.set(func(h *DaemonHealth) { h.serving, h.stopped = true, nil })

	// Requests are not cancelled by the shutdown signal, only by their
	// hook going away or by the shutdown timeout.
	reqCtx, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	var inflight sync.WaitGroup
	stopAccepting := make(chan struct{})
	acceptErr := make(chan error, 1)
	inflight.Add(1)
	go func() {
		defer inflight.Done()
		sem := make(chan struct{}, d.o.MaxConcurrent)
		for {
			select {
			case sem <- struct{}{}:
			case <-stopAccepting:
				return
			}
			conn, err := ln.ln.AcceptUnix()
			if err != nil {
				<-sem
				select {
				case <-stopAccepting:
				default:
					acceptErr <- err
				}
				return
			}
			inflight.Add(1)
			go func() {
				defer inflight.Done()
				defer func() { <-sem }()
				d.serveConn(reqCtx, conn)
			}()
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
		d.log.Info("daemon shutting down: no new requests; finishing those in flight and background uploads",
			"timeout", d.o.ShutdownTimeout.String())
	case err := <-acceptErr:
		runErr = fmt.Errorf("daemon: accept on %s: %w", ln.Path(), err)
		d.log.Error("daemon stops: the socket failed", "err", err)
	}
	close(stopAccepting)
	ln.stopListening()
	d.o.Health.set(func(h *DaemonHealth) {
		h.serving = false
		h.stopped = runErr
		if h.stopped == nil {
			h.stopped = errors.New("shut down")
		}
	})

	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.o.ShutdownTimeout)
	defer cancel()
	drained := make(chan struct{})
	go func() { inflight.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-shutCtx.Done():
		d.log.Warn("daemon shutdown timeout: cancelling the requests still in flight")
		cancelRequests()
		<-drained
	}
	if err := d.Close(shutCtx); err != nil && runErr == nil {
		runErr = err
	}
	if err := ln.Close(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr == nil {
		d.log.Info("daemon stopped")
	}
	return runErr
}

// Close waits, within ctx, for the Pusher's background uploads and the
// Getter's prefetches, and releases them.
// SpoolDepth is how many prefetched segments wait in the spool for
// recovery to ask for them.
func (d *Daemon) SpoolDepth() int { return countSpooled(d.getter.spoolDir) }

func (d *Daemon) Close(ctx context.Context) error {
	d.metrics.unregister()
	perr := d.pusher.Close(ctx)
	gerr := d.getter.Close(ctx)
	if perr != nil {
		return fmt.Errorf("daemon: close pusher: %w", perr)
	}
	if gerr != nil {
		return fmt.Errorf("daemon: close getter: %w", gerr)
	}
	return nil
}

// serveConn reads one request, serves it and writes the answer.
func (d *Daemon) serveConn(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(requestReadTimeout))
	br := bufio.NewReaderSize(conn, 4096)
	line, err := hookproto.ReadLine(br)
	if err != nil {
		d.log.Debug("hook connection without a request", "err", err)
		return
	}
	conn.SetReadDeadline(time.Time{})
	var req hookproto.Request
	var resp hookproto.Response
	if err := json.Unmarshal(line, &req); err != nil {
		resp = hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassBadRequest, Message: "daemon: malformed request: " + err.Error()}
	} else {
		// The hook holds its side open until it has the answer: a read that
		// ends means it went away (PostgreSQL killed it), so the work stops.
		reqCtx, cancel := context.WithCancel(ctx)
		go func() {
			var b [1]byte
			br.Read(b[:])
			cancel()
		}()
		resp = d.handle(reqCtx, req)
		cancel()
		if ctx.Err() != nil && resp.Status == hookproto.StatusError {
			// The shutdown timeout cancelled the work: close without an
			// answer, as a killed daemon would, so the hook does the work
			// itself instead of failing.
			d.log.Warn("request abandoned at shutdown", "op", req.Op)
			return
		}
	}
	resp.Version = hookproto.ProtocolVersion
	out, err := json.Marshal(resp)
	if err != nil {
		d.log.Error("encode answer", "err", err)
		return
	}
	conn.SetWriteDeadline(time.Now().Add(answerWriteTimeout))
	if _, err := conn.Write(append(out, '\n')); err != nil {
		d.log.Debug("hook went away before its answer", "op", req.Op, "err", err)
	}
}

// handle checks a request and runs it.
func (d *Daemon) handle(ctx context.Context, req hookproto.Request) hookproto.Response {
	start := time.Now()
	if req.Version < hookproto.MinProtocolVersion || req.Version > hookproto.ProtocolVersion {
		return hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassUnsupported,
			Message: fmt.Sprintf("daemon speaks protocol versions %d to %d, the hook sent version %d", hookproto.MinProtocolVersion, hookproto.ProtocolVersion, req.Version)}
	}
	if req.Partial && (req.Op != hookproto.OpGet || req.Version < hookproto.PartialVersion) {
		return badRequest("%q with partial (protocol version %d): partial goes with get, from version %d", req.Op, req.Version, hookproto.PartialVersion)
	}
	if resp, ok := d.refuse(req); !ok {
		d.log.Warn("request refused", "op", req.Op, "pgdata", req.DataDir, "err", resp.Message)
		return resp
	}
	var err error
	var name string
	switch req.Op {
	case hookproto.OpPush:
		name = filepath.Base(req.Path)
		if !filepath.IsAbs(req.Path) {
			return badRequest("push: the path must be absolute, got %q", req.Path)
		}
		err = d.pusher.Push(ctx, filepath.Clean(req.Path))
		d.metrics.pushed(name, err)
	case hookproto.OpGet:
		name = req.Name
		if req.Name == "" || strings.ContainsAny(req.Name, `/\`) || req.Name == "." || req.Name == ".." {
			return badRequest("get: %q is not a WAL file name", req.Name)
		}
		if !filepath.IsAbs(req.Dest) {
			return badRequest("get: the destination must be an absolute path, got %q", req.Dest)
		}
		if req.Partial {
			err = d.getter.GetPartial(ctx, req.Name, filepath.Clean(req.Dest))
		} else {
			err = d.getter.Get(ctx, req.Name, filepath.Clean(req.Dest))
		}
		d.metrics.got(err)
	default:
		return hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassUnsupported, Message: fmt.Sprintf("daemon does not know the operation %q", req.Op)}
	}
	resp := responseFor(err)
	attrs := []any{"op", req.Op, "segment", name, "status", resp.Status, "duration", time.Since(start).String()}
	if resp.Status == hookproto.StatusError {
		d.log.Warn("request failed", append(attrs, "class", resp.Class, "err", resp.Message)...)
	} else {
		d.log.Debug("request served", attrs...)
	}
	return resp
}

// refuse answers a request for another cluster or data directory.
func (d *Daemon) refuse(req hookproto.Request) (hookproto.Response, bool) {
	cl := d.cfg.Cluster
	if req.SystemID != cl.SystemID || req.PGMajor != cl.PGMajor || req.WALSegmentSize != cl.WALSegmentSize {
		return hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassWrongCluster, Message: fmt.Sprintf(
			"%v: the daemon serves system identifier %d (PostgreSQL %d, %d-byte segments, data directory %s), "+
				"but the hook runs for system identifier %d (PostgreSQL %d, %d-byte segments, data directory %s); "+
				"point --socket at this cluster's daemon",
			repo.ErrWrongCluster, cl.SystemID, cl.PGMajor, cl.WALSegmentSize, d.o.DataDir,
			req.SystemID, req.PGMajor, req.WALSegmentSize, req.DataDir)}, false
	}
	fi, err := os.Stat(req.DataDir)
	if !filepath.IsAbs(req.DataDir) || err != nil || !os.SameFile(fi, d.dataDir) {
		return hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassWrongCluster, Message: fmt.Sprintf(
			"%v: the daemon serves the data directory %s, but the hook runs for %s; point --socket at this data directory's daemon",
			repo.ErrWrongCluster, d.o.DataDir, req.DataDir)}, false
	}
	return hookproto.Response{}, true
}

func badRequest(format string, args ...any) hookproto.Response {
	return hookproto.Response{Status: hookproto.StatusError, Class: hookproto.ClassBadRequest, Message: "daemon: " + fmt.Sprintf(format, args...)}
}

// responseFor turns the outcome of a push or get into an answer.
func responseFor(err error) hookproto.Response {
	switch {
	case err == nil:
		return hookproto.Response{Status: hookproto.StatusOK}
	case errors.Is(err, ErrNotArchived):
		return hookproto.Response{Status: hookproto.StatusNotArchived}
	}
	return hookproto.Response{Status: hookproto.StatusError, Class: ClassOf(err), Message: err.Error()}
}

// ClassOf names the class of a failure, as the daemon answers it: the
// name of its kind (internal/failure classifies every error, once).
func ClassOf(err error) string { return failure.Of(err).String() }

// Listener is the daemon's unix socket, held exclusively: a lock file next
// to the socket ("<socket>.lock") makes sure one daemon serves it.
type Listener struct {
	path     string
	ln       *net.UnixListener
	sock     os.FileInfo // the socket file this listener created
	lock     *os.File
	lockPath string
	once     sync.Once
}

// Listen creates the daemon's socket at path, readable and writable by the
// owner only (mode 0600), creating its directory (mode 0700) when missing.
// A socket file left by a daemon that died is removed; when another daemon
// is live on path, Listen fails with ErrDaemonRunning.
func Listen(path string) (*Listener, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("daemon socket: %w", err)
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("daemon socket %s: the path is %d bytes long, unix sockets allow %d; choose a shorter --socket",
			path, len(path), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("daemon socket: %w", err)
	}
	lockPath := path + ".lock"
	lock, err := lockSocket(lockPath)
	if err != nil {
		return nil, fmt.Errorf("daemon socket %s: %w", path, err)
	}
	l := &Listener{path: path, lock: lock, lockPath: lockPath}
	if err := l.listen(); err != nil {
		l.unlock()
		return nil, fmt.Errorf("daemon socket %s: %w", path, err)
	}
	return l, nil
}

// listen removes a stale socket and binds a new one. The lock is held, so
// no live daemon owns an existing socket file.
func (l *Listener) listen() error {
	fi, err := os.Lstat(l.path)
	switch {
	case err == nil && fi.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("the path exists and is not a socket; remove it or choose another --socket")
	case err == nil:
		// Belt and braces: a daemon that does not take the lock (another
		// build) would still answer.
		if c, derr := net.DialTimeout("unix", l.path, 100*time.Millisecond); derr == nil {
			c.Close()
			return fmt.Errorf("%w (it answers on the socket)", ErrDaemonRunning)
		}
		if err := os.Remove(l.path); err != nil && !errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("remove the stale socket: %w", err)
		}
	case !errors.Is(err, iofs.ErrNotExist):
		return err
	}
	ln, err := listenPrivate(l.path)
	if err != nil {
		return err
	}
	if l.sock, err = os.Lstat(l.path); err != nil {
		ln.Close()
		return err
	}
	l.ln = ln
	return nil
}

// listenPrivate binds a unix socket that only its owner can connect to.
// It binds under a temporary name, restricts the mode, then renames the
// socket into place, so the socket is never reachable with a looser mode.
func listenPrivate(path string) (*net.UnixListener, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), ".walferry-"+hex.EncodeToString(b[:]))
	if len(tmp) > maxSocketPath {
		// No room for a temporary name: bind in place, then restrict.
		tmp = path
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*net.UnixListener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if tmp != path {
		if err := os.Rename(tmp, path); err != nil {
			return fail(err)
		}
	}
	return ln, nil
}

// Path returns the socket's absolute path.
func (l *Listener) Path() string { return l.path }

// stopListening closes the socket and removes its file (when it is still
// the one this listener created), so hooks stop connecting at once.
func (l *Listener) stopListening() {
	l.once.Do(func() {
		l.ln.Close()
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.sock) {
			os.Remove(l.path)
		}
	})
}

// Close stops listening, removes the socket file and releases the lock.
// Connections already accepted are not affected.
func (l *Listener) Close() error {
	l.stopListening()
	return l.unlock()
}

// unlock removes the lock file while holding the lock, then releases it.
func (l *Listener) unlock() error {
	if l.lock == nil {
		return nil
	}
	err := os.Remove(l.lockPath)
	if cerr := l.lock.Close(); err == nil {
		err = cerr
	}
	l.lock = nil
	if errors.Is(err, iofs.ErrNotExist) {
		err = nil
	}
	return err
}

// lockSocket takes an exclusive lock on path, creating it, and writes the
// process id into it. A daemon removes its lock file when it stops, so the
// lock is retaken when the file was replaced between open and lock.
func lockSocket(path string) (*os.File, error) {
	for range 5 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			var pid [32]byte
			n, _ := f.ReadAt(pid[:], 0)
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				if p := strings.TrimSpace(string(pid[:n])); p != "" {
					return nil, fmt.Errorf("%w (process %s holds %s)", ErrDaemonRunning, p, path)
				}
				return nil, fmt.Errorf("%w (%s is locked)", ErrDaemonRunning, path)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		held, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if now, err := os.Stat(path); err == nil && os.SameFile(held, now) {
			if err := f.Truncate(0); err == nil {
				f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			}
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("lock %s: the file keeps being replaced", path)
}
