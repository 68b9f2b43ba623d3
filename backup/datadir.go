package backup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/pg"
)

// A local backup reads files from a directory while the server it is
// connected to guarantees, through pg_backup_start/stop and its WAL, that
// those files can be made consistent. That only holds for the server's own
// data directory: a stopped copy of the same cluster (an old restore, a
// standby's directory) has the same system identifier, yields a backup that
// looks complete, and restores to old data or to nothing PostgreSQL can
// start. So the directory must prove it is the running server's, the way
// pgBackRest checks pg1-path against the server:
//   - its postmaster.pid names the server's data_directory, port and start
//     time (a stopped copy has none, or a stale one);
//   - its control file says "in production" with the checkpoint the server
//     reports through pg_control_checkpoint().
//
// The paths themselves are compared too (symlinks and bind mounts resolved
// as far as this host sees them), but only to explain a refusal: in a pod
// the sidecar may mount the volume under another path than the server's.

// pidFileStartSlack is how much earlier than pg_postmaster_start_time() the
// postmaster may write its start time into postmaster.pid: it does so
// before loading libraries and creating shared memory.
const pidFileStartSlack = 10 * time.Minute

// serverSelf is what the connected server says about where it runs.
type serverSelf struct {
	dataDir string // data_directory; "" when this role may not read it
	port    int
	started time.Time // pg_postmaster_start_time()
}

// checkDataDir finds the data directory (dir, or the server's
// data_directory when dir is empty) and makes sure it is the connected
// server's, returning its absolute path.
func checkDataDir(ctx context.Context, conn *pgx.Conn, dir string, info pg.Info) (string, error) {
	self, err := askServerSelf(ctx, conn)
	if err != nil {
		return "", err
	}
	if dir == "" {
		if self.dataDir == "" {
			return "", fmt.Errorf("%w: the server does not tell this role its data directory (data_directory needs superuser or pg_read_all_settings); pass --pgdata", ErrNotReady)
		}
		dir = self.dataDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	cd, err := pg.ReadControlData(abs)
	if err != nil {
		return "", fmt.Errorf("%w: read the control file of %s: %v; local backups read the data directory, so run backup-push where it is mounted (or use --remote)", ErrNotReady, abs, err)
	}
	if cd.SystemIdentifier != info.SystemID {
		return "", fmt.Errorf("%w: %s belongs to system %d but the server is system %d: --pgdata and the connection point at different clusters",
			ErrNotReady, abs, cd.SystemIdentifier, info.SystemID)
	}
	refuse := func(why string) error {
		return fmt.Errorf("%w: %s is not the data directory of the server backup-push is connected to (its data_directory is %s): %s; "+
			"a backup read from it would lack the server's newest data. Pass the running server's data directory as --pgdata (or omit --pgdata on the database host), or use --remote",
			ErrNotReady, abs, describeServerDir(abs, self.dataDir), why)
	}
	pf, err := pg.ReadPIDFile(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", refuse("it has no postmaster.pid, so no server runs on it (a stopped copy of the cluster: an old restore, a standby's directory?)")
	case err != nil:
		return "", refuse(err.Error())
	}
	if why := mismatch(pf, self); why != "" {
		return "", refuse(why)
	}
	if err := checkControlMatches(ctx, conn, abs, cd); err != nil {
		if errors.Is(err, ErrNotReady) {
			return "", err
		}
		return "", refuse(err.Error())
	}
	return abs, nil
}

// describeServerDir names the server's data directory for a message, and
// whether it is the same directory as dir seen from here.
func describeServerDir(dir, serverDir string) string {
	if serverDir == "" {
		return "not readable by this role"
	}
	if sameDir(dir, serverDir) {
		return serverDir + ", the same directory seen from here"
	}
	return serverDir
}

// sameDir reports whether a and b are one directory on this host, through
// symlinks and bind mounts (same device and inode).
func sameDir(a, b string) bool {
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	if errA == nil && errB == nil && ra == rb {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

func askServerSelf(ctx context.Context, conn *pgx.Conn) (serverSelf, error) {
	var s serverSelf
	var port string
	var started float64
	if err := conn.QueryRow(ctx, "SELECT current_setting('port'), extract(epoch FROM pg_postmaster_start_time())::float8").Scan(&port, &started); err != nil {
		return s, pg.QueryError(ctx, "read port and start time", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return s, fmt.Errorf("pg: port %q: %w", port, err)
	}
	s.port = p
	sec, frac := math.Modf(started)
	s.started = time.Unix(int64(sec), int64(frac*1e9))
	// data_directory is readable only by superusers and members of
	// pg_read_all_settings; the other checks stand without it.
	if err := conn.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&s.dataDir); err != nil {
		s.dataDir = ""
	}
	return s, nil
}

// mismatch says why the postmaster that wrote pf is not the server s, or
// "" when it may be.
func mismatch(pf pg.PIDFile, s serverSelf) string {
	if pf.Port != s.port {
		return fmt.Sprintf("its postmaster.pid is of a server on port %d (pid %d), but the connected server listens on port %d", pf.Port, pf.PID, s.port)
	}
	if s.dataDir != "" && pf.DataDir != s.dataDir {
		return fmt.Sprintf("its postmaster.pid is of a server whose data directory is %s (pid %d)", pf.DataDir, pf.PID)
	}
	started := s.started.Truncate(time.Second)
	if pf.Started.After(started.Add(time.Second)) || pf.Started.Before(started.Add(-pidFileStartSlack)) {
		return fmt.Sprintf("its postmaster.pid is of a server started at %s (pid %d), but the connected server started at %s (a stale file left by a server that is gone?)",
			pf.Started.UTC().Format(time.RFC3339), pf.PID, s.started.UTC().Format(time.RFC3339))
	}
	return ""
}

// checkControlMatches compares the control file of dir (cd, just read) with
// the connected server's: a primary's says "in production" and holds the
// checkpoint pg_control_checkpoint() reports. A checkpoint may complete
// between the two reads, so a difference is read again once.
func checkControlMatches(ctx context.Context, conn *pgx.Conn, dir string, cd *pg.ControlData) error {
	for attempt := 0; ; attempt++ {
		var s string
		if err := conn.QueryRow(ctx, "SELECT checkpoint_lsn::text FROM pg_control_checkpoint()").Scan(&s); err != nil {
			return fmt.Errorf("%w: pg: read pg_control_checkpoint(): %v", ErrNotReady, err)
		}
		server, err := pg.ParseLSN(s)
		if err != nil {
			return fmt.Errorf("%w: pg: pg_control_checkpoint() checkpoint_lsn %q: %v", ErrNotReady, s, err)
		}
		if cd.State == pg.DBInProduction && cd.CheckpointLSN == server {
			return nil
		}
		if attempt == 1 {
			if cd.State != pg.DBInProduction {
				return fmt.Errorf("its control file says %q, but the connected server is a running primary (\"in production\")", cd.State)
			}
			return fmt.Errorf("its control file's latest checkpoint is at %s, but the connected server's is at %s", cd.CheckpointLSN, server)
		}
		if cd, err = pg.ReadControlData(dir); err != nil {
			return fmt.Errorf("%w: read the control file of %s: %v", ErrNotReady, dir, err)
		}
	}
}
