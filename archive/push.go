package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// PushOptions tune a Pusher.
type PushOptions struct {
	// Ahead is how many further .ready segments are pushed in parallel
	// with the requested one; 0 disables look-ahead; negative means the
	// default (DefaultAhead).
	Ahead int
	// StateDir holds the records of segments pushed ahead. Empty means
	// <dir of the pushed path>/.walferry/pushed (inside pg_wal: same
	// filesystem, ignored by PostgreSQL and by pg_basebackup).
	StateDir string
	// Background lets look-ahead uploads continue after Push returns (the
	// daemon sets it; a one-shot CLI process must not: it waits for its
	// whole batch before exiting).
	Background bool
	// LineageMaxAge is how long a read of a repository's lineage record is
	// trusted before a file is permitted with it (0: DefaultLineageMaxAge).
	LineageMaxAge time.Duration
}

// DefaultAhead is the look-ahead used when PushOptions.Ahead is negative:
// twice the usable CPUs (compression is the bottleneck on fast stores,
// latency on slow ones), at least 2, at most 16.
func DefaultAhead() int {
	return min(max(2*runtime.GOMAXPROCS(0), 2), 16)
}

// Pusher archives WAL files into every configured repository; it is what
// archive_command runs. It is safe for concurrent use: two Push calls for
// the same file never upload it twice at the same time, the later one
// waits for the earlier one's result.
//
// With look-ahead, each Push also uploads the next .ready files of
// pg_wal/archive_status, in PostgreSQL's order, and records each one that
// became durable in every repository in the state directory, so that
// PostgreSQL's call for it returns at once. See pushstate.go for why a
// crash at any point neither loses a segment nor reports one too early.
type Pusher struct {
	cfg        Config
	log        *slog.Logger
	ahead      int
	stateDir   string
	background bool
	repoIDs    []string // sorted names of cfg.Repos, recorded with each record
	// encodeSlots keeps look-ahead from compressing more segments at
	// once than there are cores (see repo.EncodeSlots); uploads still
	// overlap.
	encodeSlots *repo.EncodeSlots
	// lineage refuses what the lineage record does not permit this server
	// to write (an old primary's WAL, a promoted copy's new timeline).
	lineage *lineageGate

	mu        sync.Mutex
	inflight  map[string]*pushJob // absolute path -> upload in progress
	aheadBusy int                 // look-ahead uploads in progress
	closed    bool
	cancels   map[*pushJob]context.CancelFunc // background uploads, for Close
	wg        sync.WaitGroup                  // every look-ahead upload
}

// hashBufSize is the read size when a local file or a stored object is
// hashed on its own (only when a repository already holds its name).
const hashBufSize = 256 << 10

// compareBufSize is the piece size in which an archived object is compared
// with the local file.
const compareBufSize = 256 << 10

// pushJob is one upload in progress; stamp and err are set before done is
// closed.
type pushJob struct {
	done  chan struct{}
	stamp fileStamp
	err   error
}

// NewPusher returns a Pusher for cfg's repositories.
func NewPusher(cfg Config, o PushOptions) (*Pusher, error) {
	if len(cfg.Repos) == 0 {
		return nil, errors.New("archive: no repository configured: set --repo or WALFERRY_REPO")
	}
	ids := make([]string, len(cfg.Repos))
	for i, r := range cfg.Repos {
		if got := r.Metadata().WALSegmentSize; got != cfg.SegmentSize.Bytes() {
			return nil, fmt.Errorf("archive: %s uses %d-byte WAL segments, but the cluster uses %d-byte segments",
				r, got, cfg.SegmentSize.Bytes())
		}
		ids[i] = r.String()
	}
	slices.Sort(ids)
	ahead := o.Ahead
	if ahead < 0 {
		ahead = DefaultAhead()
	}
	stateDir := o.StateDir
	if stateDir != "" {
		abs, err := filepath.Abs(stateDir)
		if err != nil {
			return nil, fmt.Errorf("archive: state directory %s: %w", stateDir, err)
		}
		stateDir = abs
	}
	return &Pusher{
		cfg:         cfg,
		log:         cfg.logger(),
		ahead:       ahead,
		stateDir:    stateDir,
		background:  o.Background,
		repoIDs:     ids,
		encodeSlots: repo.NewEncodeSlots(runtime.GOMAXPROCS(0)),
		lineage:     newLineageGate(cfg.Repos, cfg.SegmentSize, o.LineageMaxAge),
		inflight:    make(map[string]*pushJob),
		cancels:     make(map[*pushJob]context.CancelFunc),
	}, nil
}

// Push archives the file at path (as PostgreSQL passes %p: relative to the
// current directory, which is the data directory, or absolute) into every
// repository, under its base name. It returns nil only when the file is
// durable in every repository.
//
// A name already archived with the same content succeeds (PostgreSQL
// repeats a call whose answer it lost); with other content the error wraps
// ErrConflict and nothing is overwritten. A WAL segment must have the
// cluster's segment size; .history, .backup and .partial files are pushed
// as they are. Transient store errors are retried for up to a minute.
//
// A file the lineage record of a repository does not permit this server
// to write (Permit) is refused with an error wrapping repo.ErrFenced, and
// nothing is written.
func (p *Pusher) Push(ctx context.Context, path string) error {
	start := time.Now()
	name := filepath.Base(path)
	wf, err := pg.ParseWALFileName(name, p.cfg.SegmentSize)
	if err != nil {
		return fmt.Errorf("archive-push %s: %w", path, badName(err))
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("archive-push %s: %w", name, err)
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return fmt.Errorf("archive-push %s: the pusher is closed", name)
	}
	stateDir := p.stateDir
	if stateDir == "" {
		stateDir = filepath.Join(dir, ".walferry", "pushed")
	}

	var batch []*pushJob
	if ready, ok := readyList(dir, p.cfg.SegmentSize); ok {
		isReady := make(map[string]bool, len(ready))
		for _, n := range ready {
			isReady[n] = true
		}
		recorded := tidyState(stateDir, isReady, p.cfg.SegmentSize, start)
		// A one-shot process whose segment was already pushed ahead
		// returns at once: topping the window up by one segment per call
		// would make every call wait for an upload, one at a time. It
		// refills the window in one parallel batch when PostgreSQL asks
		// for a segment nobody pushed yet. The daemon tops up always: its
		// uploads run in the background.
		if p.ahead > 0 && (p.background || !recorded[name]) {
			batch = p.startAhead(ctx, dir, stateDir, name, ready, recorded)
		}
	}

	res, err := p.pushRequested(ctx, dir, name, wf, stateDir)
	if !p.background {
		for _, j := range batch {
			<-j.done
		}
	}
	if err != nil {
		return err
	}
	p.log.LogAttrs(ctx, slog.LevelInfo, "archived",
		slog.String("segment", name), slog.Int64("bytes", res.stamp.size),
		slog.Duration("duration", time.Since(start)), slog.Int("ahead", len(batch)),
		slog.String("via", res.via))
	return nil
}

// Close stops accepting pushes and waits for the look-ahead uploads still
// running; when ctx ends first it cancels them, waits for them to stop and
// returns an error. Records are written only for uploads that completed, so
// a cancelled one is simply done again by PostgreSQL's call for it.
func (p *Pusher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	if waitFor(ctx, &p.wg) {
		return nil
	}
	p.mu.Lock()
	for _, cancel := range p.cancels {
		cancel()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return fmt.Errorf("archive: close: look-ahead uploads cancelled: %w", context.Cause(ctx))
}

// pushed describes a file durable in every repository.
type pushed struct {
	stamp fileStamp
	sum   string
	// via says how Push got there: "upload" (stored now), "archived" (every
	// repository already had it) or "ahead" (pushed ahead earlier).
	via string
}

// pushRequested archives the file PostgreSQL asked for: from a record or
// an upload in flight when look-ahead already did it, else by uploading.
func (p *Pusher) pushRequested(ctx context.Context, dir, name string, wf pg.WALFile, stateDir string) (pushed, error) {
	abs := filepath.Join(dir, name)
	var job *pushJob
	for job == nil {
		p.mu.Lock()
		other, busy := p.inflight[abs]
		if !busy {
			job = &pushJob{done: make(chan struct{})}
			p.inflight[abs] = job
		}
		p.mu.Unlock()
		if !busy {
			break
		}
		select {
		case <-other.done:
		case <-ctx.Done():
			return pushed{}, fmt.Errorf("archive-push %s: waiting for its upload in progress: %w", name, context.Cause(ctx))
		}
		if other.err == nil {
			if fi, err := os.Stat(abs); err == nil && stampOf(fi) == other.stamp {
				removeRecord(stateDir, name)
				return pushed{stamp: other.stamp, via: "ahead"}, nil
			}
		}
		// It failed or the file changed since: try again ourselves.
	}
	var res pushed
	var err error
	defer func() {
		p.mu.Lock()
		delete(p.inflight, abs)
		job.stamp, job.err = res.stamp, err
		close(job.done)
		p.mu.Unlock()
	}()

	if rec, exists, ok := readRecord(stateDir, name); exists {
		// Consumed when trusted, useless when not: either way it goes.
		removeRecord(stateDir, name)
		if ok {
			if fi, serr := os.Stat(abs); serr == nil && rec.trusted(name, dir, stampOf(fi), p.repoIDs) {
				res = pushed{stamp: stampOf(fi), sum: rec.Sum, via: "ahead"}
				return res, nil
			}
		}
	}
	res, err = p.upload(ctx, abs, name, wf)
	return res, err
}

// startAhead starts uploading the .ready files that follow requested in
// PostgreSQL's order: of the next p.ahead names, those neither recorded nor
// in flight, while fewer than p.ahead look-ahead uploads run. The window
// never moves further, so at most about p.ahead records exist at once.
func (p *Pusher) startAhead(ctx context.Context, dir, stateDir, requested string, ready []string, recorded map[string]bool) []*pushJob {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	var jobs []*pushJob
	var names []string
	window := 0
	for _, n := range ready {
		if n == requested {
			continue
		}
		if window == p.ahead || p.aheadBusy == p.ahead {
			break
		}
		window++
		abs := filepath.Join(dir, n)
		if recorded[n] || p.inflight[abs] != nil {
			continue
		}
		// An upload that ended after tidyState's listing wrote its record
		// before leaving the in-flight map.
		if _, err := os.Lstat(filepath.Join(stateDir, n)); err == nil {
			continue
		}
		job := &pushJob{done: make(chan struct{})}
		p.inflight[abs] = job
		p.aheadBusy++
		jobs = append(jobs, job)
		names = append(names, n)
	}
	for i, job := range jobs {
		jctx := ctx
		if p.background {
			// Outlive the call that started it; Close can still cancel it.
			var cancel context.CancelFunc
			jctx, cancel = context.WithCancel(context.WithoutCancel(ctx))
			p.cancels[job] = cancel
		}
		p.wg.Add(1)
		go p.pushAhead(jctx, dir, stateDir, names[i], job)
	}
	return jobs
}

// pushAhead uploads one file ahead of PostgreSQL and records it once it is
// durable everywhere.
func (p *Pusher) pushAhead(ctx context.Context, dir, stateDir, name string, job *pushJob) {
	defer p.wg.Done()
	start := time.Now()
	abs := filepath.Join(dir, name)
	var res pushed
	wf, err := pg.ParseWALFileName(name, p.cfg.SegmentSize)
	if err == nil {
		res, err = p.upload(ctx, abs, name, wf)
	}
	if err == nil {
		rec := pushRecord{Name: name, Dir: dir, Size: res.stamp.size, MtimeNS: res.stamp.mtimeNS,
			Sum: res.sum, Repos: p.repoIDs, Pushed: time.Now().UTC()}
		if werr := writeRecord(stateDir, rec); werr != nil {
			// The upload stands; PostgreSQL's call will just check it again.
			p.log.LogAttrs(ctx, slog.LevelWarn, "cannot record a segment pushed ahead",
				slog.String("segment", name), slog.String("dir", stateDir), slog.Any("err", werr))
		}
		p.log.LogAttrs(ctx, slog.LevelDebug, "pushed ahead", slog.String("segment", name),
			slog.Int64("bytes", res.stamp.size), slog.Duration("duration", time.Since(start)), slog.String("via", res.via))
	} else {
		// Not an error of any call: PostgreSQL's own call for this file
		// will do the work again and report what goes wrong.
		p.log.LogAttrs(ctx, slog.LevelDebug, "push ahead failed", slog.String("segment", name), slog.Any("err", err))
	}
	p.mu.Lock()
	delete(p.inflight, abs)
	p.aheadBusy--
	if cancel, ok := p.cancels[job]; ok {
		cancel()
		delete(p.cancels, job)
	}
	job.stamp, job.err = res.stamp, err
	close(job.done)
	p.mu.Unlock()
}

// Permit returns nil when the lineage record of every repository permits
// this server to write the WAL file name (repo.Generation.PermitsWAL), and
// an error wrapping repo.ErrFenced when one does not. Each record is read
// at most every PushOptions.LineageMaxAge, and again before refusing. For
// writers that store files themselves (wal-receive's .partial uploads);
// Push checks every file it uploads.
func (p *Pusher) Permit(ctx context.Context, name string) error {
	return p.lineage.permitAll(ctx, p.cfg.Repos, name)
}

// upload stores the file at abs under name in every repository, in
// parallel, and checks it did not change meanwhile.
func (p *Pusher) upload(ctx context.Context, abs, name string, wf pg.WALFile) (pushed, error) {
	fi, err := os.Stat(abs)
	if errors.Is(err, iofs.ErrNotExist) {
		return pushed{}, fmt.Errorf("archive-push %s: %w: %s does not exist (%w)", name, ErrNoSuchFile, abs, err)
	}
	if err != nil {
		return pushed{}, fmt.Errorf("archive-push %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return pushed{}, fmt.Errorf("archive-push %s: %s is not a regular file", name, abs)
	}
	st := stampOf(fi)
	if want := p.cfg.SegmentSize.Bytes(); wf.Kind == pg.KindSegment && st.size != want {
		return pushed{}, fmt.Errorf("archive-push %s: the file is %d bytes but this cluster's WAL segments are %d bytes (%s): "+
			"refusing to archive an incomplete segment", name, st.size, want, p.cfg.SegmentSize)
	}
	key, err := repo.WALKey(name, p.cfg.SegmentSize)
	if err != nil {
		return pushed{}, fmt.Errorf("archive-push %s: %w", name, err)
	}
	local := &localSum{path: abs, name: name, stamp: st}
	n := len(p.cfg.Repos)
	sums := make([]string, n)
	existed := make([]bool, n)
	errs := make([]error, n)
	if n == 1 {
		sums[0], existed[0], errs[0] = p.pushTo(ctx, p.cfg.Repos[0], key, abs, name, st, local)
	} else {
		var wg sync.WaitGroup
		for i, r := range p.cfg.Repos {
			wg.Go(func() { sums[i], existed[i], errs[i] = p.pushTo(ctx, r, key, abs, name, st, local) })
		}
		wg.Wait()
	}
	if err := joinPushErrors(errs); err != nil {
		return pushed{}, err
	}
	for i := 1; i < n; i++ {
		// "" is a name that was already archived without a SHA-256 (a
		// zstd or gzip object pushed with one repository configured), and
		// compared byte for byte: nothing to compare here.
		if sums[i] != sums[0] && sums[i] != "" && sums[0] != "" {
			return pushed{}, fmt.Errorf("archive-push %s: the file changed while being archived: %s has %s, %s has %s",
				name, p.cfg.Repos[0], sums[0], p.cfg.Repos[i], sums[i])
		}
	}
	if fi, err := os.Stat(abs); err != nil {
		return pushed{}, fmt.Errorf("archive-push %s: %w", name, err)
	} else if stampOf(fi) != st {
		return pushed{}, fmt.Errorf("archive-push %s: the file changed while being archived (size %d -> %d, mtime %v -> %v)",
			name, st.size, fi.Size(), time.Unix(0, st.mtimeNS).UTC(), fi.ModTime().UTC())
	}
	res := pushed{stamp: st, via: "archived"}
	for _, s := range sums {
		if s != "" {
			res.sum = s
			break
		}
	}
	if slices.Contains(existed, false) {
		res.via = "upload"
	}
	return res, nil
}

// pushErrors are the failures of several repositories, on one line (the
// hook's one log line) and each matchable with errors.Is.
type pushErrors []error

func (e pushErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (e pushErrors) Unwrap() []error { return e }

func joinPushErrors(errs []error) error {
	var failed pushErrors
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	switch len(failed) {
	case 0:
		return nil
	case 1:
		return failed[0]
	}
	return failed
}

// pushTo stores the file in one repository, retrying transient failures.
// existed reports that the repository already held identical content.
//
// The repository's lineage record is asked first: each repository's
// record governs what may be written into it.
func (p *Pusher) pushTo(ctx context.Context, r *repo.Repo, key, abs, name string, st fileStamp, local *localSum) (sum string, existed bool, err error) {
	if err := p.lineage.permit(ctx, r, name); err != nil {
		return "", false, fmt.Errorf("archive-push %s to %s: %w", name, r, err)
	}
	sum, existed, err = p.putRetrying(ctx, r, key, abs, name, st, local)
	if err != nil {
		return "", false, fmt.Errorf("archive-push %s to %s: %w", name, r, err)
	}
	return sum, existed, nil
}

func (p *Pusher) putRetrying(ctx context.Context, r *repo.Repo, key, abs, name string, st fileStamp, local *localSum) (string, bool, error) {
	var sum string
	var existed bool
	err := retry.Do(ctx, p.cfg.Retry, "push "+name+" to "+r.String(), p.log.With("segment", name, "repo", r.String()), func(int) error {
		var err error
		sum, existed, err = p.putOnce(ctx, r, key, abs, name, st, local)
		return err
	})
	if err != nil {
		return "", false, err
	}
	return sum, existed, nil
}

// putOnce makes one attempt: a conditional create, and when the key is
// taken, a comparison with what is stored (compareArchived).
func (p *Pusher) putOnce(ctx context.Context, r *repo.Repo, key, abs, name string, st fileStamp, local *localSum) (string, bool, error) {
	// Look before uploading: PostgreSQL repeats a push after a crash, and
	// comparing with the stored object (its checksum when it has one, else
	// its content) is cheaper than compressing and sending the segment only
	// to be refused.
	info, err := r.ObjectInfo(ctx, key)
	switch {
	case err == nil:
		return p.compareArchived(ctx, r, key, abs, st, local, info)
	case !errors.Is(err, storage.ErrNotExist):
		return "", false, fmt.Errorf("%s: checking whether it is already archived: %w", key, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		return "", false, err
	}
	// A zstd or gzip stream verifies its raw content itself: the SHA-256
	// would cost a fifth of a segment's CPU for a duplicate check that
	// compares the content instead (compareArchived). With several
	// repositories it stays: comparing their SHA-256 is what proves they
	// all received the same content (upload).
	noRawSum := r.Compression().ChecksContent() && len(p.cfg.Repos) == 1
	obj, err := r.PutWith(ctx, key, &segmentReader{f: f, name: name, size: st.size},
		repo.PutOptions{IfAbsent: true, Slots: p.encodeSlots, NoRawSum: noRawSum})
	f.Close()
	if err == nil {
		if obj.RawSize != st.size { // segmentReader makes this impossible
			return "", false, fmt.Errorf("stored %d bytes of a %d-byte file", obj.RawSize, st.size)
		}
		return obj.Sum, false, nil
	}
	if !errors.Is(err, storage.ErrExist) {
		return "", false, err
	}
	// Another writer created it between the look and the upload.
	info, err = r.ObjectInfo(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		// Deleted between the two calls: start again.
		return "", false, storage.Retryable(fmt.Errorf("%s vanished after a conflicting create: %w", key, err))
	}
	if err != nil {
		return "", false, fmt.Errorf("%s is already archived; reading its checksum: %w", key, err)
	}
	return p.compareArchived(ctx, r, key, abs, st, local, info)
}

// compareArchived decides a push whose name is already archived: success
// when the stored raw content is the local file's, ErrConflict otherwise
// (nothing is overwritten). An object with a raw SHA-256 is compared by it,
// without downloading; one without (zstd, gzip) is downloaded, verified and
// compared byte for byte.
func (p *Pusher) compareArchived(ctx context.Context, r *repo.Repo, key, abs string, st fileStamp, local *localSum, info codec.Info) (string, bool, error) {
	if info.Sum == "" {
		same, err := sameContent(ctx, r, key, abs, st.size)
		if err != nil {
			return "", false, err
		}
		if same {
			return "", true, nil
		}
		// Name both contents by their SHA-256, as for any conflict: two
		// more reads, on a path that stops archiving anyway.
		stored, err := storedSum(ctx, r, key)
		if err != nil {
			stored = fmt.Sprintf("other content (its SHA-256 could not be computed: %v)", err)
		}
		want, err := local.get()
		if err != nil {
			want = fmt.Sprintf("unreadable now (%v)", err)
		}
		return "", false, conflictError(r, key, stored, info.RawSize, abs, want, st.size)
	}
	want, err := local.get()
	if err != nil {
		return "", false, err
	}
	if info.Sum != want {
		return "", false, conflictError(r, key, info.Sum, info.RawSize, abs, want, st.size)
	}
	return want, true, nil
}

func conflictError(r *repo.Repo, key, stored string, storedSize int64, abs, local string, localSize int64) error {
	return fmt.Errorf("%w: %s in %s holds %s (%d bytes), but the local file %s is %s (%d bytes); "+
		"nothing was overwritten. Another server (an old primary after a failover?) may be archiving into this repository, "+
		"or it belongs to another cluster",
		ErrConflict, key, r, stored, storedSize, abs, local, localSize)
}

// sameContent reads the object key to its verified end and the local file
// at abs side by side, and reports whether they hold the same bytes. A
// damaged object is an error (wrapping codec.ErrCorrupt), not a conflict:
// what it held cannot be known.
func sameContent(ctx context.Context, r *repo.Repo, key, abs string, size int64) (bool, error) {
	obj, err := r.Get(ctx, key)
	if errors.Is(err, storage.ErrNotExist) {
		// Deleted since it was found (perhaps the damaged copy an earlier
		// attempt reported): start again, which stores the file.
		return false, storage.Retryable(fmt.Errorf("%s vanished before it could be compared: %w", key, err))
	}
	if err != nil {
		return false, fmt.Errorf("%s is already archived; reading it to compare: %w", key, err)
	}
	defer obj.Close()
	f, err := os.Open(abs)
	if err != nil {
		return false, err
	}
	defer f.Close()
	stored := make([]byte, compareBufSize)
	localBuf := make([]byte, compareBufSize)
	same := true
	var off int64
	for {
		n, rerr := io.ReadFull(obj, stored)
		if n > 0 && same {
			if off+int64(n) > size {
				same = false
			} else if _, err := io.ReadFull(f, localBuf[:n]); err != nil {
				return false, fmt.Errorf("read %s: %w", abs, err)
			} else if !bytes.Equal(stored[:n], localBuf[:n]) {
				same = false
			}
		}
		off += int64(n)
		switch rerr {
		case nil:
			continue
		case io.EOF, io.ErrUnexpectedEOF:
			// The object verified: its content is exactly what was stored.
			return same && off == size, nil
		default:
			return false, fmt.Errorf("%s is already archived, but reading it to compare with the local file failed: %w; "+
				"if it is damaged, delete it from the repository so that the next push stores the segment again", key, rerr)
		}
	}
}

// storedSum reads the object key through and returns the SHA-256 of its
// raw content, for messages.
func storedSum(ctx context.Context, r *repo.Repo, key string) (string, error) {
	obj, err := r.Get(ctx, key)
	if err != nil {
		return "", err
	}
	defer obj.Close()
	sum, _, err := sha256Of(obj)
	return sum, err
}

// sha256Of reads r to its end and returns "sha256:<hex>" of what it read,
// as codec.FormatSum writes it, and the number of bytes.
func sha256Of(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, hashBufSize))
	if err != nil {
		return "", n, err
	}
	var sum [sha256.Size]byte
	return codec.FormatSum([sha256.Size]byte(h.Sum(sum[:0]))), n, nil
}

// localSum computes a local file's SHA-256 once, for the repositories that
// already hold its name.
type localSum struct {
	path, name string
	stamp      fileStamp

	mu  sync.Mutex
	sum string
	err error
}

func (l *localSum) get() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sum != "" || l.err != nil {
		return l.sum, l.err
	}
	l.sum, l.err = l.compute()
	return l.sum, l.err
}

func (l *localSum) compute() (string, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum, n, err := sha256Of(&segmentReader{f: f, name: l.name, size: l.stamp.size})
	if err != nil {
		return "", fmt.Errorf("checksum %s: %w", l.path, err)
	}
	if n != l.stamp.size {
		return "", fmt.Errorf("checksum %s: read %d of %d bytes", l.path, n, l.stamp.size)
	}
	return sum, nil
}

// segmentReader reads exactly size bytes of f and fails when the file turns
// out shorter or longer, so that a file changing under it can never be
// stored as a whole object: the error aborts the upload. It has no WriteTo,
// so that io.Copy hands it to the codec Writer's ReadFrom, which reads in
// large pooled pieces and hashes each on another core while compressing.
type segmentReader struct {
	f    *os.File
	name string
	size int64
	off  int64
}

func (r *segmentReader) Read(p []byte) (int, error) {
	if r.off == r.size {
		return 0, r.checkEOF()
	}
	if rest := r.size - r.off; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := r.f.Read(p)
	r.off += int64(n)
	if err == io.EOF {
		err = r.shrunk()
	}
	return n, err
}

func (r *segmentReader) shrunk() error {
	return fmt.Errorf("%s shrank to %d bytes while being read (it had %d)", r.name, r.off, r.size)
}

// checkEOF returns io.EOF when the file ends where expected, an error when
// it grew.
func (r *segmentReader) checkEOF() error {
	var b [1]byte
	n, err := r.f.Read(b[:])
	if n > 0 {
		return fmt.Errorf("%s grew beyond %d bytes while being read", r.name, r.size)
	}
	if err == nil || err == io.EOF {
		return io.EOF
	}
	return err
}
