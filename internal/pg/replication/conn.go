// Package replication speaks PostgreSQL's physical replication protocol
// (the walsender commands) for walferry: one connection type, the checks
// of the server behind it, physical slots, and BASE_BACKUP read into a
// Sink. Streaming itself (START_REPLICATION) is left to the caller, on
// PgConn.
//
// A caller that bootstraps a standby from a primary does, in order:
//
//	c, err := replication.ConnectString(ctx, connString) // (a) replication=true
//	defer c.Close(ctx)
//	sys, err := c.Identify(ctx)                            // (b) IDENTIFY_SYSTEM and settings
//	err = meta.Matches(repo.ClusterFromInfo(sys.Info, c.String()), where)
//	slot, created, err := c.CreatePhysicalSlot(ctx, "walferry") // (c) idempotent
//	err = c.BaseBackup(ctx, replication.BaseBackupOptions{WAL: true}, sink) // (d)
//
// Errors name the command and the server (never its password) and wrap
// what they come from: the server's *pgconn.PgError, a
// *pgconn.ConnectError, ErrProtocol for a message the protocol does not
// allow, errors.ErrUnsupported for a command the server is too old for
// (see MinMajor), fs.ErrExist for a slot name taken by a slot of another
// kind or a DirSink target that is not empty. The package declares no
// other error; matching a server with a repository is
// repo.Metadata.Matches's job, so the wrong cluster is
// repo.ErrWrongCluster everywhere.
//
// A Conn is not safe for concurrent use. After a failed command the
// connection may be mid-stream: close it.
package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/pg"
)

// MinMajor is the oldest PostgreSQL major version whose walsender
// understands BASE_BACKUP with an option list and READ_REPLICATION_SLOT:
// on an older server BaseBackup, ReadSlot and CreatePhysicalSlot fail with
// an error wrapping errors.ErrUnsupported. Connect, Identify and streaming
// work with older ones.
const MinMajor = 15

// ErrProtocol: the server sent something the protocol does not allow at
// that point.
var ErrProtocol = errors.New("unexpected replication protocol message")

// Conn is a physical replication connection (replication=true).
type Conn struct {
	pc   *pgconn.PgConn
	desc string
}

// Connect opens a physical replication connection to cfg, which it
// copies and sets replication=true on. A failure names the server (never
// the password); when the server refused, it adds what a replication user
// needs.
func Connect(ctx context.Context, cfg *pgconn.Config) (*Conn, error) {
	cfg = cfg.Copy()
	cfg.RuntimeParams["replication"] = "true"
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		err = pg.ConnectError(cfg, err)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, fmt.Errorf("%w (the user needs the REPLICATION attribute and a pg_hba.conf \"replication\" line)", err)
		}
		return nil, err
	}
	return &Conn{pc: pc, desc: pg.DescribeConfig(cfg)}, nil
}

// ConnectString is Connect for a libpq connection string or URL, parsed
// by pg.ParseConnConfig (libpq's environment fills what it leaves out;
// errors never contain a password).
func ConnectString(ctx context.Context, connString string) (*Conn, error) {
	cfg, err := pg.ParseConnConfig(connString)
	if err != nil {
		return nil, err
	}
	return Connect(ctx, &cfg.Config)
}

// String names the server for messages, as pg.DescribeConfig does.
func (c *Conn) String() string { return c.desc }

// PgConn is the underlying connection, for START_REPLICATION and its copy
// stream.
func (c *Conn) PgConn() *pgconn.PgConn { return c.pc }

// Close ends the connection; ctx bounds the goodbye to the server.
func (c *Conn) Close(ctx context.Context) error { return c.pc.Close(ctx) }

// System is who the server is: IDENTIFY_SYSTEM and the settings walferry
// checks.
type System struct {
	// Info's Timeline is the server's current timeline as IDENTIFY_SYSTEM
	// reports it (not the latest checkpoint's). InRecovery is the
	// in_hot_standby parameter; BlockSize is pg.PageSize (the only size
	// walferry supports).
	pg.Info
	// XLogPos is the server's current WAL flush position (a standby's:
	// its replay position).
	XLogPos pg.LSN
	// ArchiveMode is the archive_mode setting: off, on or always.
	ArchiveMode string
}

// Identify runs IDENTIFY_SYSTEM and reads the server's version, WAL
// segment size, data_checksums, wal_log_hints and archive_mode.
func (c *Conn) Identify(ctx context.Context) (System, error) {
	var s System
	isr, err := pglogrepl.IdentifySystem(ctx, c.pc)
	if err != nil {
		return System{}, fmt.Errorf("replication: IDENTIFY_SYSTEM on %s: %w", c.desc, err)
	}
	if s.SystemID, err = strconv.ParseUint(isr.SystemID, 10, 64); err != nil {
		return System{}, fmt.Errorf("replication: IDENTIFY_SYSTEM on %s: %w: system identifier %q", c.desc, ErrProtocol, isr.SystemID)
	}
	s.Timeline = pg.TimeLineID(isr.Timeline)
	s.XLogPos = pg.LSN(isr.XLogPos)
	settings := map[string]string{}
	for _, name := range []string{"server_version_num", "server_version", "wal_segment_size", "data_checksums", "wal_log_hints", "archive_mode"} {
		if settings[name], err = c.show(ctx, name); err != nil {
			return System{}, err
		}
	}
	s.Version = settings["server_version"]
	if s.VersionNum, err = strconv.Atoi(settings["server_version_num"]); err != nil {
		return System{}, fmt.Errorf("replication: %s: %w: server_version_num %q", c.desc, ErrProtocol, settings["server_version_num"])
	}
	s.Major = s.VersionNum / 10000
	if s.WALSegSize, err = pg.ParseSizeSetting(settings["wal_segment_size"]); err != nil {
		return System{}, fmt.Errorf("replication: %s: wal_segment_size: %w", c.desc, err)
	}
	s.DataChecksums = settings["data_checksums"] == "on"
	s.WALLogHints = settings["wal_log_hints"] == "on"
	s.ArchiveMode = settings["archive_mode"]
	s.BlockSize = pg.PageSize
	s.InRecovery = c.pc.ParameterStatus("in_hot_standby") == "on"
	return s, nil
}

// require fails with an error wrapping errors.ErrUnsupported when the
// server is older than MinMajor, which command needs.
func (c *Conn) require(command string) error {
	v := c.pc.ParameterStatus("server_version")
	major := 0
	for i := 0; i < len(v) && '0' <= v[i] && v[i] <= '9'; i++ {
		major = major*10 + int(v[i]-'0')
	}
	if major < MinMajor {
		return fmt.Errorf("replication: %s needs PostgreSQL %d or later, but %s runs %q: %w",
			command, MinMajor, c.desc, v, errors.ErrUnsupported)
	}
	return nil
}

// show returns a setting's value (SHOW name).
func (c *Conn) show(ctx context.Context, name string) (string, error) {
	row, err := c.queryRow(ctx, "SHOW "+name, 1)
	if err != nil {
		return "", err
	}
	return string(row[0]), nil
}

// queryRow runs a command that answers one row of at least cols columns.
func (c *Conn) queryRow(ctx context.Context, sql string, cols int) ([][]byte, error) {
	res, err := c.pc.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("replication: %s on %s: %w", sql, c.desc, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < cols {
		return nil, fmt.Errorf("replication: %s on %s: %w: not one row of %d columns", sql, c.desc, ErrProtocol, cols)
	}
	return res[0].Rows[0], nil
}
