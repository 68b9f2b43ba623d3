package archive

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// GetOptions tune a Getter.
type GetOptions struct {
	// Prefetch is how many following segments are fetched in parallel into
	// the spool; 0 disables; negative means DefaultPrefetch().
	Prefetch int
	// SpoolDir holds prefetched segments. Empty means
	// <dir of dest>/.walferry/prefetch: inside pg_wal, on the same
	// filesystem as dest, so serving a spooled segment is a rename.
	SpoolDir string
	// Background lets prefetch downloads continue after Get returns (the
	// daemon sets it). Without it (a one-shot process) Get returns only
	// once its batch of prefetches finished or was abandoned, leaving only
	// complete, verified spool files.
	Background bool
	// MaxRetryTime bounds retries of transient store errors for the
	// requested file, and how long a download may go without progress;
	// zero or negative means 30 s. After it Get returns the error.
	MaxRetryTime time.Duration
}

const (
	defaultMaxRetryTime = 30 * time.Second
	maxDefaultPrefetch  = 16
	copyBufSize         = 256 << 10
	// maxPrefetchStall abandons a prefetch download idle this long (or
	// MaxRetryTime when shorter): prefetching is optional, and a one-shot
	// call waits for its batch.
	maxPrefetchStall = 5 * time.Second
	firstRetryWait   = 100 * time.Millisecond
	maxRetryWait     = 5 * time.Second
)

// DefaultPrefetch returns the prefetch depth GetOptions.Prefetch < 0
// stands for: twice the usable CPUs, at least 2, at most 16.
func DefaultPrefetch() int {
	return min(max(2*runtime.GOMAXPROCS(0), 2), maxDefaultPrefetch)
}

// errStalled: a download made no progress for MaxRetryTime.
var errStalled = errors.New("no progress")

// errGetterClosed: Get was called after Close.
var errGetterClosed = errors.New("archive: getter is closed")

// diskError marks a failure of the local filesystem a download writes to
// (full, read-only, not writable), as opposed to the store's: a spool
// that cannot take prefetches stays so until someone frees space, and
// every call meanwhile waits for the store, so it is worth a warning.
type diskError struct{ err error }

func (e *diskError) Error() string { return e.err.Error() }
func (e *diskError) Unwrap() error { return e.err }

// Getter is the archive-get engine behind restore_command: it writes
// archived WAL files to their destination, whole and atomically, and
// prefetches the segments that follow a requested one into a spool, so
// that the next calls are a local, verified rename.
//
// How prefetching proceeds depends on GetOptions.Background. A one-shot
// Getter (the restore_command process) works in batches: a Get of segment
// N that is not in the spool fetches N and, once N is known to exist,
// N+1..N+Prefetch in parallel, and returns when all are done; the next
// Prefetch calls find their segment in the spool and make no store
// request. A background Getter (the daemon) keeps the window
// N+1..N+Prefetch filled after every Get, with downloads outliving the
// call.
//
// Several Getters, in one process or several, may share a spool: every
// spool transition is an atomic rename, so a spool file is served at most
// once and never half-written; see spool.go.
//
// A Getter is safe for concurrent use.
type Getter struct {
	repos      []*repo.Repo
	unreach    []error // Config.Unreachable
	sysID      uint64  // names the cluster's spool files
	segSize    pg.WALSegmentSize
	log        *slog.Logger
	prefetch   int
	spoolDir   string // absolute; empty means per destination
	background bool
	maxRetry   time.Duration
	bufs       sync.Pool        // *[]byte of copyBufSize
	now        func() time.Time // judges temporary files' age; tests move it

	mu        sync.Mutex
	closed    bool
	flights   map[string]*flight   // prefetches under way, by segment name
	destClean map[string]time.Time // last scan for stale temporary files, by directory
	wg        sync.WaitGroup       // every prefetch goroutine
}

// flight is one prefetch download under way.
type flight struct {
	name   string
	tli    pg.TimeLineID
	seg    pg.SegNo
	cancel context.CancelFunc
	done   chan struct{} // closed when the download ended, spooled or not
}

// NewGetter returns a Getter reading cfg.Repos in order.
func NewGetter(cfg Config, o GetOptions) (*Getter, error) {
	if len(cfg.Repos) == 0 {
		return nil, errors.New("archive: get: no repository configured: set --repo or WALFERRY_REPO")
	}
	g := &Getter{
		repos:      cfg.Repos,
		unreach:    cfg.Unreachable,
		sysID:      cfg.Cluster.SystemID,
		segSize:    cfg.SegmentSize,
		log:        cfg.logger(),
		prefetch:   o.Prefetch,
		background: o.Background,
		maxRetry:   o.MaxRetryTime,
		flights:    map[string]*flight{},
		destClean:  map[string]time.Time{},
		now:        time.Now,
	}
	g.bufs.New = func() any {
		b := make([]byte, copyBufSize)
		return &b
	}
	if g.prefetch < 0 {
		g.prefetch = DefaultPrefetch()
	}
	if g.maxRetry <= 0 {
		g.maxRetry = defaultMaxRetryTime
	}
	if o.SpoolDir != "" {
		dir, err := filepath.Abs(o.SpoolDir)
		if err != nil {
			return nil, fmt.Errorf("archive: get: spool directory %s: %w", o.SpoolDir, err)
		}
		g.spoolDir = dir
	}
	return g, nil
}

// Get writes the archived file name to dest, as restore_command's %f and
// %p (dest relative to the current directory, or absolute). dest is
// replaced atomically by a verified copy: a failed or cancelled Get leaves
// dest untouched and no temporary file behind. A file no repository has
// is reported quickly, with one request per repository, as an error
// wrapping ErrNotArchived. Transient store errors are retried for up to
// MaxRetryTime, then returned.
//
// For a WAL segment with prefetching on, Get first looks in the spool,
// then fetches from the repositories and prefetches the segments that
// follow; history, backup history and partial files are fetched directly.
func (g *Getter) Get(ctx context.Context, name, dest string) error {
	return g.get(ctx, name, dest, false)
}

// GetPartial is Get, except that a WAL segment no repository holds is
// served from its .partial object, the unfinished segment wal-receive
// uploads (or PostgreSQL archives at promotion): its content is written
// to dest zero-padded to the segment size, whole and atomically. That is
// how PostgreSQL replays pg_receivewal's .partial files: it reads the
// zeros as the end of WAL, so recovery ends at the last streamed byte.
//
// A complete segment always wins: the partial is only looked for once
// the segment is found in no repository (and in no spool). Among
// repositories holding the partial, the one written last is used.
// Partials change, so they are never prefetched or spooled. Names other
// than segments are served as Get serves them. With neither the segment
// nor its partial anywhere, the error wraps ErrNotArchived.
//
// A recovery that ends inside a partial promotes there: use it when the
// partial will not grow any more (the primary is gone), never to restore
// a copy of a primary that is still writing.
func (g *Getter) GetPartial(ctx context.Context, name, dest string) error {
	return g.get(ctx, name, dest, true)
}

// get is Get, and GetPartial with partial set.
func (g *Getter) get(ctx context.Context, name, dest string, partial bool) error {
	f, err := pg.ParseWALFileName(name, g.segSize)
	if err != nil {
		return fmt.Errorf("archive-get %s: %w", name, badName(err))
	}
	if dest == "" {
		return failure.Wrap(failure.Usage, fmt.Errorf("archive-get %s: empty destination path (PostgreSQL passes %%p)", name))
	}
	destAbs, err := filepath.Abs(dest)
	if err != nil {
		return fmt.Errorf("archive-get %s: destination %s: %w", name, dest, err)
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		return fmt.Errorf("archive-get %s: %w", name, errGetterClosed)
	}
	g.cleanDestDir(filepath.Dir(destAbs))
	if f.Kind != pg.KindSegment {
		return g.fetch(ctx, name, destAbs, nil)
	}
	if g.prefetch == 0 {
		err = g.fetch(ctx, name, destAbs, nil)
	} else {
		err = g.getSegment(ctx, f, name, destAbs)
	}
	if partial && errors.Is(err, ErrNotArchived) {
		err = g.fetchPartial(ctx, name, destAbs)
	}
	if errors.Is(err, ErrNotArchived) && len(g.unreach) > 0 {
		// Not "not archived": recovery would end here, while a
		// repository that could not be read may hold the file.
		return fmt.Errorf("archive-get %s: not in %s, and %w", name, g.repoNames(), errors.Join(g.unreach...))
	}
	return err
}

// Close stops the prefetches under way (their temporary files are
// removed) and waits for them until ctx is done. Get fails afterwards.
// Close does not close the repositories.
func (g *Getter) Close(ctx context.Context) error {
	g.mu.Lock()
	g.closed = true
	for _, fl := range g.flights {
		fl.cancel()
	}
	g.mu.Unlock()
	if !waitFor(ctx, &g.wg) {
		return fmt.Errorf("archive: close getter: prefetches still stopping: %w", ctx.Err())
	}
	return nil
}

// getSegment serves segment f from the spool or the repositories.
func (g *Getter) getSegment(ctx context.Context, f pg.WALFile, name, destAbs string) error {
	if !recoveryDest(name, destAbs) {
		// A one-off fetch (by hand, into any file): the segments after it
		// would only be left behind, 64 MB and more next to dest.
		return g.fetch(ctx, name, destAbs, nil)
	}
	spool := g.spoolDir
	if spool == "" {
		// Creating the default spool must not create a missing pg_wal.
		if fi, err := os.Stat(filepath.Dir(destAbs)); err != nil || !fi.IsDir() {
			return g.fetch(ctx, name, destAbs, nil)
		}
		spool = defaultSpoolDir(destAbs)
	}
	// A prefetch of this very segment under way in this process: let it
	// finish rather than download the segment twice.
	g.mu.Lock()
	fl := g.flights[name]
	g.mu.Unlock()
	if fl != nil {
		select {
		case <-fl.done:
		case <-ctx.Done():
			return fmt.Errorf("archive-get %s: %w", name, ctx.Err())
		}
	}

	list, err := readSpool(spool, g.segSize)
	if err != nil {
		g.log.Debug("spool unreadable; fetching from the repository", "spool", spool, "err", err)
	}
	if n := cleanTemps(spool, list.temps, g.now()); n > 0 {
		g.log.Debug("removed stale temporary files from the spool", "spool", spool, "files", n)
	}
	if g.serveSpooled(spool, g.ours(list.finals[name]), name, destAbs) {
		delete(list.finals, name)
		g.cleanSpool(spool, f, list)
		if g.background {
			g.startPrefetch(ctx, f, spool)
		}
		return nil
	}

	var b *batch
	err = g.fetch(ctx, name, destAbs, func() { b = g.startPrefetch(ctx, f, spool) })
	if err == nil {
		g.cleanSpool(spool, f, list)
	}
	if !g.background {
		if err != nil {
			b.cancel()
		}
		b.wait()
	}
	return err
}

// recoveryDest reports whether dest is where a reader of the WAL in
// sequence asks for its next segment, the calls prefetch is for:
// PostgreSQL's recovery writes every segment to pg_wal/RECOVERYXLOG, and
// pg_rewind --restore-target-wal to pg_wal/<segment>.
func recoveryDest(name, destAbs string) bool {
	base := filepath.Base(destAbs)
	return base == "RECOVERYXLOG" || (base == name && filepath.Base(filepath.Dir(destAbs)) == "pg_wal")
}

// serveSpooled tries the spool files of segment name, verifying each.
func (g *Getter) serveSpooled(spool string, files []spoolFile, name, destAbs string) bool {
	if len(files) == 0 {
		return false
	}
	buf := g.getBuf()
	defer g.putBuf(buf)
	for _, sf := range files {
		ok, err := claimSpooled(spool, sf, destAbs, *buf)
		switch {
		case ok:
			g.log.Debug("restored from the spool", "segment", name, "bytes", sf.size)
			return true
		case errors.Is(err, errSpoolCorrupt):
			g.log.Warn("spool file failed verification; fetching from the repository", "segment", name, "err", err)
		case err != nil:
			g.log.Info("cannot serve spool file; fetching from the repository", "segment", name, "err", err)
		}
	}
	return false
}

// ours returns the files of this Getter's cluster.
func (g *Getter) ours(files []spoolFile) []spoolFile {
	var out []spoolFile
	for _, sf := range files {
		if sf.sys == g.sysID {
			out = append(out, sf)
		}
	}
	return out
}

// cleanSpool removes the spool files that serving segment f made useless:
// other timelines (a timeline switch), older segments, anything beyond the
// prefetch window, and other clusters' files.
func (g *Getter) cleanSpool(spool string, f pg.WALFile, list spoolListing) {
	removed := 0
	for _, files := range list.finals {
		for _, sf := range files {
			if sf.sys == g.sysID && sf.tli == f.TLI && sf.seg > f.SegNo && uint64(sf.seg-f.SegNo) <= uint64(g.prefetch) {
				continue
			}
			if err := os.Remove(filepath.Join(spool, sf.file)); err == nil {
				removed++
			}
		}
	}
	if removed > 0 {
		g.log.Debug("removed spool files outside the prefetch window", "spool", spool, "files", removed,
			"segment", f.Name(g.segSize), "timeline", uint32(f.TLI))
	}
}

// cleanDestDir removes temporary files of killed Gets from dir, at most
// once per destCleanInterval.
func (g *Getter) cleanDestDir(dir string) {
	now := g.now()
	g.mu.Lock()
	if last, ok := g.destClean[dir]; ok && now.Sub(last) < destCleanInterval {
		g.mu.Unlock()
		return
	}
	if len(g.destClean) > 64 {
		clear(g.destClean)
	}
	g.destClean[dir] = now
	g.mu.Unlock()
	n, err := cleanDestTemps(dir, now)
	if err != nil {
		g.log.Debug("cannot scan for stale temporary files", "dir", dir, "err", err)
	} else if n > 0 {
		g.log.Debug("removed stale temporary files", "dir", dir, "files", n)
	}
}

// fetch writes name from the first repository that has it to destAbs.
// onFound, if not nil, runs once, as soon as a repository is seen to have
// the file.
func (g *Getter) fetch(ctx context.Context, name, destAbs string, onFound func()) error {
	key, err := repo.WALKey(name, g.segSize)
	if err != nil {
		return fmt.Errorf("archive-get %s: %w", name, err)
	}
	if onFound != nil {
		onFound = sync.OnceFunc(onFound)
	}
	var errs []error
	for i, r := range g.repos {
		found, err := g.fetchFrom(ctx, r, key, destAbs, 0, onFound)
		switch {
		case err == nil && found:
			g.log.Debug("restored", "segment", name, "repo", r.String())
			return nil
		case err == nil:
			continue
		case ctx.Err() != nil:
			return fmt.Errorf("archive-get %s: %w", name, err)
		}
		errs = append(errs, err)
		if i < len(g.repos)-1 {
			g.log.Warn("repository failed; trying the next one", "segment", name, "repo", r.String(), "err", err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("archive-get %s: %w", name, errors.Join(errs...))
	}
	g.log.Debug("not in the archive", "segment", name)
	return fmt.Errorf("archive-get %s: %w (looked in %s)", name, ErrNotArchived, g.repoNames())
}

func (g *Getter) repoNames() string {
	names := make([]string, len(g.repos))
	for i, r := range g.repos {
		names[i] = r.String()
	}
	return strings.Join(names, ", ")
}

// fetchPartial writes name's .partial object, zero-padded to the segment
// size, to destAbs: see GetPartial. The repositories holding it are tried
// newest first; an error wraps ErrNotArchived when none has it.
func (g *Getter) fetchPartial(ctx context.Context, name, destAbs string) error {
	pname := name + ".partial"
	key, err := repo.WALKey(pname, g.segSize)
	if err != nil {
		return fmt.Errorf("archive-get %s: %w", name, err)
	}
	type holder struct {
		r   *repo.Repo
		mod time.Time
	}
	var holders []holder
	var errs []error
	for _, r := range g.repos {
		oi, err := r.Store().Stat(ctx, key)
		switch {
		case err == nil:
			holders = append(holders, holder{r, oi.ModTime})
		case errors.Is(err, storage.ErrNotExist):
		case ctx.Err() != nil:
			return fmt.Errorf("archive-get %s: %w", pname, err)
		default:
			errs = append(errs, fmt.Errorf("stat %s in %s: %w", key, r, err))
		}
	}
	// wal-receive uploads each partial to every repository; one that
	// missed the last upload holds an older, shorter version.
	slices.SortStableFunc(holders, func(a, b holder) int { return b.mod.Compare(a.mod) })
	for i, h := range holders {
		found, err := g.fetchFrom(ctx, h.r, key, destAbs, g.segSize.Bytes(), nil)
		switch {
		case err == nil && found:
			g.log.Info("served the partial segment, zero-padded: recovery ends in it", "segment", name,
				"key", key, "repo", h.r.String())
			return nil
		case err == nil:
			// Deleted since the Stat: wal-receive stored the complete
			// segment meanwhile.
			if err := g.fetch(ctx, name, destAbs, nil); !errors.Is(err, ErrNotArchived) {
				return err
			}
			continue
		case ctx.Err() != nil:
			return fmt.Errorf("archive-get %s: %w", pname, err)
		}
		errs = append(errs, err)
		if i < len(holders)-1 {
			g.log.Warn("repository failed; trying the next one", "segment", pname, "repo", h.r.String(), "err", err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("archive-get %s: %w", pname, errors.Join(errs...))
	}
	g.log.Debug("not in the archive, nor its partial", "segment", name)
	return fmt.Errorf("archive-get %s: %w, nor %s (looked in %s)", name, ErrNotArchived, pname, g.repoNames())
}

// fetchFrom writes key from r to destAbs, retrying transient errors for up
// to MaxRetryTime without progress. found is false (and err nil) when r
// does not have key. With padTo > 0 the content is zero-padded to padTo
// bytes; content longer than padTo is refused.
func (g *Getter) fetchFrom(ctx context.Context, r *repo.Repo, key, destAbs string, padTo int64, onFound func()) (found bool, err error) {
	dir := filepath.Dir(destAbs)
	since := time.Now()
	wait := firstRetryWait
	for attempt := 1; ; attempt++ {
		d, found, err := g.download(ctx, r, key, dir, destTempPrefix, g.maxRetry, onFound)
		if err == nil {
			if !found {
				return false, nil
			}
			if padTo > 0 {
				if err := padZeros(d.tmp, d.size, padTo); err != nil {
					d.tmp.discard()
					return true, fmt.Errorf("%s in %s: %w", key, r, err)
				}
			}
			if err := d.tmp.commit(destAbs); err != nil {
				return true, fmt.Errorf("write %s: %w", destAbs, err)
			}
			return true, nil
		}
		if d.size > 0 {
			since = time.Now() // progress: the retry budget starts again
		}
		if ctx.Err() != nil || !storage.IsRetryable(err) || time.Since(since)+wait > g.maxRetry {
			return true, err
		}
		g.log.Info("transient error; retrying", "key", key, "repo", r.String(),
			"attempt", attempt, "backoff", wait, "err", err)
		if retry.Sleep(ctx, wait) != nil {
			return true, err
		}
		wait = min(2*wait, maxRetryWait)
	}
}

// downloaded is a verified download in a temporary file.
type downloaded struct {
	tmp  *tempFile // nil unless the download completed
	size int64     // bytes written, also after a failure
	crc  uint32    // CRC-32C of the content, for the spool's name
}

// download streams key from r into a new locked temporary file in dir
// named prefix+random, and returns it once the object's checksum
// verified. found is false (err nil) when r does not have key; onOpen,
// when set, runs once the object is open. A download that makes no
// progress for stallAfter is abandoned. On an error nothing is left in
// dir.
func (g *Getter) download(ctx context.Context, r *repo.Repo, key, dir, prefix string, stallAfter time.Duration,
	onOpen func()) (d downloaded, found bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(stallAfter, func() { cancel(errStalled) })
	defer stall.Stop()
	explain := func(err error) error {
		if errors.Is(context.Cause(ctx), errStalled) {
			return fmt.Errorf("%w for %v: %w", errStalled, stallAfter, err)
		}
		return err
	}

	obj, err := r.Get(ctx, key)
	if err != nil {
		if errors.Is(err, storage.ErrNotExist) {
			return d, false, nil
		}
		return d, true, explain(fmt.Errorf("read %s from %s: %w", key, r, err))
	}
	defer obj.Close()
	if onOpen != nil {
		onOpen()
	}
	t, err := createTemp(dir, prefix)
	if err != nil {
		return d, true, &diskError{fmt.Errorf("create temporary file for %s: %w", key, err)}
	}
	bp := g.getBuf()
	defer g.putBuf(bp)
	buf := *bp
	var crc uint32
	for {
		n, rerr := obj.Read(buf)
		if n > 0 {
			crc = crc32.Update(crc, castagnoli, buf[:n])
			if _, werr := t.Write(buf[:n]); werr != nil {
				t.discard()
				// werr names the file: "write <path>: no space left on device".
				return downloaded{size: d.size}, true, &diskError{werr}
			}
			d.size += int64(n)
			stall.Reset(stallAfter)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			t.discard()
			return downloaded{size: d.size}, true, explain(rerr)
		}
	}
	// The object's SHA-256 was verified at EOF; the spool keeps a CRC-32C
	// (hardware-accelerated, ~1 ms a segment) to check the local copy
	// when it is served.
	d.tmp, d.crc = t, crc
	return d, true, nil
}

// padZeros appends zeros to t, which holds size bytes, up to n bytes.
// They are written, not left as a hole: PostgreSQL may recycle the file
// as a later segment and write into it, and must not find the disk full.
func padZeros(t *tempFile, size, n int64) error {
	if size > n {
		return fmt.Errorf("%d bytes, longer than a %d-byte segment", size, n)
	}
	zeros := make([]byte, min(n-size, copyBufSize))
	for size < n {
		w, err := t.Write(zeros[:min(n-size, int64(len(zeros)))])
		size += int64(w)
		if err != nil {
			return fmt.Errorf("write %s: %w", t.path, err)
		}
	}
	return nil
}

func (g *Getter) getBuf() *[]byte  { return g.bufs.Get().(*[]byte) }
func (g *Getter) putBuf(b *[]byte) { g.bufs.Put(b) }

// batch is the set of prefetches one Get started.
type batch struct {
	wg       sync.WaitGroup
	warnOnce sync.Once // one warning per batch for a spool that cannot take segments
	mu       sync.Mutex
	stopAt   int             // offset of the first segment found missing
	jobs     map[int]*flight // by offset from the requested segment
}

// stopped reports whether offset i lies beyond a missing segment.
func (b *batch) stopped(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return i > b.stopAt
}

// stop records that the segment at offset i is not archived (yet) and
// cancels the prefetches beyond it.
func (b *batch) stop(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopAt = min(b.stopAt, i)
	for j, fl := range b.jobs {
		if j > i {
			fl.cancel()
		}
	}
}

// cancel abandons the whole batch. A nil batch does nothing.
func (b *batch) cancel() {
	if b == nil {
		return
	}
	b.stop(0)
}

// wait returns once every prefetch of the batch ended. A nil batch does
// nothing.
func (b *batch) wait() {
	if b != nil {
		b.wg.Wait()
	}
}

// startPrefetch starts fetching the segments after f on its timeline, up
// to the prefetch depth, into spool, skipping those in the spool or under
// way already. It also cancels prefetches that fell out of the window.
// Without Background the downloads end with ctx; with it they outlive it
// and end with Close. It returns nil when nothing was started.
func (g *Getter) startPrefetch(ctx context.Context, f pg.WALFile, spool string) *batch {
	if err := os.MkdirAll(spool, spoolDirMode); err != nil {
		g.log.Warn("prefetch off: cannot create the spool; until it can, every call waits for the store", "spool", spool, "err", err)
		return nil
	}
	parent := ctx
	if g.background {
		parent = context.WithoutCancel(ctx)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	// Listed under the lock: a prefetch leaves g.flights only after its
	// file is in place, so a segment is either listed or seen under way.
	list, err := readSpool(spool, g.segSize)
	if err != nil {
		g.log.Warn("prefetch off: cannot read the spool; until it can, every call waits for the store", "spool", spool, "err", err)
		return nil
	}
	for _, fl := range g.flights {
		if fl.tli != f.TLI || fl.seg <= f.SegNo || uint64(fl.seg-f.SegNo) > uint64(g.prefetch) {
			fl.cancel()
		}
	}
	b := &batch{stopAt: math.MaxInt, jobs: map[int]*flight{}}
	ctxs := map[int]context.Context{}
	for i := 1; i <= g.prefetch; i++ {
		if uint64(f.SegNo)+uint64(i) > uint64(g.segSize.MaxSegNo()) {
			break
		}
		seg := f.SegNo + pg.SegNo(i)
		name := pg.SegmentName(f.TLI, seg, g.segSize)
		if len(g.ours(list.finals[name])) > 0 || g.flights[name] != nil {
			continue
		}
		jctx, cancel := context.WithCancel(parent)
		fl := &flight{name: name, tli: f.TLI, seg: seg, cancel: cancel, done: make(chan struct{})}
		g.flights[name] = fl
		b.jobs[i] = fl
		ctxs[i] = jctx
	}
	if len(b.jobs) == 0 {
		return nil
	}
	// Started once b.jobs is complete: the jobs read it.
	for i, fl := range b.jobs {
		b.wg.Add(1)
		g.wg.Add(1)
		go g.runPrefetch(ctxs[i], b, i, fl, spool)
	}
	return b
}

// runPrefetch runs one prefetch of batch b at offset i.
func (g *Getter) runPrefetch(ctx context.Context, b *batch, i int, fl *flight, spool string) {
	defer func() {
		fl.cancel()
		g.mu.Lock()
		if g.flights[fl.name] == fl {
			delete(g.flights, fl.name)
		}
		g.mu.Unlock()
		close(fl.done)
		b.wg.Done()
		g.wg.Done()
	}()
	if b.stopped(i) {
		return
	}
	missing, err := g.prefetchOne(ctx, fl.name, spool)
	switch {
	case missing:
		g.log.Debug("prefetch stops: segment not archived (yet)", "segment", fl.name)
		b.stop(i)
	case err != nil && ctx.Err() == nil && errors.As(err, new(*diskError)):
		b.warnOnce.Do(func() {
			g.log.Warn("prefetch failed: the spool cannot take segments; until it can, every call waits for the store",
				"spool", spool, "segment", fl.name, "err", err)
		})
	case err != nil && ctx.Err() == nil:
		g.log.Info("prefetch failed; the segment will be fetched when asked for", "segment", fl.name, "err", err)
	}
}

// prefetchOne downloads segment name from the first repository that has
// it into spool. missing reports that no repository has it.
func (g *Getter) prefetchOne(ctx context.Context, name, spool string) (missing bool, err error) {
	key, err := repo.WALKey(name, g.segSize)
	if err != nil {
		return false, err
	}
	var errs []error
	for _, r := range g.repos {
		d, found, err := g.download(ctx, r, key, spool, spoolTempPrefix+name+"-", min(g.maxRetry, maxPrefetchStall), nil)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if !found {
			continue
		}
		final := filepath.Join(spool, spoolFileName(name, g.sysID, d.size, d.crc))
		if err := d.tmp.commit(final); err != nil {
			return false, &diskError{fmt.Errorf("spool %s: %w", name, err)}
		}
		g.log.Debug("prefetched", "segment", name, "bytes", d.size, "repo", r.String())
		return false, nil
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	return true, nil
}
