package role

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// DemoteOptions describe a planned demotion of the local primary.
type DemoteOptions struct {
	Server   Server
	Instance Instance
	// Repos are the configured repositories; the first holds the
	// lineage record that decides (see record).
	Repos []*repo.Repo
	// Standby is how the demoted server follows the new primary.
	Standby Standby
	// Restart starts the server again as a standby (pg_ctl) once
	// demoted; in a pod the container's restart does it instead.
	Restart bool
	// StopTimeout bounds the fast shutdown (0: 5 minutes).
	StopTimeout time.Duration
	Log         *slog.Logger
}

// DemoteResult reports a demotion.
type DemoteResult struct {
	Generation repo.Generation      `json:"generation"`
	Token      repo.SwitchoverToken `json:"token"`
	// Archived are the files archived after the shutdown (those
	// PostgreSQL had not archived yet), Partial the last segment's
	// .partial ("" when the checkpoint ended a segment).
	Archived  []string `json:"archived,omitempty"`
	Partial   string   `json:"partial,omitempty"`
	Stopped   bool     `json:"stopped"`
	Restarted bool     `json:"restarted"`
	// WriteDowntime is from the shutdown request to the generation being
	// recorded: the part of a switchover's write outage demote causes.
	Duration time.Duration `json:"duration_ns"`
}

// Demote hands the primary role over: it checks that the lineage record
// names this server as its primary, checkpoints (so the shutdown
// checkpoint is quick), stops PostgreSQL with a fast shutdown, archives
// every remaining segment and the last one as .partial, then records the
// next generation ("switchover": this server, its timeline ended at the
// end of the shutdown checkpoint record, with the token a standby promotes
// at), and configures the server as a standby.
//
// Run again after a failure, it resumes: a stopped, cleanly shut down
// primary is archived and recorded; a generation already recorded for this
// server's shutdown is taken as done.
func Demote(ctx context.Context, o DemoteOptions) (DemoteResult, error) {
	log := logger(o.Log)
	start := time.Now()
	var res DemoteResult
	if len(o.Repos) == 0 {
		return res, failure.New(failure.Usage, "demote: no repository configured: pass --repo")
	}
	rec := record{o.Repos}
	cd, err := o.Server.controlData()
	if err != nil {
		return res, err
	}
	prev, ok, err := rec.current(ctx)
	if err != nil {
		return res, err
	}
	if ok && prev.Reason == "switchover" && o.Instance.is(prev) && prev.Switchover != nil &&
		prev.Switchover.CheckpointLSN == cd.CheckpointLSN && cd.State.CleanlyShutDown() {
		// Recorded by an earlier run that failed later: finish it.
		res.Generation, res.Token = prev, *prev.Switchover
		log.Info("the switchover is already recorded; configuring the standby", "generation", prev.Number)
	} else {
		if ok {
			// The server's timeline decides, not its name: the record's
			// first generation may have been written under another name
			// (repo init run by hand, a renamed pod).
			if err := prev.PermitsPrimary(cd.TimeLineID); err != nil {
				return res, fmt.Errorf("%w: the lineage record's newest entry is %s, and this server is %s on timeline %d; "+
					"demote the primary it names, or run walferry rejoin here if this server is an old primary", ErrNotPrimary, prev, o.Instance, cd.TimeLineID)
			}
			if !o.Instance.is(prev) {
				log.Info("the lineage record names the primary otherwise; this server is on its timeline", "record", prev.String(), "instance", o.Instance.String())
			}
		}
		if err := checkpoint(ctx, o.Server.Conn); err != nil {
			log.Warn("checkpoint before the shutdown failed; the shutdown checkpoint does the work", "err", err)
		}
		log.Info("stopping PostgreSQL (fast shutdown)", "data_dir", o.Server.DataDir)
		timeout := o.StopTimeout
		if timeout <= 0 {
			timeout = 5 * time.Minute
		}
		if res.Stopped, err = stopServer(ctx, o.Server.DataDir, timeout); err != nil {
			return res, err
		}
		if cd, err = o.Server.controlData(); err != nil {
			return res, err
		}
		if cd.State != pg.DBShutdowned {
			return res, failure.Wrap(failure.Postgres, fmt.Errorf("demote: %s is %q, not shut down cleanly as a primary: "+
				"a crashed primary cannot hand over a token; start it and demote again, or fail over with walferry promote --force on the standby", o.Server.DataDir, cd.State))
		}
		g, err := archiveAndRecord(ctx, o, rec, prev, ok, cd, log, &res)
		if err != nil {
			return res, err
		}
		res.Generation, res.Token = g, *g.Switchover
	}
	if err := writeStandby(o.Server, o.Standby, fmt.Sprintf("walferry demote at %s", time.Now().UTC().Format(time.RFC3339))); err != nil {
		return res, fmt.Errorf("demote: the switchover is recorded (%s) but configuring the standby failed: %w; fix it and run walferry demote again", res.Generation, err)
	}
	if o.Restart {
		if err := startServer(ctx, o.Server, 5*time.Minute); err != nil {
			return res, err
		}
		res.Restarted = true
	}
	res.Duration = time.Since(start)
	return res, nil
}

// archiveAndRecord archives what the stopped primary left, then takes the
// switchover generation.
func archiveAndRecord(ctx context.Context, o DemoteOptions, rec record, prev repo.Generation, ok bool, cd *pg.ControlData, log *slog.Logger, res *DemoteResult) (repo.Generation, error) {
	size, err := cd.SegmentSize()
	if err != nil {
		return repo.Generation{}, failure.Wrap(failure.Postgres, err)
	}
	end, err := recordEnd(o.Server.walDir(), cd.TimeLineID, cd.CheckpointLSN, size, cd.WALBlockSize)
	if err != nil {
		return repo.Generation{}, err
	}
	arch, err := newWALArchiver(o.Repos, cd, o.Server.DataDir, log)
	if err != nil {
		return repo.Generation{}, err
	}
	defer arch.close(ctx)
	if res.Archived, err = arch.pushReady(ctx); err != nil {
		return repo.Generation{}, err
	}
	if res.Partial, err = arch.pushPartial(ctx, cd.TimeLineID, end); err != nil {
		return repo.Generation{}, err
	}
	start := pg.InvalidLSN
	if ok && prev.Timeline == cd.TimeLineID {
		start = prev.TimelineStart
	} else if cd.TimeLineID > 1 {
		start = timelineStart(o.Server.walDir(), cd.TimeLineID)
	}
	tok := &repo.SwitchoverToken{
		From: o.Instance.String(), SystemID: cd.SystemIdentifier, Timeline: cd.TimeLineID,
		CheckpointLSN: cd.CheckpointLSN, RedoLSN: cd.RedoLSN, EndLSN: end, Time: time.Now().UTC(),
	}
	g, err := rec.take(ctx, prev.Number, repo.Generation{
		Instance: o.Instance.Name, Site: o.Instance.Site, Reason: "switchover", SystemID: cd.SystemIdentifier,
		Timeline: cd.TimeLineID, TimelineStart: start, FencedAt: end, Switchover: tok,
	})
	if err != nil {
		return g, fmt.Errorf("demote: PostgreSQL is stopped and its WAL archived, but the switchover could not be recorded: %w", err)
	}
	log.Info("switchover recorded", "generation", g.Number, "timeline", uint32(g.Timeline), "lsn", end.String())
	return g, nil
}
