package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// DefaultObjectSize is the raw size of a data object: large enough that
// per-object overhead (a request, a header) is noise, small enough that a
// 1 GiB relation segment is read by several workers at once.
const DefaultObjectSize = 32 << 20

// Options tune Push.
type Options struct {
	// Conn is the libpq connection string of the server to back up (empty:
	// libpq's PG* environment). The connection stays open for the whole
	// backup: closing it aborts the backup on the server.
	Conn string
	// PGData is the server's data directory as this process sees it
	// (empty: the server's data_directory setting).
	PGData string
	// Incremental stores only what changed since the newest backup when
	// there is one on the server's timeline, or on an ancestor timeline it
	// ended on before the fork (a promotion's first backup); otherwise the
	// backup is full.
	Incremental bool
	// Jobs is how many files are read, compressed and uploaded at once
	// (0: one per CPU, at least 2).
	Jobs int
	// ObjectSize is the raw size of data objects (0: DefaultObjectSize;
	// rounded up to a multiple of UnitSize).
	ObjectSize int64
	// SpreadCheckpoint waits for a spread checkpoint instead of asking for
	// an immediate one.
	SpreadCheckpoint bool
	// ArchiveTimeout bounds the wait for the WAL the backup needs to reach
	// the repository (0: 2 minutes).
	ArchiveTimeout time.Duration
	// Label is stored in backup_label (default "walferry <id>").
	Label  string
	Logger *slog.Logger
	// Remote takes the backup over the replication protocol (BASE_BACKUP)
	// instead of reading PGData: for a CronJob without the data volume.
	Remote bool
	// ServerCompression asks the server to compress the BASE_BACKUP
	// stream (lz4, zstd, gzip; empty: none). Remote only.
	ServerCompression string
	// Progress, when set, is called about five times a second while files
	// are read, and once at the end.
	Progress func(Progress)
	// Lease tunes the repository's backup lease (zero: its defaults, 30 s
	// renewal and 5 min staleness); its Purpose is set by Push.
	Lease repo.LeaseOptions
}

// Progress reports a running backup.
type Progress struct {
	ID         string
	Phase      string // "checkpoint", "copy", "wait-wal", "done"
	BytesDone  int64
	BytesTotal int64
	Files      int
	Elapsed    time.Duration
}

// ErrNotReady: the server cannot be backed up as it is (archiving off, a
// standby, another cluster's data directory).
var ErrNotReady = failure.New(failure.Postgres, "cannot back up this server")

// ErrWALMissing: the WAL the backup needs did not reach the repository.
var ErrWALMissing = errors.New("WAL needed by the backup is not archived")

// Push takes a base backup of the server into r and returns its manifest.
// The backup exists only once its manifest is written, which happens last,
// after the WAL from its start to its end is in the repository. A failed
// or interrupted backup leaves no manifest; its objects are removed at
// once when possible, and by the next Push otherwise.
func Push(ctx context.Context, r *repo.Repo, o Options) (_ *Manifest, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "backup")
	if o.Jobs <= 0 {
		o.Jobs = max(2, runtime.NumCPU())
	}
	if o.ObjectSize <= 0 {
		o.ObjectSize = DefaultObjectSize
	}
	o.ObjectSize = (o.ObjectSize + UnitSize - 1) / UnitSize * UnitSize
	if o.ArchiveTimeout <= 0 {
		o.ArchiveTimeout = 2 * time.Minute
	}
	began := time.Now()

	var src source
	if o.Remote {
		src, err = openRemote(ctx, o)
	} else {
		src, err = openLocal(ctx, o)
	}
	if err != nil {
		return nil, err
	}
	defer src.close(context.WithoutCancel(ctx))
	info := src.info()
	meta := r.Metadata()
	if info.SystemID != meta.SystemID || info.Major != meta.PGMajor || info.WALSegSize != meta.WALSegmentSize {
		return nil, fmt.Errorf("%w: the server (system identifier %d, PostgreSQL %d, %d-byte segments) is not the cluster of %s (system identifier %d, PostgreSQL %d, %d-byte segments): use this cluster's repository",
			repo.ErrWrongCluster, info.SystemID, info.Major, info.WALSegSize, r, meta.SystemID, meta.PGMajor, meta.WALSegmentSize)
	}
	segSize, err := info.SegmentSize()
	if err != nil {
		return nil, err
	}
	if err := checkLineage(ctx, r, info.Timeline); err != nil {
		return nil, err
	}

	tempCutoff := time.Now().Add(-tempSkewMargin)
	lo := o.Lease
	lo.Purpose = "backup-push"
	lease, err := r.Acquire(ctx, "backup", lo)
	if err != nil {
		return nil, err
	}
	defer releaseLease(ctx, lease)
	ctx, stopLease := leaseContext(ctx, lease)
	defer stopLease()
	defer func() { err = leaseLost(ctx, "backup-push", err) }()

	if err := removeIncomplete(ctx, r, log); err != nil {
		return nil, err
	}
	sweepTemps(ctx, r, tempCutoff, log)

	typ := Full
	var parent *Manifest
	if o.Incremental {
		parent, err = Resolve(ctx, r, Latest)
		switch {
		case errors.Is(err, ErrNoBackup):
			log.Warn("no backup to build on yet: taking a full backup")
		case err != nil:
			return nil, err
		case parent.Timeline != info.Timeline:
			if why := ancestorParent(ctx, r, parent, info.Timeline, segSize); why != "" {
				log.Warn("the newest backup is on another timeline: taking a full backup",
					"parent", parent.ID, "parent_timeline", parent.Timeline, "timeline", info.Timeline, "why", why)
				parent = nil
				break
			}
			// A promotion's first backup: the parent is history this
			// timeline shares, and page LSNs only grow along it.
			log.Info("building on a backup of an ancestor timeline", "parent", parent.ID, "parent_timeline", parent.Timeline, "timeline", info.Timeline)
			typ = Incremental
		default:
			typ = Incremental
		}
	}
	id, err := freshID(ctx, r, typ)
	if err != nil {
		return nil, err
	}
	m := &Manifest{
		FormatVersion: ManifestVersion, ID: id, Type: typ, Mode: "local",
		SystemID: info.SystemID, PGVersionNum: info.VersionNum, DataChecksums: info.DataChecksums,
		WALLogHints: info.WALLogHints, Timeline: info.Timeline,
	}
	if o.Remote {
		m.Mode = "remote"
	}
	if parent != nil {
		m.Parent = parent.ID
	}
	m.Label = o.Label
	if m.Label == "" {
		m.Label = "walferry " + id
	}
	log = log.With("backup", id)

	var done atomic.Int64
	var total atomic.Int64
	var files atomic.Int64
	report := func(phase string) {
		if o.Progress != nil {
			o.Progress(Progress{ID: id, Phase: phase, BytesDone: done.Load(), BytesTotal: total.Load(),
				Files: int(files.Load()), Elapsed: time.Since(began)})
		}
	}
	report("checkpoint")

	// From here on, a failure removes what was stored.
	ok := false
	defer func() {
		if !ok {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if err := deletePrefix(cctx, r, repo.BackupPrefix(id)); err != nil {
				log.Warn("could not remove the failed backup's objects; the next backup-push removes them", "err", err)
			}
		}
	}()

	p := newPacker(r, id, nil, 0, info.DataChecksums, parent, &done)
	// Page-level incrementals need every change, hint bits included, to
	// stamp the page's LSN, on this backup and on its parent.
	p.pageLevel = parent != nil && (info.DataChecksums || info.WALLogHints) &&
		(parent.DataChecksums || parent.WALLogHints)
	tick := time.NewTicker(200 * time.Millisecond)
	copyDone := make(chan struct{})
	go func() {
		for {
			select {
			case <-copyDone:
				return
			case <-tick.C:
				if files.Load() > 0 {
					report("copy")
				}
			}
		}
	}()
	m.StartTime = time.Now().UTC()
	err = src.copy(ctx, m, p, copyParams{jobs: o.Jobs, objectSize: o.ObjectSize, fast: !o.SpreadCheckpoint,
		total: &total, files: &files, log: log})
	tick.Stop()
	close(copyDone)
	if err != nil {
		return nil, err
	}
	if parent != nil && m.Timeline != info.Timeline {
		return nil, fmt.Errorf("%w: the server switched timeline while the backup started; run it again", ErrNotReady)
	}
	m.StopTime = time.Now().UTC()
	m.Objects = p.objects
	for _, pe := range m.PageChecksumErrors {
		log.Warn("page checksum mismatch: the file is damaged on disk (backed up as it is)", "path", pe.Path, "block", pe.Block)
	}
	m.StartWAL = pg.SegmentNameOf(m.Timeline, m.StartLSN, segSize)
	m.StopWAL = pg.SegmentName(m.Timeline, segSize.SegNoBefore(m.StopLSN), segSize)
	log.Info("files copied; waiting for the WAL the backup needs", "start_wal", m.StartWAL, "stop_wal", m.StopWAL)
	report("wait-wal")
	if err := waitForWAL(ctx, r, m, segSize, o.ArchiveTimeout); err != nil {
		return nil, err
	}

	m.Stats.Files = len(m.Files)
	for _, f := range m.Files {
		m.Stats.DataBytes += f.Size
	}
	for _, obj := range m.Objects {
		m.Stats.StoredBytes += obj.StoredSize
	}
	m.Stats.Duration = Seconds(time.Since(began).Seconds())
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if err := WriteManifest(ctx, r, m); err != nil {
		return nil, err
	}
	ok = true
	report("done")
	log.Info("backup complete", "files", len(m.Files), "bytes", m.Stats.DataBytes, "stored_bytes", m.Stats.StoredBytes)
	return m, nil
}

// copyParams are what a source needs to copy the files.
type copyParams struct {
	jobs       int
	objectSize int64
	fast       bool
	total      *atomic.Int64 // bytes to read, once known
	files      *atomic.Int64
	log        *slog.Logger
}

// source is where a backup's files come from: the data directory (local)
// or a BASE_BACKUP stream (remote).
type source interface {
	info() pg.Info
	// copy starts the backup on the server, stores the files through p
	// (which it sets startLSN on), stops the backup, and fills m's LSNs,
	// timeline, label, tablespaces, directories, files, page errors and
	// Stats.NewBytes.
	copy(ctx context.Context, m *Manifest, p *packer, cp copyParams) error
	close(ctx context.Context)
}

// localSource reads the data directory, with pg_backup_start/stop on a
// connection held open for the whole backup.
type localSource struct {
	conn    *pgx.Conn
	pgInfo  pg.Info
	dataDir string
}

func openLocal(ctx context.Context, o Options) (*localSource, error) {
	conn, err := pg.Connect(ctx, o.Conn)
	if err != nil {
		return nil, err
	}
	s := &localSource{conn: conn}
	if err := s.check(ctx, o); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

func (s *localSource) check(ctx context.Context, o Options) error {
	info, err := pg.ClusterInfo(ctx, s.conn)
	if err != nil {
		return err
	}
	s.pgInfo = info
	if info.InRecovery {
		return fmt.Errorf("%w: the server is a standby; run backup-push against the primary", ErrNotReady)
	}
	// The timeline being written, not the latest checkpoint's: a server
	// promoted moments ago has its new timeline before its first
	// checkpoint records it (the lineage check must see the new one).
	var walFile string
	if err := s.conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&walFile); err != nil {
		return pg.QueryError(ctx, "read the current timeline", err)
	}
	segSize, err := info.SegmentSize()
	if err != nil {
		return err
	}
	cur, err := pg.ParseWALFileName(walFile, segSize)
	if err != nil {
		return fmt.Errorf("pg: read the current timeline: %w", err)
	}
	s.pgInfo.Timeline = cur.TLI
	if s.dataDir, err = checkDataDir(ctx, s.conn, o.PGData, info); err != nil {
		return err
	}
	var archiveMode string
	if err := s.conn.QueryRow(ctx, "SELECT current_setting('archive_mode')").Scan(&archiveMode); err != nil {
		return pg.QueryError(ctx, "read archive_mode", err)
	}
	return checkArchiveMode(archiveMode)
}

// checkLineage refuses, before any work, a server the repository's
// lineage record does not name as primary: an old primary after a
// failover, a copy promoted by a restore with --target-action promote. Its
// backup would be of a history the repository does not follow. No record
// (an older repository) permits every server.
func checkLineage(ctx context.Context, r *repo.Repo, tli pg.TimeLineID) error {
	g, ok, err := r.Lineage(ctx)
	if err != nil || !ok {
		return err
	}
	if err := g.PermitsPrimary(tli); err != nil {
		return fmt.Errorf("backup-push to %s: %w", r, err)
	}
	return nil
}

// checkArchiveMode refuses a server whose WAL never reaches a repository.
func checkArchiveMode(mode string) error {
	if mode == "off" {
		return fmt.Errorf("%w: archive_mode is off, so the WAL a restore needs would never reach the repository; set archive_mode = on and archive_command = 'walferry archive-push %%p' (restart needed)", ErrNotReady)
	}
	return nil
}

func (s *localSource) info() pg.Info { return s.pgInfo }

func (s *localSource) close(ctx context.Context) { s.conn.Close(ctx) }

func (s *localSource) copy(ctx context.Context, m *Manifest, p *packer, cp copyParams) error {
	m.Owner = dataDirOwner(s.dataDir)
	start, err := startBackup(ctx, s.conn, s.pgInfo.VersionNum, m.Label, cp.fast)
	if err != nil {
		return err
	}
	m.StartLSN = start
	var tli int32
	if err := s.conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tli); err == nil {
		m.Timeline = pg.TimeLineID(tli)
	}
	cp.log.Info("backup started", "lsn", start, "timeline", m.Timeline, "type", m.Type)

	sc, err := walkDataDir(s.dataDir, s.pgInfo.Major)
	if err != nil {
		return err
	}
	if err := nameTablespaces(ctx, s.conn, sc.tablespaces); err != nil {
		return err
	}
	m.Dirs, m.Tablespaces = sc.dirs, sc.tablespaces
	var total int64
	for _, f := range sc.files {
		total += f.size
	}
	cp.total.Store(total)
	cp.files.Store(int64(len(sc.files)))
	tasks := planTasks(sc.files, cp.objectSize)
	p.files = sc.files
	p.startLSN = start
	if err := p.run(ctx, tasks, cp.jobs); err != nil {
		return err
	}
	m.Files, m.PageChecksumErrors, m.Stats.NewBytes = p.assemble(piecesByFile(tasks))

	stopLSN, label, spcmap, err := stopBackup(ctx, s.conn, s.pgInfo.VersionNum)
	if err != nil {
		return err
	}
	m.StopLSN, m.BackupLabel, m.TablespaceMap = stopLSN, label, spcmap
	return nil
}

// dataDirOwner names the OS user owning dir ("" when unknown).
func dataDirOwner(dir string) string {
	st, err := os.Stat(dir)
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(sys.Uid), 10))
	if err != nil {
		return ""
	}
	return u.Username
}

// freshID claims an id for a new backup: later than every id in the
// repository (complete or not), so ids sort in the order backups were
// taken, and claimed with a conditional create of backups/<id>/claim, so
// two processes never share one (and a failed backup's cleanup, which
// removes its whole prefix, only ever removes its own objects).
func freshID(ctx context.Context, r *repo.Repo, typ Type) (string, error) {
	for {
		complete, incomplete, err := IDs(ctx, r)
		if err != nil {
			return "", err
		}
		newest := ""
		for _, ids := range [][]string{complete, incomplete} {
			if len(ids) > 0 && ids[len(ids)-1][:15] > newest {
				newest = ids[len(ids)-1][:15]
			}
		}
		if t, err := time.Parse("20060102T150405", newest); err == nil && time.Until(t) > time.Minute {
			return "", fmt.Errorf("the newest backup in %s, %s, started %s in the future by this host's clock: fix the clocks (backup ids must increase)",
				r, newest, time.Until(t).Round(time.Second))
		}
		id := newID(time.Now(), typ)
		if id[:15] > newest {
			_, err := r.PutIfAbsent(ctx, repo.BackupClaimKey(id), strings.NewReader(id))
			if err == nil {
				return id, nil
			}
			if !errors.Is(err, storage.ErrExist) {
				return "", fmt.Errorf("claim backup id %s in %s: %w", id, r, err)
			}
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Until(time.Now().Truncate(time.Second).Add(time.Second))):
		}
	}
}

func startBackup(ctx context.Context, conn *pgx.Conn, versionNum int, label string, fast bool) (pg.LSN, error) {
	q := "SELECT pg_backup_start($1, $2)::text"
	if versionNum < 150000 {
		q = "SELECT pg_start_backup($1, $2, false)::text"
	}
	var s string
	if err := conn.QueryRow(ctx, q, label, fast).Scan(&s); err != nil {
		return 0, pg.QueryError(ctx, "start the backup", err)
	}
	return pg.ParseLSN(s)
}

// stopBackup ends the backup without waiting for archiving: Push checks
// the repository itself, which also proves archive_command writes there.
func stopBackup(ctx context.Context, conn *pgx.Conn, versionNum int) (pg.LSN, string, string, error) {
	q := "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)"
	if versionNum < 150000 {
		q = "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, false)"
	}
	var lsn, label, spcmap string
	if err := conn.QueryRow(ctx, q).Scan(&lsn, &label, &spcmap); err != nil {
		return 0, "", "", pg.QueryError(ctx, "stop the backup", err)
	}
	l, err := pg.ParseLSN(lsn)
	return l, label, spcmap, err
}

func nameTablespaces(ctx context.Context, conn *pgx.Conn, ts []Tablespace) error {
	if len(ts) == 0 {
		return nil
	}
	rows, err := conn.Query(ctx, "SELECT oid::int8, spcname FROM pg_tablespace")
	if err != nil {
		return pg.QueryError(ctx, "list tablespaces", err)
	}
	names := map[uint32]string{}
	for rows.Next() {
		var oid int64
		var name string
		if err := rows.Scan(&oid, &name); err != nil {
			return pg.QueryError(ctx, "list tablespaces", err)
		}
		names[uint32(oid)] = name
	}
	if err := rows.Err(); err != nil {
		return pg.QueryError(ctx, "list tablespaces", err)
	}
	for i := range ts {
		ts[i].Name = names[ts[i].OID]
	}
	return nil
}

// waitForWAL polls the repository until every segment from the backup's
// start to its end is there.
func waitForWAL(ctx context.Context, r *repo.Repo, m *Manifest, segSize pg.WALSegmentSize, timeout time.Duration) error {
	first, _ := pg.ParseWALFileName(m.StartWAL, segSize)
	last, _ := pg.ParseWALFileName(m.StopWAL, segSize)
	deadline := time.Now().Add(timeout)
	wait := 100 * time.Millisecond
	next := first.SegNo
	for next <= last.SegNo {
		name := pg.SegmentName(m.Timeline, next, segSize)
		key, err := repo.WALKey(name, segSize)
		if err != nil {
			return err
		}
		_, err = r.Store().Stat(ctx, key)
		if err == nil {
			next++
			continue
		}
		if !errors.Is(err, storage.ErrNotExist) {
			return fmt.Errorf("look for %s in %s: %w", name, r, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s (of %s..%s) did not reach %s within %s: check that archive_command pushes to this repository and look for its errors in the server log; the backup was discarded",
				ErrWALMissing, name, m.StartWAL, m.StopWAL, r, timeout)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
	return nil
}

// removeIncomplete deletes what interrupted backups left (prefixes with no
// manifest). The caller holds the backup lease, so none of them is running.
func removeIncomplete(ctx context.Context, r *repo.Repo, log *slog.Logger) error {
	_, incomplete, err := IDs(ctx, r)
	if err != nil {
		return err
	}
	for _, id := range incomplete {
		log.Info("removing an interrupted backup's objects", "backup", id)
		if err := deletePrefix(ctx, r, repo.BackupPrefix(id)); err != nil {
			return fmt.Errorf("remove the interrupted backup %s: %w", id, err)
		}
	}
	return nil
}

// tempSkewMargin is how much older than the moment the backup lease was
// acquired a temporary object under backups/ must be to be removed: the
// store's clock (NFS) may run behind ours.
const tempSkewMargin = time.Minute

// sweepTemps removes the temporary objects killed writers left (kill -9 of
// a backup-push leaves its half-written data objects): a holder of the
// backup lease is the only writer under backups/, so anything older than
// its lease is dead. A failure only costs space: it is logged, not fatal.
func sweepTemps(ctx context.Context, r *repo.Repo, cutoff time.Time, log *slog.Logger) {
	sw, err := r.SweepTemps(ctx, cutoff, false)
	switch {
	case err != nil:
		log.Warn("could not remove temporary objects left by interrupted writers", "err", err)
	case sw.Objects > 0:
		log.Warn("removed temporary objects left by interrupted writers (a backup-push or archive-push killed mid-write)",
			"objects", sw.Objects, "bytes", sw.Bytes)
	}
}

// deletePrefix removes every object under prefix.
func deletePrefix(ctx context.Context, r *repo.Repo, prefix string) error {
	var keys []string
	if err := r.Store().List(ctx, prefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		return err
	}
	// The manifest goes first: a half-deleted backup must not look whole.
	for i, k := range keys {
		if strings.HasSuffix(k, "/manifest") {
			keys[0], keys[i] = keys[i], keys[0]
		}
	}
	for _, k := range keys {
		if err := r.Store().Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// ancestorParent returns "" when parent, a backup of another timeline, may
// be the parent of an incremental backup on tli: its timeline is an
// ancestor of tli (in tli's history file in the repository) and it ended
// before tli's history left that timeline, so every page changed since
// its start carries a later LSN. Otherwise it says why not.
func ancestorParent(ctx context.Context, r *repo.Repo, parent *Manifest, tli pg.TimeLineID, size pg.WALSegmentSize) string {
	if parent.Timeline > tli {
		return "the parent's timeline is newer"
	}
	key, err := repo.WALKey(pg.HistoryFileName(tli), size)
	if err != nil {
		return err.Error()
	}
	obj, err := r.Get(ctx, key)
	if err != nil {
		return fmt.Sprintf("timeline %d's history file: %v", tli, err)
	}
	defer obj.Close()
	entries, err := pg.ParseHistory(obj)
	if err == nil {
		err = pg.ValidateHistory(entries, tli)
	}
	if err != nil {
		return fmt.Sprintf("timeline %d's history file: %v", tli, err)
	}
	switchAt, ok := pg.SwitchPoint(entries, parent.Timeline)
	if !ok {
		return fmt.Sprintf("timeline %d is not an ancestor of timeline %d", parent.Timeline, tli)
	}
	if parent.StopLSN > switchAt {
		return fmt.Sprintf("the parent ends at %s, after timeline %d left timeline %d at %s", parent.StopLSN, tli, parent.Timeline, switchAt)
	}
	return ""
}

// cleanupTimeout bounds each clean-up step after a failed or finished
// backup (removing a failed backup's objects, giving the lease back): a
// store that stopped answering must not keep backup-push past its
// documented limit; what is left is removed by the next backup-push, and
// a lease not renewed goes stale.
const cleanupTimeout = 30 * time.Second

// releaseLease gives the lease back within cleanupTimeout, even when ctx
// was cancelled (SIGTERM).
func releaseLease(ctx context.Context, lease *repo.Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	lease.Release(rctx)
}
