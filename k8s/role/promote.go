package role

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// PromoteOptions describe the promotion of the local standby.
type PromoteOptions struct {
	Server   Server
	Instance Instance
	Repos    []*repo.Repo
	// Force promotes without a switchover token (a failover: the old
	// primary is unreachable); the old primary is fenced first.
	Force bool
	// Wait bounds the wait for the standby to replay up to the token
	// (0: 2 minutes).
	Wait time.Duration
	// NoBackup skips the backup started right after the promotion.
	NoBackup bool
	Log      *slog.Logger
}

// PromoteResult reports a promotion.
type PromoteResult struct {
	// Generations are the lineage record entries taken: "promote" after a
	// switchover; "failover" then "promote" for a forced one.
	Generations []repo.Generation `json:"generations"`
	Timeline    pg.TimeLineID     `json:"timeline"`
	// SwitchLSN is where the new timeline began.
	SwitchLSN pg.LSN `json:"switch_lsn"`
	// Token is the switchover token the standby promoted at (nil for a
	// failover).
	Token *repo.SwitchoverToken `json:"token,omitempty"`
	// ArchivedEnd is the end of the old timeline's WAL in the repository
	// and AtRiskBytes how far it goes past SwitchLSN (a failover): what the
	// old primary wrote that the new one does not have.
	ArchivedEnd pg.LSN `json:"archived_end_lsn,omitempty"`
	AtRiskBytes int64  `json:"at_risk_bytes"`
	// Backup is the backup taken after the promotion.
	Backup     string        `json:"backup,omitempty"`
	BackupType string        `json:"backup_type,omitempty"`
	Promoted   time.Duration `json:"promote_ns"`
	Duration   time.Duration `json:"duration_ns"`
}

// Promote makes the local standby the primary. After a demote (the
// lineage record holds a switchover token) it waits until the standby
// replayed exactly up to the token, promotes and records the new
// timeline. Without a token, Force is required: it records a "failover"
// generation first, which fences the old primary at the standby's
// position, then promotes. Either way the new timeline's history file is
// archived and a backup started.
func Promote(ctx context.Context, o PromoteOptions) (PromoteResult, error) {
	log := logger(o.Log)
	start := time.Now()
	var res PromoteResult
	if len(o.Repos) == 0 {
		return res, failure.New(failure.Usage, "promote: no repository configured: pass --repo")
	}
	rec := record{o.Repos}
	conn, err := pg.Connect(ctx, o.Server.Conn)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	pos, err := position(ctx, conn)
	if err != nil {
		return res, err
	}
	if !pos.InRecovery {
		return res, fmt.Errorf("%w: %s is not in recovery; walferry promote runs on the standby to promote", ErrNotStandby, pg.ConnHostPort(o.Server.Conn))
	}
	cd, err := o.Server.controlData()
	if err != nil {
		return res, err
	}
	prev, ok, err := rec.current(ctx)
	if err != nil {
		return res, err
	}
	var last repo.Generation
	if ok && prev.Reason == "switchover" && prev.Switchover != nil {
		res.Token = prev.Switchover
		if err := waitForToken(ctx, conn, o, cd, *prev.Switchover, log); err != nil {
			return res, err
		}
		last = prev
	} else {
		if !o.Force {
			who := "none is recorded"
			if ok {
				who = "it names " + prev.String()
			}
			return res, fmt.Errorf("%w in the lineage record (%s): run walferry demote on the primary first (a planned switchover), "+
				"or, when the primary is lost, walferry promote --force (a failover: the old primary is fenced and must rejoin)", ErrNoToken, who)
		}
		if last, err = fence(ctx, rec, o, cd, pos, prev, ok, log); err != nil {
			return res, err
		}
		res.Generations = append(res.Generations, last)
	}

	log.Info("promoting", "replay_lsn", pos.Replay.String())
	t0 := time.Now()
	var promoted bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(wait => true, wait_seconds => 300)").Scan(&promoted); err != nil || !promoted {
		return res, failure.Wrap(failure.Postgres, fmt.Errorf("pg_promote on %s did not complete (%v): see its log; "+
			"the lineage record's %s stands, run walferry promote again", pg.ConnHostPort(o.Server.Conn), err, last))
	}
	res.Promoted = time.Since(t0)
	if res.Timeline, err = currentTimeline(ctx, conn); err != nil {
		return res, err
	}
	res.SwitchLSN = timelineStart(o.Server.walDir(), res.Timeline)
	g, err := rec.take(ctx, last.Number, repo.Generation{
		Instance: o.Instance.Name, Site: o.Instance.Site, Reason: "promote", SystemID: cd.SystemIdentifier,
		Timeline: res.Timeline, TimelineStart: res.SwitchLSN,
	})
	if err != nil {
		return res, fmt.Errorf("promote: the server is promoted (timeline %d) but the new timeline could not be recorded: %w", res.Timeline, err)
	}
	res.Generations = append(res.Generations, g)
	log.Info("promoted", "generation", g.Number, "timeline", uint32(res.Timeline), "lsn", res.SwitchLSN.String())

	arch, err := newWALArchiver(o.Repos, cd, o.Server.DataDir, log)
	if err != nil {
		return res, err
	}
	defer arch.close(ctx)
	if err := arch.push(ctx, pg.HistoryFileName(res.Timeline)); err != nil {
		return res, fmt.Errorf("promote: archive the new timeline's history file: %w", err)
	}
	if res.Token == nil {
		size, _ := cd.SegmentSize()
		if res.ArchivedEnd, err = archivedEnd(ctx, o.Repos[0], last.Timeline, size); err != nil {
			log.Warn("could not measure the WAL at risk", "err", err)
		} else if res.ArchivedEnd > res.SwitchLSN {
			res.AtRiskBytes = int64(res.ArchivedEnd - res.SwitchLSN)
		}
	}
	if !o.NoBackup {
		// A checkpoint on the new timeline first: until one completes,
		// pg_control (which a backup reads) still names the old timeline.
		if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
			return res, failure.Wrap(failure.Postgres, fmt.Errorf("promote: checkpoint after the promotion: %w", err))
		}
		m, err := backup.Push(ctx, o.Repos[0], backup.Options{Conn: o.Server.Conn, PGData: o.Server.DataDir, Incremental: true, Logger: o.Log})
		if err != nil {
			return res, fmt.Errorf("promote: promoted and recorded, but the backup after the promotion failed: %w; run walferry backup-push", err)
		}
		res.Backup, res.BackupType = m.ID, string(m.Type)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// waitForToken waits until the standby replayed exactly up to the token's
// end, then zeroes what follows it in the segment (see zeroTail).
func waitForToken(ctx context.Context, conn *pgx.Conn, o PromoteOptions, cd *pg.ControlData, tok repo.SwitchoverToken, log *slog.Logger) error {
	if tok.SystemID != cd.SystemIdentifier {
		return failure.New(failure.WrongCluster, fmt.Sprintf("promote: the switchover token is for cluster %d, this standby is cluster %d", tok.SystemID, cd.SystemIdentifier))
	}
	wait := o.Wait
	if wait <= 0 {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	log.Info("waiting for the standby to replay up to the switchover token", "lsn", tok.EndLSN.String(), "from", tok.From)
	for {
		pos, err := position(ctx, conn)
		if err != nil {
			return err
		}
		switch {
		case pos.Replay > tok.EndLSN:
			return fmt.Errorf("%w: it replayed up to %s, past the end of %s's shutdown checkpoint at %s on timeline %d: "+
				"it holds WAL the old primary never wrote (another history); rebuild it from the new primary instead of promoting it",
				ErrAhead, pos.Replay, tok.From, tok.EndLSN, tok.Timeline)
		case pos.Replay == tok.EndLSN:
			size, err := cd.SegmentSize()
			if err != nil {
				return failure.Wrap(failure.Postgres, err)
			}
			if off := int64(uint64(tok.EndLSN) % uint64(size.Bytes())); off != 0 {
				seg := pg.SegmentNameOf(tok.Timeline, tok.EndLSN, size)
				if err := zeroTail(o.Server.walDir(), seg, off, size.Bytes()); err != nil && !errors.Is(err, os.ErrNotExist) {
					return failure.Wrap(failure.Postgres, fmt.Errorf("promote: clear the tail of %s: %w", seg, err))
				}
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: after %v it replayed up to %s, %d bytes short of %s's shutdown checkpoint end at %s: "+
				"it must stream from the old primary (primary_conninfo) or read the archive with a restore_command that serves .partial files (archive-get --partial); "+
				"fix that and run walferry promote again, nothing was changed", ErrBehind, wait, pos.Replay, int64(tok.EndLSN-pos.Replay), tok.From, tok.EndLSN)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// fence records the failover generation: from now on the old primary's
// WAL past the standby's position is refused.
func fence(ctx context.Context, rec record, o PromoteOptions, cd *pg.ControlData, pos standbyPosition, prev repo.Generation, ok bool, log *slog.Logger) (repo.Generation, error) {
	// A standby that followed a switchover by streaming names the new
	// timeline in pg_control only after its next restartpoint, and its
	// WAL receiver is gone once the primary is: the history file it
	// received then is what says which timeline it follows.
	tli := max(cd.TimeLineID, cd.MinRecoveryPointTLI, pos.ReceiveTLI, latestHistoryTLI(o.Server.walDir()))
	if ok && prev.Timeline > tli {
		return prev, fmt.Errorf("%w: the lineage record's %s is on timeline %d, after this standby's %d: another standby was promoted; "+
			"this one stays a standby (walferry rejoin makes it follow the new primary)", repo.ErrLineageRace, prev, prev.Timeline, tli)
	}
	if ok && prev.Reason == "failover" {
		if !o.Instance.is(prev) {
			return prev, fmt.Errorf("%w: %s is failing over already; this standby stays a standby", repo.ErrLineageRace, prev)
		}
		log.Info("resuming the failover already recorded", "generation", prev.Number)
		return prev, nil
	}
	at := max(pos.Replay, pos.Receive)
	g := repo.Generation{
		Instance: o.Instance.Name, Site: o.Instance.Site, Reason: "failover", SystemID: cd.SystemIdentifier,
		Timeline: tli, FencedAt: at,
	}
	if ok {
		g.Timeline, g.TimelineStart = prev.Timeline, prev.TimelineStart
	}
	won, err := rec.take(ctx, prev.Number, g)
	if err != nil {
		return won, fmt.Errorf("promote --force: %w; this standby stays a standby", err)
	}
	log.Info("old primary fenced", "generation", won.Number, "timeline", uint32(won.Timeline), "lsn", at.String())
	return won, nil
}

// archivedEnd returns the end of timeline tli's WAL in r: the end of its
// newest segment, or of its newest .partial's content.
func archivedEnd(ctx context.Context, r *repo.Repo, tli pg.TimeLineID, size pg.WALSegmentSize) (pg.LSN, error) {
	var end pg.LSN
	var partials []string
	err := r.Store().List(ctx, fmt.Sprintf("%s%08X", repo.WALPrefix, uint32(tli)), func(oi storage.ObjectInfo) error {
		name, ok := repo.WALNameFromKey(oi.Key)
		if !ok {
			return nil
		}
		f, err := pg.ParseWALFileName(name, size)
		if err != nil || f.TLI != tli {
			return nil
		}
		switch f.Kind {
		case pg.KindSegment:
			end = max(end, f.StartLSN(size)+pg.LSN(size.Bytes()))
		case pg.KindPartial:
			partials = append(partials, oi.Key)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, key := range partials {
		name, _ := repo.WALNameFromKey(key)
		f, _ := pg.ParseWALFileName(name, size)
		info, err := r.ObjectInfo(ctx, key)
		if err != nil {
			return 0, err
		}
		end = max(end, f.StartLSN(size)+pg.LSN(info.RawSize))
	}
	return end, nil
}
