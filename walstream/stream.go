package walstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// session makes one connection and streams until it fails or ctx ends.
// Every exchange with the server is bounded by ReceiveTimeout, so a link
// that hangs without closing fails the session instead of holding it.
func (r *receiver) session(ctx context.Context, pending []string) error {
	sctx, cancel := context.WithTimeout(ctx, r.receiveTimeout())
	defer cancel()
	c, err := replication.Connect(sctx, r.o.Conn)
	if err != nil {
		return err
	}
	r.conn = c
	sys, err := c.Identify(sctx)
	if err != nil {
		return err
	}
	rp := r.o.Repos[0]
	if err := rp.Metadata().Matches(repo.ClusterFromInfo(sys.Info, c.String()), rp.String()); err != nil {
		return fmt.Errorf("walstream: %w", err)
	}
	restart, err := r.ensureSlot(sctx)
	if err != nil {
		return err
	}
	cancel()
	conn := c.PgConn()
	r.m.connectedTo(sys.XLogPos)
	if r.tli == 0 {
		r.tli = sys.Timeline
		start, err := r.startPosition(ctx, conn, pending, restart, sys.XLogPos)
		if err != nil {
			return err
		}
		r.next = start
		r.advanceFlushed(start)
	}
	// Always start at a segment boundary: the segment file is rewritten
	// from its beginning.
	r.closeSegment()
	r.next = r.size.StartLSN(r.size.SegNoOf(r.next))
	r.m.receivedTo(r.next)
	for {
		sctx, cancel := context.WithTimeout(ctx, r.receiveTimeout())
		err := r.queueHistory(sctx, conn, r.tli)
		if err == nil {
			err = r.startReplication(sctx, conn)
		}
		cancel()
		if err != nil {
			return err
		}
		r.m.onTimeline(r.tli)
		r.m.streaming()
		r.log.Info("streaming", "lsn", r.next, "timeline", uint32(r.tli),
			"segment", pg.SegmentNameOf(r.tli, r.next, r.size), "slot", r.o.Slot)
		tli, startpos, err := r.copyLoop(ctx, conn)
		if err != nil {
			return err
		}
		if err := r.switchTimeline(ctx, tli, startpos); err != nil {
			return err
		}
	}
}

// ensureSlot creates the physical slot when missing and returns its
// restart LSN (InvalidLSN without a slot or when it has none).
func (r *receiver) ensureSlot(ctx context.Context) (pg.LSN, error) {
	if r.o.Slot == "" {
		return pg.InvalidLSN, nil
	}
	slot, created, err := r.conn.CreatePhysicalSlot(ctx, r.o.Slot)
	if errors.Is(err, fs.ErrExist) {
		// Another kind of slot has the name: no retry cures that.
		return 0, fmt.Errorf("walstream: %w: %w (--slot)", repo.ErrWrongCluster, err)
	}
	if err != nil {
		return 0, err
	}
	if created {
		r.log.Info("created physical replication slot", "slot", r.o.Slot)
	}
	return slot.RestartLSN, nil
}

// startPosition is where a new run starts: after the newest complete
// segment that the repositories (all of them) and the spool hold on the
// server's timeline r.tli, or else on the newest of its ancestors that
// they hold (streaming then follows the server's history from there, so a
// promotion while no receiver ran leaves no gap); else the slot's restart
// point, else the server's current position; always at the start of a
// segment. It may move r.tli to an ancestor.
func (r *receiver) startPosition(ctx context.Context, conn *pgconn.PgConn, pending []string, restart, serverPos pg.LSN) (pg.LSN, error) {
	next, found, err := r.heldNext(ctx, r.tli, pending)
	if err != nil || found {
		return next, err
	}
	if r.tli > 1 {
		th, err := pglogrepl.TimelineHistory(ctx, conn, int32(r.tli))
		if err != nil {
			return 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", r.tli, err)
		}
		entries, err := pg.ParseHistory(bytes.NewReader(th.Content))
		if err != nil {
			return 0, err
		}
		for i := len(entries) - 1; i >= 0; i-- {
			e := entries[i]
			next, found, err := r.heldNext(ctx, e.TLI, pending)
			if err != nil {
				return 0, err
			}
			if !found {
				continue
			}
			child := r.tli
			if i+1 < len(entries) {
				child = entries[i+1].TLI
			}
			switchSeg := r.size.StartLSN(r.size.SegNoOf(e.SwitchLSN))
			if next > switchSeg {
				r.tli, next = child, switchSeg
			} else {
				r.tli = e.TLI
			}
			r.log.Info("resuming on an ancestor of the server's timeline", "lsn", next, "timeline", uint32(r.tli))
			return next, nil
		}
	}
	if restart.IsValid() {
		return r.size.StartLSN(r.size.SegNoOf(restart)), nil
	}
	return r.size.StartLSN(r.size.SegNoOf(serverPos)), nil
}

// heldNext returns the start of the segment after the newest complete
// segment of tli that every repository, or the spool, holds.
func (r *receiver) heldNext(ctx context.Context, tli pg.TimeLineID, pending []string) (pg.LSN, bool, error) {
	var next pg.LSN
	found := false
	for i, rp := range r.o.Repos {
		n, ok, err := r.repoNext(ctx, rp, tli)
		if err != nil {
			return 0, false, err
		}
		if !ok {
			found = false
			break
		}
		if i == 0 || n < next {
			next = n
		}
		found = true
	}
	for _, name := range pending {
		if f, err := pg.ParseWALFileName(name, r.size); err == nil && f.Kind == pg.KindSegment && f.TLI == tli {
			next = max(next, r.size.StartLSN(f.SegNo+1))
			found = true
		}
	}
	if found {
		r.log.Info("resuming after what the repository holds", "lsn", next, "timeline", uint32(tli))
	}
	return next, found, nil
}

// repoNext returns the start of the segment after the newest complete
// segment of tli in rp.
func (r *receiver) repoNext(ctx context.Context, rp *repo.Repo, tli pg.TimeLineID) (pg.LSN, bool, error) {
	var newest pg.SegNo
	found := false
	err := rp.Store().List(ctx, repo.WALPrefix+tli.Hex(), func(oi storage.ObjectInfo) error {
		f, ok := repo.ParseWALKey(oi.Key, r.size)
		if ok && f.Kind == pg.KindSegment && f.TLI == tli && (!found || f.SegNo > newest) {
			newest, found = f.SegNo, true
		}
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("list %s: %w", rp, err)
	}
	if !found {
		return 0, false, nil
	}
	return r.size.StartLSN(newest + 1), true, nil
}

// queueHistory fetches timeline tli's history file (once per run) and
// queues it for upload.
func (r *receiver) queueHistory(ctx context.Context, conn *pgconn.PgConn, tli pg.TimeLineID) error {
	if tli <= 1 || r.histories[tli] {
		return nil
	}
	th, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
	if err != nil {
		return fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
	}
	name := pg.HistoryFileName(tli)
	if th.FileName != name {
		return fmt.Errorf("TIMELINE_HISTORY %d: the server sent %q", tli, th.FileName)
	}
	if err := atomicfile.WriteFile(filepath.Join(r.o.SpoolDir, name), bytes.NewReader(th.Content), 0o600, atomicfile.Durable); err != nil {
		return fmt.Errorf("walstream: %w", err)
	}
	if err := r.enqueue(ctx, name); err != nil {
		return err
	}
	r.histories[tli] = true
	return nil
}

// startReplication sends START_REPLICATION at r.next on r.tli and waits
// for the copy stream.
func (r *receiver) startReplication(ctx context.Context, conn *pgconn.PgConn) error {
	sql := "START_REPLICATION "
	if r.o.Slot != "" {
		sql += "SLOT " + r.o.Slot + " "
	}
	sql += fmt.Sprintf("PHYSICAL %s TIMELINE %d", r.next, uint32(r.tli))
	conn.Frontend().SendQuery(&pgproto3.Query{String: sql})
	if err := conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("send START_REPLICATION: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("START_REPLICATION: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%s: %w", sql, pgconn.ErrorResponseToPgError(m))
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("%s: unexpected %T", sql, msg)
		}
	}
}

// receiveTimeout is Options.ReceiveTimeout, or its default.
func (r *receiver) receiveTimeout() time.Duration {
	if r.o.ReceiveTimeout <= 0 {
		return DefaultReceiveTimeout
	}
	return r.o.ReceiveTimeout
}

// copyLoop receives the copy stream until the timeline ends (returning the
// next timeline and where it starts), an error, or ctx ends. It waits for
// the server without polling: a status update goes out as soon as the
// uploader makes more WAL durable (it rings r.wake, which ends the wait),
// when the server asks for one, and every StatusInterval otherwise. A
// server silent for half of ReceiveTimeout is asked for a reply; silent
// for all of it, the connection is lost (errServerSilent).
func (r *receiver) copyLoop(ctx context.Context, conn *pgconn.PgConn) (pg.TimeLineID, pg.LSN, error) {
	stop := context.AfterFunc(ctx, r.wake.ring)
	defer stop()
	timeout := r.receiveTimeout()
	nextStatus := time.Now()
	heard, pinged := time.Now(), false
	for {
		if silent := time.Since(heard); silent >= timeout {
			return 0, 0, fmt.Errorf("receive: %w for %s", errServerSilent, silent.Round(time.Second))
		} else if silent >= timeout/2 && !pinged {
			if err := r.sendStatus(true); err != nil {
				return 0, 0, err
			}
			pinged = true
		}
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		if err := r.fatalErr(); err != nil {
			return 0, 0, err
		}
		r.m.logProgress(ctx, r.log)
		r.mu.Lock()
		flushMoved := r.flushed != r.lastStatus
		r.mu.Unlock()
		if flushMoved || !time.Now().Before(nextStatus) {
			if err := r.sendStatus(false); err != nil {
				return 0, 0, err
			}
			nextStatus = time.Now().Add(r.o.StatusInterval)
		}
		wait := heard.Add(timeout)
		if !pinged {
			wait = heard.Add(timeout / 2)
		}
		if nextStatus.Before(wait) {
			wait = nextStatus
		}
		wctx, done := r.wake.arm(context.WithoutCancel(ctx), wait)
		msg, err := conn.ReceiveMessage(wctx)
		woken := wctx.Err() != nil
		done()
		if err != nil {
			if woken {
				r.wakeups.Add(1)
				continue
			}
			return 0, 0, fmt.Errorf("receive: %w", err)
		}
		heard, pinged = time.Now(), false
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return 0, 0, err
				}
				r.m.serverReported(pg.LSN(pkm.ServerWALEnd))
				if pkm.ReplyRequested {
					nextStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return 0, 0, err
				}
				r.m.serverReported(pg.LSN(xld.ServerWALEnd))
				if err := r.write(ctx, pg.LSN(xld.WALStart), xld.WALData); err != nil {
					return 0, 0, err
				}
				r.m.receivedTo(r.next)
			}
		case *pgproto3.CopyDone:
			return r.endOfStream(ctx, conn)
		case *pgproto3.ErrorResponse:
			return 0, 0, pgconn.ErrorResponseToPgError(m)
		}
	}
}

// endOfStream answers the server's CopyDone and reads the next timeline.
func (r *receiver) endOfStream(ctx context.Context, conn *pgconn.PgConn) (pg.TimeLineID, pg.LSN, error) {
	conn.Frontend().Send(&pgproto3.CopyDone{})
	if err := conn.Frontend().Flush(); err != nil {
		return 0, 0, err
	}
	var tli pg.TimeLineID
	var start pg.LSN
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("end of streaming: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) != 2 {
				return 0, 0, fmt.Errorf("end of streaming: %d columns", len(m.Values))
			}
			t, err := strconv.ParseUint(string(m.Values[0]), 10, 32)
			if err != nil {
				return 0, 0, fmt.Errorf("end of streaming: next timeline %q", m.Values[0])
			}
			if start, err = pg.ParseLSN(string(m.Values[1])); err != nil {
				return 0, 0, fmt.Errorf("end of streaming: %w", err)
			}
			tli = pg.TimeLineID(t)
		case *pgproto3.ErrorResponse:
			return 0, 0, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			if tli == 0 {
				return 0, 0, errStreamEnded
			}
			return tli, start, nil
		}
	}
}

// switchTimeline finishes the old timeline at the switch point: its
// unfinished segment is queued as a .partial; streaming restarts on the
// new timeline at the start of the segment holding the switch point.
func (r *receiver) switchTimeline(ctx context.Context, tli pg.TimeLineID, startpos pg.LSN) error {
	if tli <= r.tli {
		return fmt.Errorf("walstream: the server switched from timeline %d to %d", r.tli, tli)
	}
	r.log.Info("timeline switch", "timeline", uint32(tli), "lsn", startpos, "from_timeline", uint32(r.tli))
	if r.seg != nil && r.size.Offset(r.next) != 0 {
		name := pg.SegmentName(r.tli, r.segNo, r.size)
		if err := r.seg.Sync(); err != nil {
			return fmt.Errorf("walstream: %w", err)
		}
		r.closeSegment()
		recv := filepath.Join(r.o.SpoolDir, name+recvSuffix)
		if err := atomicfile.RenameDurable(recv, filepath.Join(r.o.SpoolDir, name+".partial")); err != nil {
			return fmt.Errorf("walstream: %w", err)
		}
		if err := r.enqueue(ctx, name+".partial"); err != nil {
			return err
		}
	}
	r.closeSegment()
	r.tli = tli
	r.next = r.size.StartLSN(r.size.SegNoOf(startpos))
	return nil
}

// write stores WAL received at walStart into the spool.
func (r *receiver) write(ctx context.Context, walStart pg.LSN, data []byte) error {
	if walStart > r.next {
		return fmt.Errorf("walstream: the server sent WAL at %s but %s was expected", walStart, r.next)
	}
	if skip := uint64(r.next - walStart); skip > 0 {
		if skip >= uint64(len(data)) {
			return nil
		}
		data = data[skip:]
	}
	segSize := uint64(r.size.Bytes())
	for len(data) > 0 {
		if r.seg == nil {
			if err := r.openSegment(); err != nil {
				return err
			}
		}
		off := r.size.Offset(r.next)
		n := min(uint64(len(data)), segSize-off)
		if _, err := r.seg.WriteAt(data[:n], int64(off)); err != nil {
			return fmt.Errorf("walstream: write spool: %w", err)
		}
		r.next += pg.LSN(n)
		data = data[n:]
		r.progressed = true
		r.mu.Lock()
		r.cur.end = r.next
		r.mu.Unlock()
		if r.size.Offset(r.next) == 0 {
			if err := r.completeSegment(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// openSegment opens the spool file of the segment holding r.next.
func (r *receiver) openSegment() error {
	r.segNo = r.size.SegNoOf(r.next)
	name := pg.SegmentName(r.tli, r.segNo, r.size)
	p := filepath.Join(r.o.SpoolDir, name+recvSuffix)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("walstream: %w", err)
	}
	// Full size from the start (sparse): a partial upload is then a
	// segment-sized file, zero after the received bytes, like PostgreSQL's.
	if err := f.Truncate(r.size.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("walstream: %w", err)
	}
	r.seg = f
	r.mu.Lock()
	r.cur = current{name: name, path: p, start: r.size.StartLSN(r.segNo), end: r.next}
	r.mu.Unlock()
	return nil
}

func (r *receiver) closeSegment() {
	if r.seg != nil {
		r.seg.Close()
		r.seg = nil
	}
	r.mu.Lock()
	r.cur = current{}
	r.mu.Unlock()
}

// completeSegment makes the full segment durable in the spool under its
// own name and queues it for upload.
func (r *receiver) completeSegment(ctx context.Context) error {
	name := pg.SegmentName(r.tli, r.segNo, r.size)
	if err := r.seg.Sync(); err != nil {
		return fmt.Errorf("walstream: sync spool: %w", err)
	}
	r.closeSegment()
	if err := atomicfile.RenameDurable(filepath.Join(r.o.SpoolDir, name+recvSuffix), filepath.Join(r.o.SpoolDir, name)); err != nil {
		return fmt.Errorf("walstream: %w", err)
	}
	r.log.Debug("segment received", "segment", name, "timeline", uint32(r.tli))
	return r.enqueue(ctx, name)
}

// enqueue hands a spooled file to the uploader.
func (r *receiver) enqueue(ctx context.Context, name string) error {
	select {
	case r.queue <- name:
		return nil
	case <-r.upDone:
		if err := r.fatalErr(); err != nil {
			return err
		}
		return errors.New("walstream: the uploader stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendStatus reports the received and durable positions.
func (r *receiver) sendStatus(reply bool) error {
	flushed := r.flushedLSN()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn.PgConn(), pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(max(r.next, flushed)),
		WALFlushPosition: pglogrepl.LSN(flushed),
		WALApplyPosition: pglogrepl.LSN(flushed),
		ReplyRequested:   reply,
	})
	if err != nil {
		return fmt.Errorf("send status: %w", err)
	}
	r.mu.Lock()
	r.lastStatus = flushed
	r.mu.Unlock()
	return nil
}

// wakeup ends the receiving loop's wait for the server when something
// else needs it: the flush position moved, the uploader failed, ctx ended.
// A ring while no wait is armed is kept for the next one, so none is lost
// between the loop's checks and its wait.
type wakeup struct {
	mu     sync.Mutex
	cancel context.CancelFunc // of the armed wait
	rung   bool               // rung while none was armed
}

// arm returns the context of one wait: it ends at deadline or at the next
// ring (at once when one came since the last wait). done disarms it.
func (w *wakeup) arm(parent context.Context, deadline time.Time) (ctx context.Context, done func()) {
	ctx, cancel := context.WithDeadline(parent, deadline)
	w.mu.Lock()
	if w.rung {
		w.rung = false
		cancel()
	} else {
		w.cancel = cancel
	}
	w.mu.Unlock()
	return ctx, func() {
		w.mu.Lock()
		w.cancel = nil
		w.mu.Unlock()
		cancel()
	}
}

// ring ends the armed wait, or the next one.
func (w *wakeup) ring() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cancel != nil {
		w.cancel()
		w.cancel = nil
	} else {
		w.rung = true
	}
}
