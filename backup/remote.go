package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/repo"
)

// remoteSource takes the backup with BASE_BACKUP over a replication
// connection (PostgreSQL 15's protocol: one CopyOut stream of archive
// messages), for a backup job that cannot see the data directory.
type remoteSource struct {
	conn        *replication.Conn
	sys         replication.System
	compression string
}

// ErrProtocol: the server sent something the BASE_BACKUP protocol does
// not allow.
var ErrProtocol = errors.New("unexpected BASE_BACKUP message")

func openRemote(ctx context.Context, o Options) (*remoteSource, error) {
	switch o.ServerCompression {
	case "", "none", "lz4", "zstd", "gzip":
	default:
		return nil, fmt.Errorf("server compression %q: want lz4, zstd, gzip or none", o.ServerCompression)
	}
	conn, err := replication.ConnectString(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	sys, err := conn.Identify(ctx)
	if errors.Is(err, errors.ErrUnsupported) {
		err = fmt.Errorf("%w: --remote: %w; run backup-push where the data directory is mounted", ErrNotReady, err)
	}
	if err == nil {
		err = checkArchiveMode(sys.ArchiveMode)
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	s := &remoteSource{conn: conn, sys: sys, compression: o.ServerCompression}
	if s.compression == "none" {
		s.compression = ""
	}
	return s, nil
}

func (s *remoteSource) info() pg.Info { return s.sys.Info }

func (s *remoteSource) close(ctx context.Context) { s.conn.Close(ctx) }

// baseBackupCommand builds PostgreSQL 15's BASE_BACKUP. The server does
// not wait for WAL archiving (Push checks the repository itself) and does
// not verify checksums (Push does, and reports instead of failing).
func (s *remoteSource) baseBackupCommand(label string, fast bool) string {
	opts := []string{"LABEL '" + strings.ReplaceAll(label, "'", "''") + "'", "PROGRESS", "WAIT false",
		"TABLESPACE_MAP", "VERIFY_CHECKSUMS false", "MANIFEST 'no'"}
	if fast {
		opts = append(opts, "CHECKPOINT 'fast'")
	}
	if s.compression != "" {
		opts = append(opts, "COMPRESSION '"+s.compression+"'")
	}
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")"
}

func (s *remoteSource) copy(ctx context.Context, m *Manifest, p *packer, cp copyParams) error {
	s.conn.PgConn().Frontend().SendQuery(&pgproto3.Query{String: s.baseBackupCommand(m.Label, cp.fast)})
	if err := s.conn.PgConn().Frontend().Flush(); err != nil {
		return fmt.Errorf("send BASE_BACKUP: %w", err)
	}
	start, tli, err := s.readPosition(ctx)
	if err != nil {
		return fmt.Errorf("BASE_BACKUP start: %w", err)
	}
	m.StartLSN, m.Timeline = start, tli
	p.startLSN = start
	cp.log.Info("backup started", "lsn", start, "timeline", tli, "type", m.Type, "mode", "remote")
	var total int64
	rows, err := s.readResultSet(ctx)
	if err != nil {
		return fmt.Errorf("BASE_BACKUP tablespaces: %w", err)
	}
	for _, row := range rows {
		// The data directory's row has no OID; the others are tablespaces
		// (with TABLESPACE_MAP the stream carries no pg_tblspc links).
		if len(row) == 3 && row[0] != nil {
			oid, err := strconv.ParseUint(string(row[0]), 10, 32)
			if err != nil {
				return fmt.Errorf("%w: tablespace OID %q", ErrProtocol, row[0])
			}
			m.Tablespaces = append(m.Tablespaces, Tablespace{OID: uint32(oid), Location: string(row[1])})
		}
		if len(row) == 3 && row[2] != nil {
			kb, _ := strconv.ParseInt(string(row[2]), 10, 64)
			total += kb << 10
		}
	}
	cp.total.Store(total)

	st := newStreamPacker(ctx, p, cp, m)
	err = s.stream(ctx, st)
	if werr := st.wait(); err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	stop, _, err := s.readPosition(ctx)
	if err != nil {
		return fmt.Errorf("BASE_BACKUP end: %w", err)
	}
	m.StopLSN = stop
	if err := s.finish(ctx); err != nil {
		return err
	}
	if m.BackupLabel == "" {
		return fmt.Errorf("%w: the stream had no backup_label", ErrProtocol)
	}
	m.Files, m.PageChecksumErrors, m.Stats.NewBytes = st.assemble()
	return nil
}

// stream reads the CopyOut part: archives ('n'), their data ('d'),
// progress ('p'), until CopyDone.
func (s *remoteSource) stream(ctx context.Context, st *streamPacker) error {
	msg, err := s.receive(ctx)
	if err != nil {
		return err
	}
	if _, ok := msg.(*pgproto3.CopyOutResponse); !ok {
		return fmt.Errorf("%w: %T instead of CopyOutResponse", ErrProtocol, msg)
	}
	for {
		msg, err := s.receive(ctx)
		if err != nil {
			st.closeArchive(err)
			return err
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyDone:
			return st.closeArchive(nil)
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case 'n':
				parts := bytes.Split(msg.Data[1:], []byte{0})
				if len(parts) < 2 {
					return fmt.Errorf("%w: malformed new-archive message", ErrProtocol)
				}
				if err := st.closeArchive(nil); err != nil {
					return err
				}
				if err := st.openArchive(string(parts[0]), string(parts[1]), s.compression); err != nil {
					return err
				}
			case 'd':
				if err := st.write(msg.Data[1:]); err != nil {
					return err
				}
			case 'p':
				if len(msg.Data) >= 9 {
					_ = binary.BigEndian.Uint64(msg.Data[1:9]) // progress is counted as units are read
				}
			case 'm':
				return fmt.Errorf("%w: a backup manifest was sent though none was asked for", ErrProtocol)
			default:
				return fmt.Errorf("%w: CopyData type %q", ErrProtocol, msg.Data[0])
			}
		default:
			return fmt.Errorf("%w: %T during the copy", ErrProtocol, msg)
		}
	}
}

func (s *remoteSource) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	for {
		msg, err := s.conn.PgConn().ReceiveMessage(ctx)
		if err != nil {
			return nil, fmt.Errorf("BASE_BACKUP: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ErrorResponse:
			return nil, fmt.Errorf("BASE_BACKUP: %w", pgconn.ErrorResponseToPgError(msg))
		default:
			return msg, nil
		}
	}
}

// readResultSet reads one result set up to its CommandComplete.
func (s *remoteSource) readResultSet(ctx context.Context) ([][][]byte, error) {
	var rows [][][]byte
	for {
		msg, err := s.receive(ctx)
		if err != nil {
			return nil, err
		}
		switch msg := msg.(type) {
		case *pgproto3.RowDescription:
		case *pgproto3.DataRow:
			row := make([][]byte, len(msg.Values))
			for i, v := range msg.Values {
				if v != nil {
					row[i] = bytes.Clone(v)
				}
			}
			rows = append(rows, row)
		case *pgproto3.CommandComplete:
			return rows, nil
		default:
			return nil, fmt.Errorf("%w: %T in a result set", ErrProtocol, msg)
		}
	}
}

// readPosition reads the (recptr, tli) result set BASE_BACKUP sends at
// its start and end.
func (s *remoteSource) readPosition(ctx context.Context) (pg.LSN, pg.TimeLineID, error) {
	rows, err := s.readResultSet(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(rows) != 1 || len(rows[0]) != 2 {
		return 0, 0, fmt.Errorf("%w: position result set of %d rows", ErrProtocol, len(rows))
	}
	lsn, err := pg.ParseLSN(string(rows[0][0]))
	if err != nil {
		return 0, 0, err
	}
	tli, err := strconv.ParseUint(string(rows[0][1]), 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: timeline %q", ErrProtocol, rows[0][1])
	}
	return lsn, pg.TimeLineID(tli), nil
}

// finish reads the end of the command: CommandComplete, ReadyForQuery.
func (s *remoteSource) finish(ctx context.Context) error {
	for {
		msg, err := s.receive(ctx)
		if err != nil {
			return err
		}
		switch msg.(type) {
		case *pgproto3.CommandComplete:
		case *pgproto3.ReadyForQuery:
			return nil
		default:
			return fmt.Errorf("%w: %T after the backup", ErrProtocol, msg)
		}
	}
}

// tablespaceArchive matches a tablespace archive's name: <oid>.tar[.ext].
var tablespaceArchive = regexp.MustCompile(`^([0-9]+)\.tar`)

// unit is a slice of a file read from the stream, on its way to a worker.
type unit struct {
	file int
	f    *entry
	off  int64
	buf  *[]byte
	n    int
}

// streamPacker turns the archives of a BASE_BACKUP stream into data
// objects: one goroutine reads the tar stream and cuts files into units,
// jobs workers hash, check, compress and upload them into objects of about
// objectSize, so the stream is read once and compressed in parallel.
type streamPacker struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	p      *packer
	cp     copyParams
	m      *Manifest

	pw             *io.PipeWriter // the current archive's bytes
	tarDone        chan error
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

// openArchive starts reading a new archive of the stream.
func (st *streamPacker) openArchive(name, location, compression string) error {
	prefix := ""
	if location != "" {
		mt := tablespaceArchive.FindStringSubmatch(name)
		if mt == nil {
			return fmt.Errorf("%w: tablespace archive named %q", ErrProtocol, name)
		}
		prefix = "pg_tblspc/" + mt[1] + "/"
	}
	pr, pw := io.Pipe()
	st.pw = pw
	st.tarDone = make(chan error, 1)
	go func() {
		err := st.readArchive(pr, prefix, compression)
		pr.CloseWithError(err)
		st.tarDone <- err
	}()
	return nil
}

func (st *streamPacker) write(b []byte) error {
	if st.pw == nil {
		return fmt.Errorf("%w: data before any archive", ErrProtocol)
	}
	if _, err := st.pw.Write(b); err != nil {
		if cause := context.Cause(st.ctx); cause != nil {
			return cause
		}
		return err
	}
	return nil
}

// closeArchive ends the current archive (if any) and waits until its tar
// stream is fully read; cause non-nil aborts it.
func (st *streamPacker) closeArchive(cause error) error {
	if st.pw == nil {
		return nil
	}
	st.pw.CloseWithError(cause)
	st.pw = nil
	err := <-st.tarDone
	if err != nil {
		st.fail(err)
		return err
	}
	return st.ctx.Err()
}

// readArchive reads one tar archive (decompressing it when the server
// compressed it) and hands its files to the workers.
func (st *streamPacker) readArchive(r io.Reader, prefix, compression string) error {
	switch compression {
	case "lz4":
		r = lz4.NewReader(r)
	case "zstd":
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return err
		}
		defer zr.Close()
		r = zr
	case "gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("gzip stream: %w", err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			_, _ = io.Copy(io.Discard, r) // the tar trailer's padding
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the backup stream: %w", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if name == "" || name == "." {
			continue
		}
		rel := prefix + name
		switch hdr.Typeflag {
		case tar.TypeDir:
			st.m.Dirs = append(st.m.Dirs, Dir{Path: rel, Mode: uint32(hdr.Mode & 0o7777)})
		case tar.TypeSymlink:
			if rel == "pg_wal" {
				st.m.Dirs = append(st.m.Dirs, Dir{Path: rel, Mode: 0o700})
			}
		case tar.TypeReg:
			if prefix == "" && (rel == "backup_label" || rel == "tablespace_map") {
				b, err := io.ReadAll(io.LimitReader(tr, 1<<20))
				if err != nil {
					return fmt.Errorf("read %s from the stream: %w", rel, err)
				}
				if rel == "backup_label" {
					st.m.BackupLabel = string(b)
				} else {
					st.m.TablespaceMap = string(b)
				}
				continue
			}
			if err := st.readFile(tr, hdr, rel); err != nil {
				return err
			}
		}
	}
}

// readFile cuts one file of the stream into units for the workers.
func (st *streamPacker) readFile(tr io.Reader, hdr *tar.Header, rel string) error {
	en := &entry{rel: rel, size: hdr.Size, mode: hdr.FileInfo().Mode().Perm(), mtime: hdr.ModTime.Unix()}
	if m := relFileName.FindStringSubmatch(path.Base(rel)); m != nil && inDatabaseDir(rel) {
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
	if hdr.Size == 0 {
		return nil
	}
	for off := int64(0); off < hdr.Size; off += UnitSize {
		bp := st.p.bufs.Get().(*[]byte)
		n, err := io.ReadFull(tr, (*bp)[:min(int64(UnitSize), hdr.Size-off)])
		if err != nil {
			st.p.bufs.Put(bp)
			return fmt.Errorf("read %s from the stream: %w", rel, err)
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
