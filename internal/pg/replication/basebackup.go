package replication

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/walferry/walferry/internal/pg"
)

// BaseBackupOptions choose what BASE_BACKUP sends. Whatever they say, the
// server does not wait for WAL archiving (WAIT false: callers check their
// repository themselves), does not verify checksums (VERIFY_CHECKSUMS
// false: callers report damage instead of failing), reports sizes
// (PROGRESS), and writes tablespace_map (TABLESPACE_MAP: the stream holds
// no pg_tblspc links; Start lists the tablespaces).
type BaseBackupOptions struct {
	// Label is backup_label's LABEL; empty means "walferry".
	Label string
	// Fast asks for an immediate checkpoint instead of a spread one.
	Fast bool
	// WAL adds the WAL from the backup's start to its end under pg_wal/ in
	// the data directory's archive, so the copy starts without an archive.
	// The server must keep that WAL meanwhile (a slot or wal_keep_size).
	WAL bool
	// Compression is the server-side compression of the archives: lz4,
	// zstd, gzip, or "" / "none". BaseBackup decodes it.
	Compression string
	// Manifest asks for the server's backup_manifest, given to the sink's
	// Manifest method (the sink must be a ManifestSink).
	Manifest bool
}

// Validate checks the options without I/O.
func (o BaseBackupOptions) Validate() error {
	switch o.Compression {
	case "", "none", "lz4", "zstd", "gzip":
		return nil
	}
	return fmt.Errorf("server compression %q: want lz4, zstd, gzip or none", o.Compression)
}

// command builds PostgreSQL 15's BASE_BACKUP.
func (o BaseBackupOptions) command() (string, error) {
	if err := o.Validate(); err != nil {
		return "", err
	}
	label := o.Label
	if label == "" {
		label = "walferry"
	}
	opts := []string{"LABEL '" + strings.ReplaceAll(label, "'", "''") + "'", "PROGRESS", "WAIT false",
		"TABLESPACE_MAP", "VERIFY_CHECKSUMS false"}
	if o.Manifest {
		opts = append(opts, "MANIFEST 'yes'")
	} else {
		opts = append(opts, "MANIFEST 'no'")
	}
	if o.Fast {
		opts = append(opts, "CHECKPOINT 'fast'")
	}
	if o.WAL {
		opts = append(opts, "WAL")
	}
	if o.Compression != "" && o.Compression != "none" {
		opts = append(opts, "COMPRESSION '"+o.Compression+"'")
	}
	return "BASE_BACKUP (" + strings.Join(opts, ", ") + ")", nil
}

// Sink receives a base backup as BaseBackup reads it. Its methods are
// called one at a time, each after the previous one returned (from
// BaseBackup's goroutine or a reader goroutine of its own: a sink needs no
// locking), in the order of the stream: Begin once; the members of every archive with Dir, File
// and Symlink (the tablespaces' archives first, the data directory's last:
// the server's order, which a sink should not rely on); Manifest, when
// asked for; End once, after the server confirmed the backup's end.
//
// An error from a method ends the backup: BaseBackup returns it as it is
// and calls nothing more. When BaseBackup fails, End is never called:
// what the sink received is incomplete, and cleaning it up is the sink's
// and its caller's business.
//
// Names are slash-separated, relative to the data directory, and local
// (never empty, absolute or climbing out with ".."); a tablespace's members
// are named under pg_tblspc/<oid>/, as seen through the data directory's
// link. backup_label and tablespace_map are not members: End carries them.
type Sink interface {
	// Begin: the server started the backup.
	Begin(ctx context.Context, s Start) error
	// Dir is a directory. Its parents came before it.
	Dir(ctx context.Context, e Entry) error
	// File is a regular file of e.Size bytes, read from r. Returning before
	// the end of r without an error skips the rest.
	File(ctx context.Context, e Entry, r io.Reader) error
	// Symlink is a symbolic link to e.Target (a pg_wal link arrives as a
	// directory instead: the WAL is not where it pointed).
	Symlink(ctx context.Context, e Entry) error
	// End: the backup is complete.
	End(ctx context.Context, s Stop) error
}

// ManifestSink is a Sink that takes the server's backup_manifest
// (BaseBackupOptions.Manifest), after every archive.
type ManifestSink interface {
	Sink
	Manifest(ctx context.Context, r io.Reader) error
}

// Start is the beginning of a base backup.
type Start struct {
	// LSN is where the backup starts: replay begins at its checkpoint.
	LSN      pg.LSN
	Timeline pg.TimeLineID
	// Tablespaces are the tablespaces outside the data directory.
	Tablespaces []Tablespace
	// Size is the server's estimate of the bytes to come (all archives).
	Size int64
}

// Tablespace is a tablespace outside the data directory.
type Tablespace struct {
	OID uint32
	// Location is the tablespace's directory on the server.
	Location string
	// Size is the server's estimate of its bytes.
	Size int64
}

// Entry is a member of the backup.
type Entry struct {
	Name    string
	Mode    fs.FileMode // permission bits
	Size    int64       // File: the bytes its reader yields
	ModTime time.Time
	Target  string // Symlink: where it points
}

// Stop is the end of a base backup.
type Stop struct {
	// LSN is where the backup ends: a copy is consistent once WAL up to it
	// is replayed.
	LSN      pg.LSN
	Timeline pg.TimeLineID
	// BackupLabel and TablespaceMap are the files a copy needs in its data
	// directory; TablespaceMap is empty without tablespaces.
	BackupLabel   string
	TablespaceMap string
}

// BaseBackup takes a base backup with PostgreSQL 15's BASE_BACKUP and
// feeds it to sink as it arrives: server-side compression decoded, tar
// archives parsed, nothing held in memory beyond one message. The
// connection must be idle; after an error it may be mid-stream: close it,
// which also makes the server abort the backup (cancelling ctx ends only
// the reading).
func (c *Conn) BaseBackup(ctx context.Context, o BaseBackupOptions, sink Sink) error {
	cmd, err := o.command()
	if err != nil {
		return fmt.Errorf("replication: %w", err)
	}
	if err := c.require("BASE_BACKUP"); err != nil {
		return err
	}
	var ms ManifestSink
	if o.Manifest {
		var ok bool
		if ms, ok = sink.(ManifestSink); !ok {
			return fmt.Errorf("replication: BASE_BACKUP: a manifest was asked for, but the sink (%T) takes none", sink)
		}
	}
	err = c.baseBackup(ctx, cmd, o.Compression, sink, ms)
	var se sinkError
	if errors.As(err, &se) {
		return se.err
	}
	if err != nil {
		return fmt.Errorf("replication: BASE_BACKUP from %s: %w", c.desc, err)
	}
	return nil
}

// sinkError carries a sink's error through the reader unchanged.
type sinkError struct{ err error }

func (e sinkError) Error() string { return e.err.Error() }
func (e sinkError) Unwrap() error { return e.err }

func (c *Conn) baseBackup(ctx context.Context, cmd, compression string, sink Sink, ms ManifestSink) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.pc.Frontend().SendQuery(&pgproto3.Query{String: cmd})
	if err := c.pc.Frontend().Flush(); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	start, tli, err := c.readPosition(ctx)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	st := Start{LSN: start, Timeline: tli}
	rows, err := c.readResultSet(ctx)
	if err != nil {
		return fmt.Errorf("tablespaces: %w", err)
	}
	for _, row := range rows {
		if len(row) != 3 {
			return fmt.Errorf("%w: tablespace row of %d columns", ErrProtocol, len(row))
		}
		var size int64
		if row[2] != nil {
			kb, err := strconv.ParseInt(string(row[2]), 10, 64)
			if err != nil {
				return fmt.Errorf("%w: tablespace size %q", ErrProtocol, row[2])
			}
			size = kb << 10
		}
		st.Size += size
		// The data directory's row has no OID.
		if row[0] != nil {
			oid, err := strconv.ParseUint(string(row[0]), 10, 32)
			if err != nil {
				return fmt.Errorf("%w: tablespace OID %q", ErrProtocol, row[0])
			}
			st.Tablespaces = append(st.Tablespaces, Tablespace{OID: uint32(oid), Location: string(row[1]), Size: size})
		}
	}
	if err := sink.Begin(ctx, st); err != nil {
		return sinkError{err}
	}
	if compression == "none" {
		compression = ""
	}
	rd := &archiveReader{ctx: ctx, cancel: cancel, sink: sink, manifest: ms, compression: compression}
	if err := c.stream(ctx, rd); err != nil {
		return err
	}
	stop, stopTLI, err := c.readPosition(ctx)
	if err != nil {
		return fmt.Errorf("end: %w", err)
	}
	if err := c.finish(ctx); err != nil {
		return err
	}
	if rd.label == "" {
		return fmt.Errorf("%w: the stream had no backup_label", ErrProtocol)
	}
	if err := sink.End(ctx, Stop{LSN: stop, Timeline: stopTLI, BackupLabel: rd.label, TablespaceMap: rd.spcmap}); err != nil {
		return sinkError{err}
	}
	return nil
}

// stream reads the CopyOut part: archives ('n'), the manifest ('m'), their
// data ('d'), progress ('p'), until CopyDone.
func (c *Conn) stream(ctx context.Context, rd *archiveReader) error {
	msg, err := c.receive(ctx)
	if err != nil {
		return err
	}
	if _, ok := msg.(*pgproto3.CopyOutResponse); !ok {
		return fmt.Errorf("%w: %T instead of CopyOutResponse", ErrProtocol, msg)
	}
	for {
		msg, err := c.receive(ctx)
		if err != nil {
			rd.close(err)
			return err
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyDone:
			return rd.close(nil)
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			var err error
			switch msg.Data[0] {
			case 'n':
				parts := bytes.Split(msg.Data[1:], []byte{0})
				if len(parts) < 2 {
					err = fmt.Errorf("%w: malformed new-archive message", ErrProtocol)
					break
				}
				if err = rd.close(nil); err == nil {
					err = rd.openArchive(string(parts[0]), string(parts[1]))
				}
			case 'm':
				if err = rd.close(nil); err == nil {
					err = rd.openManifest()
				}
			case 'd':
				err = rd.write(msg.Data[1:])
			case 'p': // progress: sinks count what they read
			default:
				err = fmt.Errorf("%w: CopyData type %q", ErrProtocol, msg.Data[0])
			}
			if err != nil {
				rd.close(err)
				return err
			}
		default:
			err := fmt.Errorf("%w: %T during the copy", ErrProtocol, msg)
			rd.close(err)
			return err
		}
	}
}

// receive returns the next message, skipping notices; an ErrorResponse
// becomes its *pgconn.PgError. When the reader failed, its error.
func (c *Conn) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	for {
		msg, err := c.pc.ReceiveMessage(ctx)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil {
				return nil, cause
			}
			return nil, err
		}
		switch msg := msg.(type) {
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
			continue
		case *pgproto3.ErrorResponse:
			return nil, pgconn.ErrorResponseToPgError(msg)
		default:
			return msg, nil
		}
	}
}

// readResultSet reads one result set up to its CommandComplete.
func (c *Conn) readResultSet(ctx context.Context) ([][][]byte, error) {
	var rows [][][]byte
	for {
		msg, err := c.receive(ctx)
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
func (c *Conn) readPosition(ctx context.Context) (pg.LSN, pg.TimeLineID, error) {
	rows, err := c.readResultSet(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(rows) != 1 || len(rows[0]) != 2 {
		return 0, 0, fmt.Errorf("%w: position result set of %d rows", ErrProtocol, len(rows))
	}
	lsn, err := pg.ParseLSN(string(rows[0][0]))
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	tli, err := strconv.ParseUint(string(rows[0][1]), 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: timeline %q", ErrProtocol, rows[0][1])
	}
	return lsn, pg.TimeLineID(tli), nil
}

// finish reads the end of the command: CommandComplete, ReadyForQuery.
func (c *Conn) finish(ctx context.Context) error {
	for {
		msg, err := c.receive(ctx)
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

// archiveReader turns the archives' bytes into sink calls: the receiving
// loop writes each archive into a pipe that one goroutine at a time reads.
type archiveReader struct {
	ctx         context.Context
	cancel      context.CancelCauseFunc
	sink        Sink
	manifest    ManifestSink
	compression string

	pw   *io.PipeWriter // the current archive's bytes
	done chan error
	// Read from the data directory's archive; valid once it is closed.
	label, spcmap string
}

// openArchive starts reading a new archive.
func (rd *archiveReader) openArchive(name, location string) error {
	prefix := ""
	if location != "" {
		mt := tablespaceArchive.FindStringSubmatch(name)
		if mt == nil {
			return fmt.Errorf("%w: tablespace archive named %q", ErrProtocol, name)
		}
		prefix = "pg_tblspc/" + mt[1] + "/"
	}
	rd.run(func(r io.Reader) error { return rd.readArchive(r, prefix) })
	return nil
}

// openManifest starts reading the backup manifest.
func (rd *archiveReader) openManifest() error {
	if rd.manifest == nil {
		return fmt.Errorf("%w: a backup manifest was sent though none was asked for", ErrProtocol)
	}
	rd.run(func(r io.Reader) error {
		if err := rd.manifest.Manifest(rd.ctx, r); err != nil {
			return sinkError{err}
		}
		_, err := io.Copy(io.Discard, r)
		return err
	})
	return nil
}

// run starts read on a new pipe; its failure cancels the backup.
func (rd *archiveReader) run(read func(io.Reader) error) {
	pr, pw := io.Pipe()
	rd.pw, rd.done = pw, make(chan error, 1)
	go func() {
		err := read(pr)
		if err != nil {
			rd.cancel(err)
		}
		pr.CloseWithError(err)
		rd.done <- err
	}()
}

func (rd *archiveReader) write(b []byte) error {
	if rd.pw == nil {
		return fmt.Errorf("%w: data before any archive", ErrProtocol)
	}
	if _, err := rd.pw.Write(b); err != nil {
		if cause := context.Cause(rd.ctx); cause != nil {
			return cause
		}
		return err
	}
	return nil
}

// close ends the current archive or manifest (if any) and waits until it
// is fully read; cause non-nil aborts it.
func (rd *archiveReader) close(cause error) error {
	if rd.pw == nil {
		return nil
	}
	rd.pw.CloseWithError(cause)
	rd.pw = nil
	if err := <-rd.done; err != nil {
		return err
	}
	return cause
}

// readArchive reads one tar archive, decompressing it when the server
// compressed it, and hands its members to the sink.
func (rd *archiveReader) readArchive(r io.Reader, prefix string) error {
	switch rd.compression {
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
			_, err = io.Copy(io.Discard, r) // the tar trailer's padding
			return err
		}
		if err != nil {
			return fmt.Errorf("read the archive: %w", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if name == "" || name == "." {
			continue
		}
		if !fs.ValidPath(name) {
			return fmt.Errorf("%w: archive member %q", ErrProtocol, hdr.Name)
		}
		e := Entry{Name: prefix + name, Mode: fs.FileMode(hdr.Mode).Perm(), Size: hdr.Size, ModTime: hdr.ModTime, Target: hdr.Linkname}
		if err := rd.member(tr, hdr.Typeflag, e, prefix == ""); err != nil {
			return err
		}
	}
}

// member hands one archive member to the sink; backup_label and
// tablespace_map of the data directory are kept for End.
func (rd *archiveReader) member(tr io.Reader, typ byte, e Entry, dataDir bool) error {
	var err error
	switch typ {
	case tar.TypeDir:
		err = rd.sink.Dir(rd.ctx, e)
	case tar.TypeSymlink:
		if e.Name == "pg_wal" {
			err = rd.sink.Dir(rd.ctx, Entry{Name: e.Name, Mode: 0o700, ModTime: e.ModTime})
		} else {
			err = rd.sink.Symlink(rd.ctx, e)
		}
	case tar.TypeReg:
		if dataDir && (e.Name == "backup_label" || e.Name == "tablespace_map") {
			b, rerr := io.ReadAll(io.LimitReader(tr, 1<<20))
			if rerr != nil {
				return fmt.Errorf("read %s: %w", e.Name, rerr)
			}
			if e.Name == "backup_label" {
				rd.label = string(b)
			} else {
				rd.spcmap = string(b)
			}
			return nil
		}
		err = rd.sink.File(rd.ctx, e, tr)
	}
	if err != nil {
		return sinkError{err}
	}
	return nil
}
