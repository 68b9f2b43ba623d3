package role

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/restore"
)

// RejoinOptions describe the return of an old primary as a standby.
type RejoinOptions struct {
	Server   Server
	Instance Instance
	Repos    []*repo.Repo
	// Standby is how the server follows the new primary; its SourceConn
	// is also pg_rewind's source (a superuser, or a user granted
	// pg_read_binary_file and friends).
	Standby Standby
	// NoRewind goes straight to the delta restore.
	NoRewind bool
	// Restart starts the server as a standby once rejoined.
	Restart bool
	// StopTimeout bounds stopping a still-running old primary (0: 5 minutes).
	StopTimeout time.Duration
	Log         *slog.Logger
}

// Rejoin methods, cheapest first.
const (
	// MethodStandby: the server never went past where the new primary's
	// timeline forked (a demote): nothing to copy.
	MethodStandby = "standby"
	// MethodRewind: pg_rewind copied what changed since the fork.
	MethodRewind = "rewind"
	// MethodDelta: a delta restore from the newest backup.
	MethodDelta = "delta"
)

// RejoinResult reports a rejoin.
type RejoinResult struct {
	Method string `json:"method"`
	// Why says why this method (and why not a cheaper one).
	Why string `json:"why"`
	// BytesCopied is what was written into the data directory
	// (pg_rewind's count, or the delta restore's fetched bytes);
	// DataDirBytes the data directory's size afterwards.
	BytesCopied  int64  `json:"bytes_copied"`
	DataDirBytes int64  `json:"data_dir_bytes"`
	Backup       string `json:"backup,omitempty"`
	// RewindError is why pg_rewind failed when it was tried.
	RewindError string        `json:"rewind_error,omitempty"`
	Stopped     bool          `json:"stopped"`
	Restarted   bool          `json:"restarted"`
	Duration    time.Duration `json:"duration_ns"`
}

// Rejoin turns an old primary into a standby of the lineage record's
// primary, copying as little as possible: nothing when its WAL ends at or
// before the new timeline's fork point (after a demote), what pg_rewind
// finds changed since the fork otherwise, and a delta restore from the
// newest backup when rewinding cannot work (neither wal_log_hints nor data
// checksums, or the WAL since the fork is gone).
func Rejoin(ctx context.Context, o RejoinOptions) (RejoinResult, error) {
	log := logger(o.Log)
	start := time.Now()
	var res RejoinResult
	if len(o.Repos) == 0 {
		return res, failure.New(failure.Usage, "rejoin: no repository configured: pass --repo")
	}
	rec := record{o.Repos}
	g, ok, err := rec.current(ctx)
	if err != nil {
		return res, err
	}
	if ok && o.Instance.is(g) && g.FencedAt == pg.InvalidLSN {
		return res, failure.New(failure.Usage, fmt.Sprintf("rejoin: the lineage record's %s names this server (%s) as the primary: "+
			"rejoin runs on an old primary; demote this one first (walferry demote) or promote the standby", g, o.Instance))
	}
	origin := fmt.Sprintf("walferry rejoin at %s", time.Now().UTC().Format(time.RFC3339))
	if _, running, err := pg.PostmasterRunning(o.Server.DataDir); err != nil {
		return res, err
	} else if running {
		if inRecovery(ctx, o.Server.Conn) {
			// Demoted and restarted: it follows already.
			if err := writeStandby(o.Server, o.Standby, origin); err != nil {
				return res, err
			}
			if err := reload(ctx, o.Server.Conn); err != nil {
				return res, err
			}
			res.Method, res.Why = MethodStandby, "the server runs as a standby already (demoted): its settings were refreshed, nothing copied"
			res.DataDirBytes = dirSize(o.Server.DataDir)
			res.Duration = time.Since(start)
			return res, nil
		}
		timeout := o.StopTimeout
		if timeout <= 0 {
			timeout = 5 * time.Minute
		}
		log.Info("stopping the old primary (fast shutdown)")
		if res.Stopped, err = stopServer(ctx, o.Server.DataDir, timeout); err != nil {
			return res, err
		}
	}
	cd, err := o.Server.controlData()
	if err != nil {
		return res, err
	}
	res.Method, res.Why, err = choose(ctx, o, g, ok, cd)
	if err != nil {
		return res, err
	}
	log.Info("rejoining", "method", res.Method, "why", res.Why)
	if res.Method == MethodRewind {
		copied, rerr := rewind(ctx, o, origin)
		if rerr == nil {
			res.BytesCopied = copied
		} else {
			log.Warn("pg_rewind failed; falling back to a delta restore", "err", rerr)
			res.RewindError = rerr.Error()
			res.Method, res.Why = MethodDelta, "pg_rewind failed: "+rerr.Error()
		}
	}
	if res.Method == MethodDelta {
		rr, err := restore.Run(ctx, o.Repos[0], restore.Options{
			Backup: backup.Latest, DataDir: o.Server.DataDir, Delta: true, Standby: true,
			RestoreCommand: o.Standby.RestoreCommand, ConfigFile: o.Server.ConfigFile, Log: o.Log,
		})
		if err != nil {
			return res, fmt.Errorf("rejoin: delta restore: %w", err)
		}
		res.BytesCopied, res.Backup = rr.BytesFetched, rr.Backup
	}
	if err := writeStandby(o.Server, o.Standby, origin); err != nil {
		return res, err
	}
	res.DataDirBytes = dirSize(o.Server.DataDir)
	if o.Restart {
		if err := startServer(ctx, o.Server, 5*time.Minute); err != nil {
			return res, err
		}
		res.Restarted = true
	}
	res.Duration = time.Since(start)
	return res, nil
}

// choose decides how the stopped server rejoins.
func choose(ctx context.Context, o RejoinOptions, g repo.Generation, ok bool, cd *pg.ControlData) (method, why string, err error) {
	if o.NoRewind {
		return MethodDelta, "--no-rewind", nil
	}
	canRewind := cd.DataChecksums() || cd.WALLogHints
	rewindOrDelta := func(why string) (string, string, error) {
		if !canRewind {
			return MethodDelta, why + "; pg_rewind needs wal_log_hints = on or data checksums, which this cluster has neither of", nil
		}
		if o.Standby.SourceConn == "" {
			return "", "", failure.New(failure.Usage, "rejoin: "+why+": pg_rewind needs the new primary: pass --source-conn (or --no-rewind for a delta restore)")
		}
		return MethodRewind, why, nil
	}
	if !ok {
		return rewindOrDelta("the lineage record names no primary, so the fork point is unknown")
	}
	if cd.State != pg.DBShutdowned && cd.State != pg.DBShutdownedInRecovery {
		return rewindOrDelta(fmt.Sprintf("the server was not shut down cleanly (%s): its WAL may go past the fork", cd.State))
	}
	size, err := cd.SegmentSize()
	if err != nil {
		return "", "", failure.Wrap(failure.Postgres, err)
	}
	end, err := recordEnd(o.Server.walDir(), cd.TimeLineID, cd.CheckpointLSN, size, cd.WALBlockSize)
	if err != nil {
		return rewindOrDelta(fmt.Sprintf("its end of WAL cannot be read (%v)", err))
	}
	if g.Timeline == cd.TimeLineID {
		if g.FencedAt != pg.InvalidLSN && end <= g.FencedAt {
			return MethodStandby, fmt.Sprintf("its WAL ends at %s, where the record's %s fenced timeline %d: nothing to copy", end, g, g.Timeline), nil
		}
		return rewindOrDelta(fmt.Sprintf("its WAL ends at %s, past where the record's %s fenced it", end, g))
	}
	hist, err := historyFromRepo(ctx, o.Repos[0], g.Timeline, size)
	if err != nil {
		return rewindOrDelta(fmt.Sprintf("the history of timeline %d cannot be read (%v)", g.Timeline, err))
	}
	sp, found := pg.SwitchPoint(hist, cd.TimeLineID)
	if !found {
		return rewindOrDelta(fmt.Sprintf("timeline %d is not an ancestor of the primary's timeline %d", cd.TimeLineID, g.Timeline))
	}
	if end <= sp {
		return MethodStandby, fmt.Sprintf("its WAL ends at %s, at or before where timeline %d forked from %d (%s): nothing to copy", end, g.Timeline, cd.TimeLineID, sp), nil
	}
	return rewindOrDelta(fmt.Sprintf("its WAL ends at %s, past where timeline %d forked from %d (%s): it diverged", end, g.Timeline, cd.TimeLineID, sp))
}

func historyFromRepo(ctx context.Context, r *repo.Repo, tli pg.TimeLineID, size pg.WALSegmentSize) ([]pg.HistoryEntry, error) {
	key, err := repo.WALKey(pg.HistoryFileName(tli), size)
	if err != nil {
		return nil, err
	}
	obj, err := r.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return pg.ParseHistory(obj)
}

var rewindProgress = regexp.MustCompile(`(\d+)/\d+ kB \(\d+%\) copied`)

// rewind runs pg_rewind against the new primary, its restore_command
// (walferry archive-get) fetching the target's WAL pg_wal lost. It returns
// the bytes pg_rewind copied.
func rewind(ctx context.Context, o RejoinOptions, origin string) (int64, error) {
	if err := setRestoreCommand(o.Server, o.Standby.RestoreCommand, origin); err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, o.Server.bin("pg_rewind"), "--target-pgdata", o.Server.DataDir,
		"--source-server", o.Standby.SourceConn, "--restore-target-wal", "--progress")
	cmd.Dir = o.Server.DataDir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("pg_rewind: %w: %s", err, lastLines(out.String(), 5))
	}
	var kb int64
	for _, m := range rewindProgress.FindAllStringSubmatch(out.String(), -1) {
		kb, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return kb << 10, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(s, "\r", "\n")), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// dirSize is the size of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func inRecovery(ctx context.Context, conn string) bool {
	c, err := pg.Connect(ctx, conn)
	if err != nil {
		return false
	}
	defer c.Close(context.WithoutCancel(ctx))
	var r bool
	return c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r) == nil && r
}

func reload(ctx context.Context, conn string) error {
	c, err := pg.Connect(ctx, conn)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	_, err = c.Exec(ctx, "SELECT pg_reload_conf()")
	return err
}
