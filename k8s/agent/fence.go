package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/k8s/status"
)

// Defaults of the fencing options.
const (
	// DefaultFenceTimeout bounds the stop of a fenced primary.
	DefaultFenceTimeout = 10 * time.Second
	// DefaultPromotionGrace is how long a primary on a timeline newer than
	// the lineage record's may run before the agent calls it a promotion
	// nobody recorded and fences it: walferry promote records the new
	// timeline right after pg_promote, within seconds.
	DefaultPromotionGrace = time.Minute
	// lineageInterval is how often the agent reads the lineage record.
	lineageInterval = 5 * time.Second
)

// lineageState is the agent's copy of the repository's lineage record.
type lineageState struct {
	g    repo.Generation
	ok   bool // the repository has a record
	read time.Time
	// newerSince is when this primary was first seen on a timeline newer
	// than the record's (a promotion not recorded yet).
	newerSince time.Time
	// fenced is the generation that fenced this instance, once it did.
	fenced *repo.Generation
}

// watchLineage reads the record (every lineageInterval), records
// generation 1 for a primary when the repository has none, fences a
// primary the record does not allow, and puts the record into rep.
func (a *Agent) watchLineage(ctx context.Context, rep *status.Report) {
	now := a.o.Now()
	if now.Sub(a.lineage.read) >= lineageInterval || (rep.Role == status.RolePrimary && !a.lineage.ok) {
		g, ok, err := a.o.Repos[0].Lineage(ctx)
		if err != nil {
			a.log.Warn("could not read the lineage record; keeping the last one read", "err", err)
		} else {
			a.lineage.g, a.lineage.ok, a.lineage.read = g, ok, now
		}
	}
	if rep.Role == status.RolePrimary && !a.lineage.ok && a.lineage.read.Equal(now) {
		a.recordFirstGeneration(ctx, rep)
	}
	if !a.lineage.ok {
		return
	}
	rep.Lineage = status.LineageOf(a.lineage.g)
	if rep.Role != status.RolePrimary {
		a.lineage.newerSince = time.Time{}
		if rep.Role == status.RoleStandby {
			// Rejoined (or restarted on its standby.signal): the fence did
			// its job.
			a.lineage.fenced = nil
		}
		if a.lineage.fenced != nil {
			rep.Lineage.Fenced, rep.Lineage.Why = true, "stopped by its sidecar: "+a.lineage.fenced.String()
		}
		return
	}
	err := a.lineage.g.PermitsPrimary(pg.TimeLineID(rep.Timeline))
	if err == nil {
		a.lineage.newerSince, a.lineage.fenced = time.Time{}, nil
		return
	}
	if rep.Timeline > uint32(a.lineage.g.Timeline) {
		if a.lineage.newerSince.IsZero() {
			a.lineage.newerSince = now
			a.log.Info("primary on a timeline the lineage record does not know yet: waiting for walferry promote to record it",
				"timeline", rep.Timeline, "record", a.lineage.g.String(), "grace", a.o.PromotionGrace)
		}
		if now.Sub(a.lineage.newerSince) < a.o.PromotionGrace {
			return
		}
	}
	rep.Lineage.Fenced, rep.Lineage.Why = true, err.Error()
	a.fence(ctx, err)
}

// recordFirstGeneration records this primary as generation 1 of a
// repository that has no lineage record yet.
func (a *Agent) recordFirstGeneration(ctx context.Context, rep *status.Report) {
	g, err := a.o.Repos[0].NextGeneration(ctx, 0, repo.Generation{
		Instance: a.o.Instance, Site: a.o.Site, Reason: "init", Timeline: pg.TimeLineID(rep.Timeline),
	})
	if errors.Is(err, repo.ErrLineageRace) {
		a.lineage.read = time.Time{} // read the winner next time
		return
	}
	if err != nil {
		a.log.Warn("could not record this primary in the lineage record", "err", err)
		return
	}
	a.log.Info("recorded this primary in the repository's lineage record", "generation", g.String())
	a.lineage.g, a.lineage.ok = g, true
}

// fence stops a primary the lineage record does not allow, after making
// sure it comes back as a standby: standby.signal first, then a fast
// shutdown. Its hooks refuse to archive meanwhile (the record fences
// them too); walferry rejoin makes it a standby of the new primary.
func (a *Agent) fence(ctx context.Context, why error) {
	g := a.lineage.g
	if a.lineage.fenced == nil {
		a.log.Error("FENCED: this primary is not the lineage record's; stopping PostgreSQL so it takes no more writes",
			"record", g.String(), "why", why, "fix", "walferry rejoin")
	}
	a.lineage.fenced = &g
	if err := a.writeStandbySignal(); err != nil {
		a.log.Error("fencing: could not write standby.signal (the server could start as a primary again)", "err", err)
	}
	stopCtx, cancel := context.WithTimeout(ctx, a.o.FenceTimeout+5*time.Second)
	defer cancel()
	if _, err := pg.StopPostmaster(stopCtx, a.o.DataDir, a.o.FenceTimeout); err != nil {
		a.log.Error("fencing: could not stop PostgreSQL; stop it by hand (pg_ctl stop -m fast), then walferry rejoin", "err", err)
		return
	}
	a.closeConn()
	a.log.Info("fenced: PostgreSQL stopped; standby.signal keeps it from starting as a primary again")
}

// writeStandbySignal creates standby.signal, owned like the data directory.
func (a *Agent) writeStandbySignal() error {
	path := filepath.Join(a.o.DataDir, "standby.signal")
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	uid, gid := -1, -1
	if fi, err := os.Stat(a.o.DataDir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	return atomicfile.WriteOwned(path, nil, 0o600, uid, gid)
}
