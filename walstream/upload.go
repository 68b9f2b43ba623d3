package walstream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage/retry"
)

// uploader pushes the spooled files in order (the leftovers of a previous
// run first), and the unfinished segment as a .partial every
// PartialInterval when it grew. It returns when the queue is closed and
// drained (after a last partial upload), when ctx ends, or with a
// permanent error (a conflict).
func (r *receiver) uploader(ctx context.Context, pending []string) error {
	for _, name := range pending {
		if err := r.uploadRetrying(ctx, name); err != nil {
			return err
		}
	}
	tick := time.NewTicker(r.o.PartialInterval)
	defer tick.Stop()
	var last current // the latest partial uploaded
	for {
		select {
		case name, ok := <-r.queue:
			if !ok {
				return r.uploadPartial(ctx, &last)
			}
			if err := r.uploadRetrying(ctx, name); err != nil {
				return err
			}
		case <-tick.C:
			if err := r.uploadPartial(ctx, &last); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// uploadRetrying uploads one spooled file until it succeeds, ctx ends, or
// a conflict: a store outage only delays it.
func (r *receiver) uploadRetrying(ctx context.Context, name string) error {
	for attempt := 1; ; attempt++ {
		err := r.uploadOne(ctx, name)
		if err == nil {
			return nil
		}
		if permanent(err) {
			r.m.uploadFailed(err)
			return fmt.Errorf("walstream: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		r.m.uploadFailed(err)
		backoff := r.o.retryPolicy().Backoff(attempt)
		r.log.Warn("upload failed; retrying", "segment", name, "attempt", attempt, "backoff", backoff, "err", err)
		if retry.Sleep(ctx, backoff) != nil {
			return nil
		}
	}
}

// uploadOne stores one spooled file: segments and history files exactly
// as archive-push does, .partial files by overwriting; then removes it
// from the spool and advances the flush position.
func (r *receiver) uploadOne(ctx context.Context, name string) error {
	start := time.Now()
	p := filepath.Join(r.o.SpoolDir, name)
	f, err := pg.ParseWALFileName(name, r.size)
	if err != nil {
		return err
	}
	switch f.Kind {
	case pg.KindPartial:
		// Push checks the lineage record for the files it stores; this
		// one is stored here.
		if err := r.pusher.Permit(ctx, name); err != nil {
			return err
		}
		key, err := repo.WALKey(name, r.size)
		if err != nil {
			return err
		}
		file, err := os.Open(p)
		if err != nil {
			return err
		}
		err = r.putAll(ctx, key, file, r.size.Bytes())
		file.Close()
		if err != nil {
			return err
		}
		r.log.Info("partial segment of an ended timeline uploaded", "segment", name, "timeline", uint32(f.TLI))
	default:
		if err := r.pusher.Push(ctx, p); err != nil {
			return err
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	switch f.Kind {
	case pg.KindPartial:
		r.m.uploadDone(uploadPartial, pg.InvalidLSN, time.Since(start))
		return nil
	case pg.KindHistory:
		r.m.uploadDone(uploadOther, pg.InvalidLSN, time.Since(start))
		return nil
	}
	r.m.uploadDone(uploadSegment, r.size.StartLSN(f.SegNo+1), time.Since(start))
	r.deletePartials(ctx, name)
	r.advanceFlushed(r.size.StartLSN(f.SegNo + 1))
	return nil
}

// uploadPartial uploads the segment being received as <segment>.partial
// when it grew since the last upload. The flush position moves to its end
// only when every earlier byte is durable already. It returns an error
// only when the lineage record fences this server (permanent); other
// failures are logged and retried at the next interval.
func (r *receiver) uploadPartial(ctx context.Context, last *current) error {
	r.mu.Lock()
	cur := r.cur
	r.mu.Unlock()
	if cur.name == "" || cur.end <= cur.start || (cur.name == last.name && cur.end <= last.end) {
		return nil
	}
	f, err := os.Open(cur.path)
	if err != nil {
		return nil // completed and renamed meanwhile: the segment itself follows
	}
	defer f.Close()
	key, err := repo.WALKey(cur.name+".partial", r.size)
	if err != nil {
		return nil
	}
	start := time.Now()
	err = r.pusher.Permit(ctx, cur.name+".partial")
	if err == nil {
		err = r.putPrefix(ctx, key, f, int64(cur.end-r.size.StartLSN(r.size.SegNoBefore(cur.end))), r.size.Bytes())
	}
	if err != nil {
		if ctx.Err() == nil {
			r.m.uploadFailed(err)
			if permanent(err) {
				return fmt.Errorf("walstream: %w", err)
			}
			r.log.Warn("partial upload failed; retrying at the next interval", "segment", cur.name, "err", err)
		}
		return nil
	}
	*last = cur
	r.m.uploadDone(uploadPartial, cur.end, time.Since(start))
	flushed := r.moveFlushed(cur.start, cur.end)
	r.log.Debug("partial uploaded", append([]any{"segment", cur.name + ".partial", "lsn", cur.end,
		"duration", time.Since(start), "flushed", flushed}, r.m.lagAttrs()...)...)
	return nil
}
