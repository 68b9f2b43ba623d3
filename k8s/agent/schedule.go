package agent

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/walferry/walferry/backup"
)

// scheduler takes the primary's base backups: on its cron schedule, on
// demand (POST /backup), and once after a promotion when asked.
type scheduler struct {
	policy   BackupPolicy
	schedule cron.Schedule // nil: no schedule
	// trigger asks for a backup now; buffered so a request during a
	// backup is kept (once).
	trigger chan struct{}
	running atomic.Bool
	// failures counts failed backups since the agent started.
	failures atomic.Int64
	lastErr  atomic.Pointer[string]
}

// newScheduler parses the policy's schedule (standard 5-field cron, or a
// descriptor such as @daily or @every 6h).
func newScheduler(p BackupPolicy) (*scheduler, error) {
	s := &scheduler{policy: p, trigger: make(chan struct{}, 1)}
	if p.Schedule != "" {
		sched, err := cron.ParseStandard(p.Schedule)
		if err != nil {
			return nil, fmt.Errorf("%w: --backup-schedule %q: %v; want cron's 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\", or @daily, @every 6h",
				ErrUsage, p.Schedule, err)
		}
		s.schedule = sched
	}
	if p.FullEvery < 0 {
		return nil, fmt.Errorf("%w: --backup-full-every %d: want 0 (always full) or more", ErrUsage, p.FullEvery)
	}
	return s, nil
}

// request asks for a backup now; false when one is already waiting.
func (s *scheduler) request() bool {
	select {
	case s.trigger <- struct{}{}:
		return true
	default:
		return false
	}
}

// run takes backups until ctx ends; now takes a full one at once.
func (s *scheduler) run(ctx context.Context, a *Agent, now bool) {
	if now {
		s.take(ctx, a, true, "promotion")
	}
	for {
		var next <-chan time.Time
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		if s.schedule != nil {
			at := s.schedule.Next(a.o.Now())
			a.log.Info("next scheduled backup", "at", at.UTC().Format(time.RFC3339))
			timer.Reset(time.Until(at))
			next = timer.C
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-next:
			s.take(ctx, a, false, "schedule")
		case <-s.trigger:
			timer.Stop()
			s.take(ctx, a, false, "request")
		}
	}
}

// take runs one backup into the first repository.
func (s *scheduler) take(ctx context.Context, a *Agent, forceFull bool, why string) {
	s.running.Store(true)
	defer s.running.Store(false)
	r := a.o.Repos[0]
	full := forceFull || s.wantFull(ctx, a)
	o := s.policy.Backup
	if o.Conn == "" {
		conn, err := a.localConn()
		if err != nil {
			s.failures.Add(1)
			a.log.Error("backup not taken: no connection to the local server", "why", why, "err", err)
			return
		}
		o.Conn = conn
	}
	if o.PGData == "" {
		o.PGData = a.o.DataDir
	}
	o.Incremental = !full
	o.Logger = a.log.With("component", "backup", "repo", r.String())
	a.log.Info("backup starting", "why", why, "incremental", o.Incremental)
	m, err := backup.Push(ctx, r, o)
	if err != nil {
		if ctx.Err() != nil {
			a.log.Info("backup abandoned: the sidecar stops or the role changed", "err", err)
			return
		}
		msg := err.Error()
		s.lastErr.Store(&msg)
		s.failures.Add(1)
		a.log.Error("backup failed", "why", why, "err", err)
		return
	}
	s.lastErr.Store(nil)
	a.log.Info("backup done", "id", m.ID, "type", m.Type, "stop_lsn", m.StopLSN.String())
	a.refreshRepository()
}

// wantFull applies FullEvery: a full backup when the newest backup's chain
// already has FullEvery-1 incrementals (or there is no backup).
func (s *scheduler) wantFull(ctx context.Context, a *Agent) bool {
	if s.policy.FullEvery <= 1 {
		return true
	}
	ms, err := backup.List(ctx, a.o.Repos[0])
	if err != nil || len(ms) == 0 {
		return true
	}
	newest := ms[0]
	for _, m := range ms[1:] {
		if m.StopTime.After(newest.StopTime) {
			newest = m
		}
	}
	chain, broken, err := backup.Chain(ctx, a.o.Repos[0], newest)
	if err != nil || broken != "" {
		return true
	}
	return len(chain) >= s.policy.FullEvery
}
