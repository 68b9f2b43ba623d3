package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/k8s/status"
	"github.com/walferry/walferry/walstream"
)

// roleTasks are the goroutines of one spell as primary: the scheduled
// backups and the WAL receiver. They stop when the role changes.
type roleTasks struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startPrimaryTasks starts what a primary runs in the background;
// promoted says the instance was a standby until now.
func (a *Agent) startPrimaryTasks(ctx context.Context, promoted bool) {
	if a.primary != nil {
		return
	}
	tctx, cancel := context.WithCancel(ctx)
	t := &roleTasks{cancel: cancel}
	if a.o.WALReceive != nil {
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			a.runReceiver(tctx)
		}()
	}
	// The scheduler runs without a schedule too: it serves POST /backup.
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		a.backups.run(tctx, a, promoted && a.o.Backups.AfterPromotion)
	}()
	a.primary = t
}

// stopPrimaryTasks stops them and waits: a backup in flight is abandoned
// (no manifest is written, its objects are removed), the receiver uploads
// what it spooled.
func (a *Agent) stopPrimaryTasks() {
	if a.primary == nil {
		return
	}
	a.primary.cancel()
	a.primary.wg.Wait()
	a.primary = nil
}

// runReceiver streams the primary's own WAL into the repositories, so the
// repository trails the primary by seconds (.partial) instead of by
// archive_timeout. Permanent errors (another cluster, conflicting
// content) are retried after a minute: the agent must not die of them,
// and they are in the log and the metrics.
func (a *Agent) runReceiver(ctx context.Context) {
	o := *a.o.WALReceive
	o.Repos = a.o.Repos
	o.SegmentSize = a.segSize
	o.Registry = a.o.Registry
	if o.Log == nil {
		o.Log = a.log
	}
	if o.Conn == nil {
		connString, err := a.localConn()
		if err != nil {
			a.log.Error("wal-receive: no connection to the local server", "err", err)
			return
		}
		cfg, err := pg.ParseConnConfig(connString)
		if err != nil {
			a.log.Error("wal-receive: the local connection string does not parse", "err", err)
			return
		}
		o.Conn = &cfg.Config
	}
	for {
		err := walstream.Run(ctx, o)
		if ctx.Err() != nil {
			return
		}
		a.log.Error("wal-receive stopped; retrying in a minute", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Minute):
		}
	}
}

// actPrimary keeps the standby sites' slots on a primary.
func (a *Agent) actPrimary(ctx context.Context, rep *status.Report) {
	for _, name := range a.o.StandbySlots {
		if slices.ContainsFunc(rep.Slots, func(s status.Slot) bool { return s.Name == name }) {
			continue
		}
		if err := a.createLocalSlot(ctx, name); err != nil {
			a.log.Warn("could not create a standby site's slot", "slot", name, "err", err)
			continue
		}
		a.log.Info("created the replication slot of a standby site", "slot", name)
	}
	a.warnSlots(rep.Slots)
}

// createLocalSlot creates a physical slot that reserves WAL at once, so a
// standby site that is still bootstrapping loses nothing.
func (a *Agent) createLocalSlot(ctx context.Context, name string) error {
	if err := replication.ValidSlotName(name); err != nil {
		return err
	}
	if a.conn == nil {
		return errors.New("no connection to the local server")
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := a.conn.Exec(qctx, "SELECT pg_create_physical_replication_slot($1, true)", name)
	if err != nil {
		return fmt.Errorf("create slot %s: %w", name, err)
	}
	return nil
}

// warnSlots logs, at most once a minute per slot, a slot that holds back
// more WAL than the cap: the disk of its server fills until the standby
// comes back or the slot is dropped (or max_slot_wal_keep_size cuts it).
func (a *Agent) warnSlots(slots []status.Slot) {
	limit := a.o.Limits.MaxSlotRetained
	if limit <= 0 {
		return
	}
	now := a.o.Now()
	for _, s := range slots {
		if s.RetainedBytes <= limit || now.Sub(a.slotWarn[s.Where+"/"+s.Name]) < time.Minute {
			continue
		}
		a.slotWarn[s.Where+"/"+s.Name] = now
		a.log.Warn("a replication slot holds back too much WAL: its server's disk fills until the standby catches up or the slot is dropped",
			"slot", s.Name, "where", s.Where, "retained_bytes", s.RetainedBytes, "cap_bytes", limit, "active", s.Active,
			"fix", fmt.Sprintf("bring the standby back, or SELECT pg_drop_replication_slot('%s') on that server if it is gone; set max_slot_wal_keep_size to bound it", s.Name))
	}
}
