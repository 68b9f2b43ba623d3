package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/k8s/status"
	"github.com/walferry/walferry/storage"
)

// upstreamState is what the agent knows of a standby's upstream.
type upstreamState struct {
	// conninfo is primary_conninfo as written (no password, see
	// pg.StandbyConnInfo); empty until computed.
	conninfo  string
	reachable bool
	lastErr   string
	lastProbe time.Time
	// refused says why the upstream must not be streamed from (another
	// cluster, an older timeline), empty when it may.
	refused string
	lsn     pg.LSN
	slot    *status.Slot
}

// probeWhileStreaming is how often a streaming standby asks its upstream
// for its position and its slot; a standby that is not streaming asks
// every Interval, to switch as soon as the upstream answers.
const probeWhileStreaming = 10 * time.Second

// actStandby switches a standby to streaming when its upstream answers,
// watches the slot there, and notices recovery stuck on a missing
// segment.
func (a *Agent) actStandby(ctx context.Context, rep *status.Report) {
	a.checkStuck(ctx, rep)
	if a.o.Upstream == "" {
		return
	}
	now := a.o.Now()
	due := rep.Mode != status.ModeStreaming || now.Sub(a.up.lastProbe) >= probeWhileStreaming
	if due {
		a.up.lastProbe = now
		a.probeUpstream(ctx, rep)
	}
	if a.up.reachable {
		if a.up.lsn != pg.InvalidLSN {
			rep.SetUpstreamLSN(a.up.lsn.String())
		}
		if a.up.slot != nil {
			sl := *a.up.slot
			sl.Active = rep.Mode == status.ModeStreaming && rep.Replication != nil && rep.Replication.Slot == sl.Name
			rep.Slots = append(rep.Slots, sl)
			a.warnSlots([]status.Slot{sl})
		}
	}
}

// probeUpstream asks the upstream who it is and, when it may be streamed
// from, makes sure the slot exists and walferry.conf points at it.
func (a *Agent) probeUpstream(ctx context.Context, rep *status.Report) {
	if a.up.conninfo == "" {
		ci, err := pg.StandbyConnInfo(a.o.Upstream, a.o.ApplicationName)
		if err != nil {
			a.up.lastErr = err.Error()
			a.up.refused = err.Error()
			return
		}
		a.up.conninfo = ci
	}
	sys, slot, err := a.askUpstream(ctx)
	if err != nil {
		if a.up.reachable || a.up.lastErr == "" {
			a.log.Warn("upstream unreachable: recovery replays the repository until it answers", "upstream", a.upstreamName(), "err", err)
		}
		a.up.reachable = false
		a.up.lastErr = err.Error()
		return
	}
	if !a.up.reachable {
		a.log.Info("upstream answers", "upstream", a.upstreamName(), "timeline", sys.Timeline, "lsn", sys.XLogPos.String())
	}
	a.up.reachable, a.up.lastErr, a.up.lsn = true, "", sys.XLogPos
	a.up.refused = a.refuseUpstream(rep, sys)
	if a.up.refused != "" {
		a.log.Error("not streaming from the upstream", "upstream", a.upstreamName(), "why", a.up.refused)
		if changed, err := a.settingsFiles().Remove("primary_conninfo", "primary_slot_name"); err != nil {
			a.log.Error("could not remove primary_conninfo from walferry.conf", "err", err)
		} else if changed {
			a.reload(ctx)
		}
		return
	}
	a.up.slot = slot
	settings := []pgconf.Setting{{Key: "primary_conninfo", Value: a.up.conninfo}}
	if a.o.Slot != "" {
		settings = append(settings, pgconf.Setting{Key: "primary_slot_name", Value: a.o.Slot})
	}
	changed, err := a.settingsFiles().Set(settings...)
	if err != nil {
		a.log.Error("could not write primary_conninfo into walferry.conf", "err", err)
		return
	}
	if changed {
		a.log.Info("upstream reachable: streaming from it (primary_conninfo written to walferry.conf, configuration reloaded)",
			"upstream", a.upstreamName(), "slot", a.o.Slot)
		a.reload(ctx)
	}
}

// askUpstream connects to the upstream over the replication protocol,
// identifies it, and reads (creating when missing) the standby's slot.
func (a *Agent) askUpstream(ctx context.Context) (replication.System, *status.Slot, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// A probe is not the standby's walreceiver: another application_name
	// keeps pg_stat_replication readable.
	conn, err := replication.ConnectString(cctx, a.up.conninfo+" application_name=walferry_sidecar connect_timeout=5")
	if err != nil {
		return replication.System{}, nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := conn.Identify(cctx)
	if err != nil {
		return replication.System{}, nil, err
	}
	if a.o.Slot == "" {
		return sys, nil, nil
	}
	sl, err := conn.ReadSlot(cctx, a.o.Slot)
	if err != nil {
		return sys, nil, fmt.Errorf("read slot %s on the upstream: %w", a.o.Slot, err)
	}
	if sl.Type == "" {
		if sl, _, err = conn.CreatePhysicalSlot(cctx, a.o.Slot); err != nil {
			return sys, nil, fmt.Errorf("create slot %s on the upstream: %w", a.o.Slot, err)
		}
		a.log.Info("created the standby's replication slot on the upstream", "slot", a.o.Slot, "upstream", a.upstreamName())
	}
	s := &status.Slot{Name: a.o.Slot, Where: "upstream", Active: false}
	if sl.RestartLSN != pg.InvalidLSN {
		s.RestartLSN = sl.RestartLSN.String()
		if sys.XLogPos > sl.RestartLSN {
			s.RetainedBytes = int64(sys.XLogPos - sl.RestartLSN)
		}
	}
	return sys, s, nil
}

// refuseUpstream says why the upstream must not be streamed from, or "".
func (a *Agent) refuseUpstream(rep *status.Report, sys replication.System) string {
	if rep.Postgres.SystemID != "" && rep.Postgres.SystemID != strconv.FormatUint(sys.SystemID, 10) {
		return fmt.Sprintf("the upstream %s is another cluster (system identifier %d, this standby's is %s): fix --source-conn / --follow",
			a.upstreamName(), sys.SystemID, rep.Postgres.SystemID)
	}
	if rep.Timeline != 0 && uint32(sys.Timeline) < rep.Timeline {
		return fmt.Sprintf("the upstream %s is on timeline %d, behind this instance's %d: it is an old primary or this standby was promoted; "+
			"point the standby at the current primary, or rejoin the upstream", a.upstreamName(), sys.Timeline, rep.Timeline)
	}
	return ""
}

// upstreamName names the upstream for messages, without secrets.
func (a *Agent) upstreamName() string {
	if a.up.conninfo != "" {
		if hp := pg.ConnHostPort(a.up.conninfo); hp != "" {
			return hp
		}
	}
	return "the upstream"
}

// reload makes the local server read its configuration again
// (primary_conninfo and primary_slot_name take effect on reload since
// PostgreSQL 13).
func (a *Agent) reload(ctx context.Context) {
	if a.conn == nil {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.conn.Exec(qctx, "SELECT pg_reload_conf()"); err != nil {
		a.log.Error("could not reload the server's configuration", "err", err, "fix", "run SELECT pg_reload_conf() or pg_ctl reload")
	}
}

// upstreamProblems are the problems only the agent sees: an upstream it
// cannot reach or must not stream from.
func (a *Agent) upstreamProblems(rep *status.Report) []status.Problem {
	if rep.Role != status.RoleStandby || a.o.Upstream == "" {
		return nil
	}
	if a.up.refused != "" {
		return []status.Problem{{Severity: status.Critical, What: "not streaming: " + a.up.refused,
			Next: "fix the sidecar's --source-conn / --follow, then it switches to streaming by itself"}}
	}
	if !a.up.reachable && a.up.lastErr != "" {
		return []status.Problem{{Severity: status.Warning,
			What: fmt.Sprintf("upstream %s unreachable (%s): replaying the repository instead", a.upstreamName(), a.up.lastErr),
			Next: "check the network path and the upstream's pg_hba.conf; streaming resumes by itself when it answers"}}
	}
	return nil
}

// stuckTracker notices recovery that sits on one position while the
// repository already holds later WAL: the segment in between is missing.
type stuckTracker struct {
	lsn     pg.LSN
	since   time.Time
	checked time.Time
	missing string
}

// checkStuck sets rep.Archive.MissingSegment when recovery has not moved
// for StuckAfter, the segment it needs is in no repository, and a later
// one is (so it is not merely waiting for the primary's next segment).
func (a *Agent) checkStuck(ctx context.Context, rep *status.Report) {
	now := a.o.Now()
	if rep.Mode == status.ModeStreaming || rep.Replication == nil {
		a.stuck = stuckTracker{}
		return
	}
	replay, err := pg.ParseLSN(rep.Replication.ReplayLSN)
	if err != nil || replay == pg.InvalidLSN {
		return
	}
	if replay != a.stuck.lsn {
		a.stuck = stuckTracker{lsn: replay, since: now}
		return
	}
	if now.Sub(a.stuck.since) >= DefaultStuckAfter && now.Sub(a.stuck.checked) >= 30*time.Second {
		a.stuck.checked = now
		a.stuck.missing = a.missingSegment(ctx, pg.TimeLineID(rep.Timeline), replay)
		if a.stuck.missing != "" {
			a.log.Error("recovery is stuck: the WAL segment it needs is in no repository, later ones are",
				"segment", a.stuck.missing, "fix", "find the primary's archiving error (walferry status on the primary), or rebuild this standby")
		}
	}
	rep.Archive.MissingSegment = a.stuck.missing
}

// missingSegment returns the segment holding lsn when no repository has
// it but one has a later segment of the timeline; "" otherwise.
func (a *Agent) missingSegment(ctx context.Context, tli pg.TimeLineID, lsn pg.LSN) string {
	if tli == 0 {
		return ""
	}
	need := pg.SegmentNameOf(tli, lsn, a.segSize)
	key, err := repo.WALKey(need, a.segSize)
	if err != nil {
		return ""
	}
	later := false
	for _, r := range a.o.Repos {
		if _, err := r.Store().Stat(ctx, key); err == nil {
			return ""
		} else if !errors.Is(err, storage.ErrNotExist) {
			return ""
		}
		err := r.Store().List(ctx, strings.TrimSuffix(key, need), func(oi storage.ObjectInfo) error {
			if name, ok := repo.WALNameFromKey(oi.Key); ok && len(name) == len(need) && name > need {
				later = true
			}
			return nil
		})
		if err != nil {
			return ""
		}
	}
	if !later {
		return ""
	}
	return need
}
