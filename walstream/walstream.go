// Package walstream is walferry's physical WAL receiver: it streams WAL
// from a PostgreSQL server over the replication protocol and stores it in
// the repository in exactly the form archive-push writes, so archive-get,
// restore and verify need nothing special.
//
// Received bytes go to a segment file in a local spool directory (never
// memory: segments reach 1 GiB). A completed segment is pushed to every
// repository with archive-push's rules (conditional create; the same
// content already stored is fine, other content fails with
// archive.ErrConflict). The unfinished segment is uploaded as
// <segment>.partial at a bounded interval and on shutdown. The flush
// position reported to the server is what is durable in every repository,
// so a physical slot keeps every byte not yet stored, and a receiver named
// in synchronous_standby_names makes commits wait for object storage. It
// is reported the moment an upload makes it move (the uploader wakes the
// receiving loop; nothing polls), so a synchronous commit waits for
// durability, not for a timer; otherwise every StatusInterval.
package walstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// Defaults of Options.
const (
	DefaultPartialInterval = 10 * time.Second
	DefaultStatusInterval  = 10 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultReceiveTimeout is PostgreSQL's wal_receiver_timeout default.
	DefaultReceiveTimeout = time.Minute
	defaultMinBackoff     = time.Second
	defaultMaxBackoff     = time.Minute
)

// recvSuffix marks the spool file of the segment being received. Such a
// file is incomplete by definition and is discarded at start-up: its
// segment is streamed again from its beginning.
const recvSuffix = ".recv"

// queueLen bounds how many spooled files wait for upload before the
// receiver stops reading from the server (which then keeps the WAL).
const queueLen = 256

// Options configure Run.
type Options struct {
	// Repos are every configured repository, opened and checked against
	// the cluster; a segment counts as flushed once every one holds it.
	Repos []*repo.Repo
	// SegmentSize is the repositories' WAL segment size; a server with
	// another size is refused.
	SegmentSize pg.WALSegmentSize
	// Conn is the server to stream from. Run copies it and sets
	// replication=true.
	Conn *pgconn.Config
	// Slot is the physical replication slot to use, created (with
	// RESERVE_WAL) when missing; empty streams without a slot.
	Slot string
	// SpoolDir holds the segment being received and completed segments
	// waiting for upload. Created when missing. One receiver per spool.
	SpoolDir string
	// PartialInterval is how often the unfinished segment is uploaded as
	// <segment>.partial when it grew; 0 means DefaultPartialInterval.
	PartialInterval time.Duration
	// StatusInterval is how often a status update is sent to the server
	// when nothing else prompts one; 0 means DefaultStatusInterval.
	StatusInterval time.Duration
	// ReceiveTimeout is how long the server may send nothing while
	// streaming before the connection is taken for lost and made again, as
	// PostgreSQL's own walreceiver does (wal_receiver_timeout): after half
	// of it a status asking for a reply goes out. It also bounds
	// connecting and each exchange before streaming starts. 0 means
	// DefaultReceiveTimeout.
	ReceiveTimeout time.Duration
	// ShutdownTimeout bounds, at shutdown, the wait for the uploads of
	// spooled segments and the last partial; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// MaxAttempts bounds consecutive failed connection attempts; 0 retries
	// forever.
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the pause between attempts (doubling
	// from the first to the second); 0 means 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Log receives operational messages; nil discards them. Every minute
	// it gets a "progress" line with the received, flushed and uploaded
	// positions and the lag, when they moved.
	Log *slog.Logger
	// Registry, when not nil, gets the receiver's Prometheus metrics
	// (walferry_walstream_*, see metrics.go and docs/metrics.md) while Run
	// runs: they are unregistered when it returns, so one registry serves
	// one Run at a time.
	Registry *prometheus.Registry
	// Health, when not nil, is kept up to date for a health check; Run
	// starts it afresh.
	Health *Health
}

// ErrSpoolBusy: another receiver uses the spool directory.
var ErrSpoolBusy = errors.New("the spool directory is in use by another wal-receive")

// errServerSilent: the server sent nothing for ReceiveTimeout, not even
// an answer to a status asking for one (a link that hangs without closing);
// the receiver reconnects.
var errServerSilent = errors.New("no message from the server")

// errStreamEnded: the server closed the stream without a next timeline
// (server shutdown); the receiver reconnects.
var errStreamEnded = errors.New("the server ended streaming")

// Run streams WAL until ctx is cancelled (a clean shutdown: the spooled
// segments and the last partial are uploaded, a final status is sent, and
// Run returns nil) or a permanent error: a server of another cluster
// (repo.ErrWrongCluster), content conflicting with the repository
// (archive.ErrConflict), or MaxAttempts consecutive failures.
func Run(ctx context.Context, o Options) error {
	r, err := newReceiver(o)
	if err != nil {
		return err
	}
	return r.run(ctx)
}

// receiver is the state of one Run. The fields after mu are shared with
// the uploader goroutine; the others belong to the receiving goroutine.
type receiver struct {
	o      Options
	log    *slog.Logger
	pusher *archive.Pusher
	m      *metrics
	size   pg.WALSegmentSize

	conn        *replication.Conn
	tli         pg.TimeLineID
	next        pg.LSN // next byte expected from the server
	seg         *os.File
	segNo       pg.SegNo
	histories   map[pg.TimeLineID]bool // history files queued this run
	slotChecked bool
	progressed  bool // the current session received WAL
	queue       chan string
	upDone      chan struct{}
	// wake ends the wait for the server when the flush position moved
	// (see copyLoop); wakeups counts the waits it or the status timer
	// ended (tests read it).
	wake    wakeup
	wakeups atomic.Int64

	mu         sync.Mutex
	flushed    pg.LSN // every byte before it is in every repository
	cur        current
	fatal      error
	lastStatus pg.LSN
}

// current describes the segment being received, for partial uploads.
type current struct {
	name, path string
	start, end pg.LSN
}

func newReceiver(o Options) (*receiver, error) {
	if len(o.Repos) == 0 {
		return nil, errors.New("walstream: no repository configured")
	}
	if o.Conn == nil {
		return nil, errors.New("walstream: no server connection configured")
	}
	if o.Slot != "" {
		if err := replication.ValidSlotName(o.Slot); err != nil {
			return nil, fmt.Errorf("walstream: %w", err)
		}
	}
	if o.SpoolDir == "" {
		return nil, errors.New("walstream: no spool directory configured")
	}
	sysID := o.Repos[0].Metadata().SystemID
	if o.SegmentSize.Bytes() != o.Repos[0].Metadata().WALSegmentSize {
		return nil, fmt.Errorf("walstream: %w: %s uses %d-byte WAL segments, not %s",
			repo.ErrWrongCluster, o.Repos[0], o.Repos[0].Metadata().WALSegmentSize, o.SegmentSize)
	}
	for _, rp := range o.Repos[1:] {
		if rp.Metadata().SystemID != sysID {
			return nil, fmt.Errorf("walstream: %w: %s belongs to system identifier %d but %s to %d",
				repo.ErrWrongCluster, o.Repos[0], sysID, rp, rp.Metadata().SystemID)
		}
	}
	if o.PartialInterval <= 0 {
		o.PartialInterval = DefaultPartialInterval
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = DefaultStatusInterval
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.ReceiveTimeout <= 0 {
		o.ReceiveTimeout = DefaultReceiveTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = defaultMinBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(defaultMaxBackoff, o.MinBackoff)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "walstream")
	spool, err := filepath.Abs(o.SpoolDir)
	if err != nil {
		return nil, fmt.Errorf("walstream: spool directory %s: %w", o.SpoolDir, err)
	}
	o.SpoolDir = spool
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("walstream: spool directory: %w", err)
	}
	pusher, err := archive.NewPusher(archive.Config{Repos: o.Repos, SegmentSize: o.SegmentSize, Log: log},
		archive.PushOptions{Ahead: 0, StateDir: filepath.Join(spool, ".pushed")})
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registry, o.Health)
	if err != nil {
		return nil, err
	}
	return &receiver{o: o, log: log, pusher: pusher, m: m, size: o.SegmentSize,
		histories: map[pg.TimeLineID]bool{}}, nil
}

func (r *receiver) run(ctx context.Context) error {
	defer r.m.unregister()
	lock, err := lockSpool(r.o.SpoolDir)
	if err != nil {
		r.m.disconnected(nil)
		return err
	}
	defer lock.Close()
	pending, err := r.scanSpool()
	if err != nil {
		return err
	}
	r.queue = make(chan string, queueLen)
	r.upDone = make(chan struct{})
	upCtx, upCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer upCancel()
	go func() {
		defer close(r.upDone)
		if err := r.uploader(upCtx, pending); err != nil {
			r.setFatal(err)
		}
	}()

	err = r.receive(ctx, pending)
	r.m.disconnected(nil)

	// Shutdown: no more sends on the queue; let the uploader drain it and
	// upload the last partial, within the shutdown timeout.
	close(r.queue)
	t := time.NewTimer(r.o.ShutdownTimeout)
	select {
	case <-r.upDone:
	case <-t.C:
		r.log.Warn("shutdown timeout: uploads cancelled; the spool keeps their files for the next run",
			"timeout", r.o.ShutdownTimeout)
		upCancel()
		<-r.upDone
	}
	t.Stop()
	r.closeSegment()
	if r.conn != nil {
		if !r.conn.PgConn().IsClosed() {
			if serr := r.sendStatus(false); serr == nil {
				r.log.Info("final status sent", "lsn", r.flushedLSN())
			}
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = r.conn.Close(cctx)
		cancel()
	}
	if ferr := r.fatalErr(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// scanSpool returns the spooled files left by a previous run, in upload
// order, and removes the incomplete segment it was receiving.
func (r *receiver) scanSpool() ([]string, error) {
	entries, err := os.ReadDir(r.o.SpoolDir)
	if err != nil {
		return nil, fmt.Errorf("walstream: read spool %s: %w", r.o.SpoolDir, err)
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasSuffix(n, recvSuffix) || strings.HasPrefix(n, atomicfile.TempPrefix) {
			if err := os.Remove(filepath.Join(r.o.SpoolDir, n)); err != nil {
				return nil, fmt.Errorf("walstream: %w", err)
			}
			continue
		}
		if _, err := pg.ParseWALFileName(n, r.size); err == nil && e.Type().IsRegular() {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

func (r *receiver) setFatal(err error) {
	r.mu.Lock()
	if r.fatal == nil {
		r.fatal = err
	}
	r.mu.Unlock()
	r.wake.ring()
}

func (r *receiver) fatalErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fatal
}

// permanent reports errors that no reconnection can cure. A damaged
// archived copy of a segment the receiver pushes is one: its content cannot
// be compared until someone deletes it.
func permanent(err error) bool {
	switch failure.Of(err) {
	case failure.WrongCluster, failure.Conflict, failure.Corrupt, failure.Incompatible, failure.NotRepository, failure.Fenced:
		return true
	}
	return false
}

// receive connects and streams, reconnecting with backoff, until ctx ends
// or a permanent error.
func (r *receiver) receive(ctx context.Context, pending []string) error {
	failures := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		r.progressed = false
		err := r.session(ctx, pending)
		r.m.disconnected(err)
		if ctx.Err() != nil {
			return nil
		}
		if ferr := r.fatalErr(); ferr != nil {
			return ferr
		}
		if permanent(err) {
			return err
		}
		if r.progressed {
			failures = 0 // a new outage: start the backoff over
		}
		failures++
		if r.o.MaxAttempts > 0 && failures >= r.o.MaxAttempts {
			return fmt.Errorf("walstream: giving up after %d failed attempts: %w", failures, err)
		}
		backoff := r.o.retryPolicy().Backoff(failures)
		r.log.Warn("streaming failed; reconnecting", "err", err, "attempt", failures, "backoff", backoff,
			"lsn", r.next, "timeline", uint32(r.tli))
		r.m.reconnecting()
		r.closeConn(ctx)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.upDone:
			t.Stop()
			return r.fatalErr()
		case <-t.C:
		}
	}
}

// retryPolicy is the receiver's place in the one retry policy: it waits
// out outages of the server and the stores (no attempt or time limit here;
// MaxAttempts bounds reconnections), from MinBackoff doubling to
// MaxBackoff, jittered.
func (o Options) retryPolicy() retry.Policy {
	return retry.Policy{MaxAttempts: -1, InitialBackoff: o.MinBackoff, MaxBackoff: o.MaxBackoff, MaxElapsed: -1}
}

func (r *receiver) closeConn(ctx context.Context) {
	if r.conn == nil {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = r.conn.Close(cctx)
	cancel()
	r.conn = nil
}

// flushedLSN is what is durable in every repository: complete segments,
// plus the part of the next one its latest .partial holds.
func (r *receiver) flushedLSN() pg.LSN {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.flushed
}

// advanceFlushed records that everything before lsn is durable.
func (r *receiver) advanceFlushed(lsn pg.LSN) { r.moveFlushed(pg.InvalidLSN, lsn) }

// moveFlushed moves the flush position to end if every byte before from
// is durable already, and then wakes the receiving loop to report it at
// once. It returns the flush position.
func (r *receiver) moveFlushed(from, end pg.LSN) pg.LSN {
	r.mu.Lock()
	moved := r.flushed >= from && end > r.flushed
	if moved {
		r.flushed = end
	}
	flushed := r.flushed
	r.mu.Unlock()
	r.m.flushedTo(flushed)
	if moved {
		r.wake.ring()
	}
	return flushed
}

// putAll stores the spooled file name as key in every repository with
// repo.Put (overwriting): used for .partial objects.
func (r *receiver) putAll(ctx context.Context, key string, f *os.File, size int64) error {
	return r.putPrefix(ctx, key, f, size, size)
}

// putPrefix stores, in every repository, size bytes: the first valid
// bytes of f, then zeros. A .partial is the segment's first bytes up to
// the flush position only: the receiver keeps appending to the file while
// it is read, and a read racing those writes could otherwise store a hole
// of zeros followed by newer bytes.
func (r *receiver) putPrefix(ctx context.Context, key string, f *os.File, valid, size int64) error {
	errs := make([]error, len(r.o.Repos))
	var wg sync.WaitGroup
	for i, rp := range r.o.Repos {
		wg.Go(func() {
			obj, err := rp.Put(ctx, key, io.NewSectionReader(prefixReaderAt{f: f, n: valid}, 0, size))
			if err == nil && obj.RawSize != size {
				err = fmt.Errorf("stored %d of %d bytes", obj.RawSize, size)
			}
			if err != nil {
				errs[i] = fmt.Errorf("upload %s to %s: %w", key, rp, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// deletePartials removes the .partial objects of a segment that is now
// stored whole (best effort: a stale partial is harmless).
func (r *receiver) deletePartials(ctx context.Context, name string) {
	key, err := repo.WALKey(name+".partial", r.size)
	if err != nil {
		return
	}
	for _, rp := range r.o.Repos {
		if err := rp.Store().Delete(ctx, key); err != nil && !errors.Is(err, storage.ErrNotExist) {
			r.log.Debug("cannot delete a superseded partial", "key", key, "err", err)
		}
	}
}

// lockSpool takes an exclusive lock on the spool directory's lock file for
// as long as the returned file stays open.
func lockSpool(dir string) (*os.File, error) {
	p := filepath.Join(dir, ".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("walstream: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("walstream: %w: %s is locked; give each receiver its own --spool-dir", ErrSpoolBusy, dir)
		}
		return nil, fmt.Errorf("walstream: lock %s: %w", p, err)
	}
	return f, nil
}

// prefixReaderAt reads f's first n bytes and zeros after them.
type prefixReaderAt struct {
	f io.ReaderAt
	n int64
}

func (p prefixReaderAt) ReadAt(b []byte, off int64) (int, error) {
	k := int64(len(b))
	if off < p.n {
		k = min(k, p.n-off)
		got, err := p.f.ReadAt(b[:k], off)
		if err != nil && !errors.Is(err, io.EOF) {
			return got, err
		}
		clear(b[got:k]) // a file shorter than n reads as zeros there
	} else {
		k = 0
	}
	clear(b[k:])
	return len(b), nil
}
