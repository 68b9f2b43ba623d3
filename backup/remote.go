package backup

import (
	"context"
	"fmt"
	"io"
	"path"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/repo"
)

// remoteSource takes the backup with BASE_BACKUP over a replication
// connection, for a backup job that cannot see the data directory; its
// stream feeds a streamPacker.
type remoteSource struct {
	conn *replication.Conn
	sys  replication.System
	opts replication.BaseBackupOptions
}

func openRemote(ctx context.Context, o Options) (*remoteSource, error) {
	opts := replication.BaseBackupOptions{Compression: o.ServerCompression}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	conn, err := replication.ConnectString(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	sys, err := conn.Identify(ctx)
	if err == nil && sys.Major < replication.MinMajor {
		err = fmt.Errorf("%w: --remote needs PostgreSQL %d or later (the server runs %s); run backup-push where the data directory is mounted",
			ErrNotReady, replication.MinMajor, sys.Version)
	}
	if err == nil {
		err = checkArchiveMode(sys.ArchiveMode)
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return &remoteSource{conn: conn, sys: sys, opts: opts}, nil
}

func (s *remoteSource) info() pg.Info { return s.sys.Info }

func (s *remoteSource) close(ctx context.Context) { s.conn.Close(ctx) }

// copy runs BASE_BACKUP into a streamPacker. The server does not wait for
// WAL archiving (Push checks the repository itself) and does not verify
// checksums (Push does, and reports instead of failing).
func (s *remoteSource) copy(ctx context.Context, m *Manifest, p *packer, cp copyParams) error {
	st := newStreamPacker(ctx, p, cp, m)
	o := s.opts
	o.Label, o.Fast = m.Label, cp.fast
	err := s.conn.BaseBackup(ctx, o, st)
	if err != nil {
		st.fail(err)
	}
	if werr := st.wait(); err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	m.Files, m.PageChecksumErrors, m.Stats.NewBytes = st.assemble()
	return nil
}

// unit is a slice of a file read from the stream, on its way to a worker.
type unit struct {
	file int
	f    *entry
	off  int64
	buf  *[]byte
	n    int
}

// streamPacker is the repository's replication.Sink: it turns the files
// of a BASE_BACKUP stream into data objects. The reader's goroutine cuts
// files into units, jobs workers hash, check, compress and upload them
// into objects of about objectSize, so the stream is read once and
// compressed in parallel; it records the rest in the manifest.
type streamPacker struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	p      *packer
	cp     copyParams
	m      *Manifest

	units          chan unit
	workers        sync.WaitGroup
	objectNo       atomic.Int64
	files          []*entry
	pieces         map[int][]piece
	mu             sync.Mutex
	errOnce        sync.Once
	err            error
	workersStopped bool
}

func newStreamPacker(ctx context.Context, p *packer, cp copyParams, m *Manifest) *streamPacker {
	ctx, cancel := context.WithCancelCause(ctx)
	st := &streamPacker{ctx: ctx, cancel: cancel, p: p, cp: cp, m: m,
		units: make(chan unit), pieces: map[int][]piece{}}
	for range cp.jobs {
		st.workers.Add(1)
		go st.work()
	}
	return st
}

func (st *streamPacker) fail(err error) {
	st.errOnce.Do(func() { st.err = err; st.cancel(err) })
}

// work stores units into this worker's current object, starting a new
// object when it reaches objectSize.
func (st *streamPacker) work() {
	defer st.workers.Done()
	var w *objectWriter
	finish := func(cause error) {
		if w == nil {
			return
		}
		if err := w.finish(cause); err != nil {
			st.fail(err)
		} else if w.written > 0 {
			st.p.mu.Lock()
			st.p.objects = append(st.p.objects, Object{Key: w.key, RawSize: w.sum.RawSize, StoredSize: w.sum.StoredSize, Sum: w.sum.Sum})
			st.p.mu.Unlock()
		}
		w = nil
	}
	for u := range st.units {
		if st.ctx.Err() != nil {
			st.p.bufs.Put(u.buf)
			continue
		}
		if w == nil {
			w = &objectWriter{ctx: st.ctx, r: st.p.r, key: repo.BackupDataKey(st.p.id, int(st.objectNo.Add(1)))}
		}
		res := &pieceResult{read: int64(u.n)}
		var parentFile *File
		if st.p.parentFS != nil {
			parentFile = st.p.parentFS[u.f.rel]
		}
		err := st.p.storeUnit(w, res, u.f, parentFile, u.off, (*u.buf)[:u.n])
		st.p.bufs.Put(u.buf)
		if err != nil {
			st.fail(err)
			finish(err)
			continue
		}
		pc := piece{file: u.file, off: u.off, len: int64(u.n)}
		st.p.mu.Lock()
		st.p.results[pc] = res
		st.p.mu.Unlock()
		st.mu.Lock()
		st.pieces[u.file] = append(st.pieces[u.file], pc)
		st.mu.Unlock()
		if w.written >= st.cp.objectSize {
			finish(nil)
		}
	}
	finish(context.Cause(st.ctx))
}

var _ replication.Sink = (*streamPacker)(nil)

// Begin records where the backup starts and its tablespaces.
func (st *streamPacker) Begin(_ context.Context, b replication.Start) error {
	st.m.StartLSN, st.m.Timeline = b.LSN, b.Timeline
	st.p.startLSN = b.LSN
	for _, ts := range b.Tablespaces {
		st.m.Tablespaces = append(st.m.Tablespaces, Tablespace{OID: ts.OID, Location: ts.Location})
	}
	st.cp.total.Store(b.Size)
	st.cp.log.Info("backup started", "lsn", b.LSN, "timeline", b.Timeline, "type", st.m.Type, "mode", "remote")
	return nil
}

// Dir records a directory.
func (st *streamPacker) Dir(_ context.Context, e replication.Entry) error {
	st.m.Dirs = append(st.m.Dirs, Dir{Path: e.Name, Mode: uint32(e.Mode.Perm())})
	return nil
}

// Symlink ignores links, as local backups do outside pg_tblspc.
func (st *streamPacker) Symlink(context.Context, replication.Entry) error { return nil }

// End records where the backup ends and its label files.
func (st *streamPacker) End(_ context.Context, e replication.Stop) error {
	st.m.StopLSN, st.m.BackupLabel, st.m.TablespaceMap = e.LSN, e.BackupLabel, e.TablespaceMap
	return nil
}

// File cuts one file of the stream into units for the workers.
func (st *streamPacker) File(_ context.Context, e replication.Entry, r io.Reader) error {
	en := &entry{rel: e.Name, size: e.Size, mode: e.Mode.Perm(), mtime: e.ModTime.Unix()}
	if m := relFileName.FindStringSubmatch(path.Base(e.Name)); m != nil && inDatabaseDir(e.Name) {
		en.relation = true
		en.lsnStamped = m[3] == "" || m[3] == "init"
		if m[5] != "" {
			seg, _ := strconv.ParseUint(m[5], 10, 32)
			en.firstBlock = uint32(seg) * pg.RelSegmentBlocks
		}
	}
	idx := len(st.files)
	st.files = append(st.files, en)
	st.cp.files.Add(1)
	for off := int64(0); off < e.Size; off += UnitSize {
		bp := st.p.bufs.Get().(*[]byte)
		n, err := io.ReadFull(r, (*bp)[:min(int64(UnitSize), e.Size-off)])
		if err != nil {
			st.p.bufs.Put(bp)
			return fmt.Errorf("read %s from the stream: %w", e.Name, err)
		}
		st.p.readDone.Add(int64(n))
		select {
		case st.units <- unit{file: idx, f: en, off: off, buf: bp, n: n}:
		case <-st.ctx.Done():
			st.p.bufs.Put(bp)
			return context.Cause(st.ctx)
		}
	}
	return nil
}

// wait stops the workers once the stream is read and returns the first
// error.
func (st *streamPacker) wait() error {
	if !st.workersStopped {
		st.workersStopped = true
		close(st.units)
		st.workers.Wait()
	}
	return st.err
}

// assemble builds the manifest's files from the workers' results.
func (st *streamPacker) assemble() ([]File, []PageError, int64) {
	st.p.files = make([]entry, len(st.files))
	for i, f := range st.files {
		st.p.files[i] = *f
	}
	return st.p.assemble(st.pieces)
}
