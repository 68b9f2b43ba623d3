// Package role changes which server is the primary of a cluster lineage:
// a planned switchover (Demote on the old primary, then Promote on a
// standby that replayed exactly what the old primary wrote), a failover
// (Promote with Force while the old primary is unreachable), and the return
// of an old primary as a standby (Rejoin: nothing to copy after a demote,
// pg_rewind after a failover, a delta restore when rewinding cannot work).
//
// The repository's lineage record (internal/repo, lineage.go) is the one
// arbiter: every role change takes the next generation with a conditional
// create, so of two promotions racing exactly one wins, and the writers
// (archive-push, wal-receive, backup-push) refuse a server the record does
// not name. The order of each step is what makes it safe:
//   - Demote archives everything the old primary wrote (its last segment as
//     a .partial) before it records the switchover, so the token it
//     publishes points at WAL the repository already holds;
//   - a failover records its generation (which fences the old primary)
//     before it promotes, so the old primary's later WAL is refused;
//   - Promote records the new timeline right after pg_promote, then
//     archives the history file and starts a backup.
//
// Nothing here knows Kubernetes: PostgreSQL is stopped by signalling the
// postmaster named in postmaster.pid (which works on a VM and in a pod whose
// containers share the process namespace) and started with pg_ctl.
package role

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// Server is the local PostgreSQL instance a role change acts on.
type Server struct {
	// DataDir is the data directory (absolute).
	DataDir string
	// ConfigFile is postgresql.conf when it is not in DataDir.
	ConfigFile string
	// Conn is the libpq connection string of the local server ("":
	// libpq's PG* environment).
	Conn string
	// PGBin is the directory of pg_ctl and pg_rewind ("": found in PATH).
	PGBin string
	// LogFile is where a server started by walferry logs (pg_ctl -l);
	// "" leaves its output on walferry's.
	LogFile string
}

// Instance names a server in the lineage record.
type Instance struct {
	Name string
	Site string
}

func (i Instance) String() string {
	if i.Site == "" {
		return i.Name
	}
	return i.Site + "/" + i.Name
}

func (i Instance) is(g repo.Generation) bool { return g.Instance == i.Name && g.Site == i.Site }

// Refusals: each says why nothing (more) was done.
var (
	// ErrNotPrimary: demote on a server the lineage record does not name
	// as primary.
	ErrNotPrimary = failure.New(failure.Fenced, "not the lineage record's primary")
	// ErrNoToken: promote without a switchover token and without --force.
	ErrNoToken = failure.New(failure.Usage, "no switchover token")
	// ErrBehind: the standby did not replay up to the token in time.
	ErrBehind = failure.New(failure.Transient, "the standby has not replayed up to the switchover token")
	// ErrAhead: the standby replayed past the token (WAL the old primary
	// never wrote): promoting it would lose nothing of A's but diverge.
	ErrAhead = failure.New(failure.Conflict, "the standby is ahead of the switchover token")
	// ErrNotStandby: promote of a server that is not in recovery.
	ErrNotStandby = failure.New(failure.Postgres, "not a standby")
)

func (s Server) bin(name string) string {
	if s.PGBin == "" {
		return name
	}
	return filepath.Join(s.PGBin, name)
}

func (s Server) walDir() string { return filepath.Join(s.DataDir, "pg_wal") }

// controlData reads the data directory's control file, its failure
// classified as PostgreSQL's.
func (s Server) controlData() (*pg.ControlData, error) {
	cd, err := pg.ReadControlData(s.DataDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, failure.Wrap(failure.Postgres, fmt.Errorf("%s is not a PostgreSQL data directory (%v): fix --pgdata / PGDATA", s.DataDir, err))
		}
		return nil, failure.Wrap(failure.Postgres, fmt.Errorf("read the control file of %s: %w", s.DataDir, err))
	}
	return cd, nil
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.With("component", "role")
}

// ctxErr prefers the context's error (interrupted) to what it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}
