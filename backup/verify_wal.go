package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// walListing is the archive's listing, by kind.
type walListing struct {
	segments map[pg.TimeLineID]map[pg.SegNo]storage.ObjectInfo
	others   []walListedObject // .partial and .backup files
	history  map[pg.TimeLineID]storage.ObjectInfo
	newest   pg.TimeLineID
}

type walListedObject struct {
	info  storage.ObjectInfo
	segNo pg.SegNo
}

func (w *walListing) has(tli pg.TimeLineID, s pg.SegNo) bool {
	_, ok := w.segments[tli][s]
	return ok
}

func (v *verifier) listWAL(ctx context.Context, size pg.WALSegmentSize) (*walListing, error) {
	w := &walListing{segments: map[pg.TimeLineID]map[pg.SegNo]storage.ObjectInfo{}, history: map[pg.TimeLineID]storage.ObjectInfo{}}
	err := v.r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		f, ok := repo.ParseWALKey(oi.Key, size)
		if !ok {
			return nil
		}
		w.newest = max(w.newest, f.TLI)
		switch f.Kind {
		case pg.KindSegment:
			if w.segments[f.TLI] == nil {
				w.segments[f.TLI] = map[pg.SegNo]storage.ObjectInfo{}
			}
			w.segments[f.TLI][f.SegNo] = oi
		case pg.KindHistory:
			w.history[f.TLI] = oi
		default:
			w.others = append(w.others, walListedObject{info: oi, segNo: f.SegNo})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list WAL in %s: %w", v.r, err)
	}
	return w, nil
}

// recoveryPath says which timeline's copy of each segment recovery to the
// newest timeline reads: the timeline that wrote the segment's last byte.
type recoveryPath struct {
	newest  pg.TimeLineID
	entries []pg.HistoryEntry
	known   bool // false when the newest timeline's history is missing
	size    pg.WALSegmentSize
}

func (t recoveryPath) at(s pg.SegNo) pg.TimeLineID {
	last := t.size.StartLSN(s) + pg.LSN(t.size.Bytes()-1)
	return pg.TimelineAt(t.entries, t.newest, last)
}

func (v *verifier) readHistory(ctx context.Context, w *walListing, size pg.WALSegmentSize) (recoveryPath, error) {
	t := recoveryPath{newest: w.newest, size: size, known: true}
	if w.newest <= 1 {
		return t, nil
	}
	oi, ok := w.history[w.newest]
	if !ok {
		t.known = false
		v.problem(Problem{Kind: ProblemHistory, Message: fmt.Sprintf("timeline %d: its history file %s is missing: recovery cannot follow it",
			w.newest, pg.HistoryFileName(w.newest))})
		return t, nil
	}
	obj, err := v.r.Get(ctx, oi.Key)
	if err != nil {
		return t, fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
	}
	defer obj.Close()
	entries, err := pg.ParseHistory(obj)
	if err == nil {
		err = pg.ValidateHistory(entries, w.newest)
	}
	if err != nil {
		if !errors.Is(err, codec.ErrCorrupt) && (storage.IsRetryable(err) || ctx.Err() != nil) {
			return t, err
		}
		t.known = false
		kind := ProblemHistory
		if errors.Is(err, codec.ErrCorrupt) {
			kind = ProblemWALCorrupt
		}
		v.problem(Problem{Kind: kind, Key: oi.Key, Message: fmt.Sprintf("timeline %d: history file %s: %v", w.newest, oi.Key, err)})
		return t, nil
	}
	t.entries = entries
	for _, e := range entries {
		if e.TLI > 1 {
			if _, ok := w.history[e.TLI]; !ok {
				v.problem(Problem{Kind: ProblemHistory, Message: fmt.Sprintf("timeline %d: its history file %s is missing",
					e.TLI, pg.HistoryFileName(e.TLI))})
			}
		}
	}
	return t, nil
}

// present reports whether segment s is archived where recovery along the
// path looks for it (any timeline when the path is unknown).
func (t recoveryPath) present(w *walListing, s pg.SegNo) (pg.TimeLineID, bool) {
	if t.known {
		tli := t.at(s)
		return tli, w.has(tli, s)
	}
	for tli := t.newest; tli >= 1; tli-- {
		if w.has(tli, s) {
			return tli, true
		}
	}
	return t.newest, false
}

func (v *verifier) checkWAL(ctx context.Context, selected []*Manifest) error {
	size, err := v.r.Metadata().SegmentSize()
	if err != nil {
		return err
	}
	w, err := v.listWAL(ctx, size)
	if err != nil {
		return err
	}
	if err := v.checkLineage(ctx, w, size); err != nil {
		return err
	}
	rp, err := v.readHistory(ctx, w, size)
	if err != nil {
		return err
	}
	first, haveFirst := v.backupsWAL(w, rp, selected, size)
	if !v.o.WAL {
		return nil
	}
	return v.continuity(ctx, w, rp, selected, first, haveFirst)
}

// walRange returns the segments backup m needs, s0 to s1 on timeline tli;
// ok is false when its start_wal and stop_wal name no such range (a broken
// manifest rule, reported when the manifest was read).
func walRange(m *Manifest, size pg.WALSegmentSize) (tli pg.TimeLineID, s0, s1 pg.SegNo, ok bool) {
	tli, s0, err1 := pg.ParseSegmentName(m.StartWAL, size)
	_, s1, err2 := pg.ParseSegmentName(m.StopWAL, size)
	return tli, s0, s1, err1 == nil && err2 == nil && s0 <= s1
}

// backupsWAL reports the WAL every backup needs that is not archived,
// whatever --wal says: without it the backup cannot be restored. It
// returns the oldest backup's first segment.
func (v *verifier) backupsWAL(w *walListing, rp recoveryPath, selected []*Manifest, size pg.WALSegmentSize) (first pg.SegNo, haveFirst bool) {
	for _, m := range selected {
		tli, s0, s1, ok := walRange(m, size)
		if !ok {
			continue
		}
		if !haveFirst || s0 < first {
			first, haveFirst = s0, true
		}
		var missing []pg.SegNo
		for s := s0; s <= s1; s++ {
			if w.has(tli, s) {
				continue
			}
			if _, ok := rp.present(w, s); !ok {
				missing = append(missing, s)
			}
		}
		for _, r := range segRuns(missing) {
			v.problem(Problem{Kind: ProblemBackupWAL, Backups: []string{m.ID},
				Message: fmt.Sprintf("backup %s: WAL %s missing: the backup cannot be restored",
					m.ID, segRangeText(tli, r, size))})
		}
	}
	return first, haveFirst
}

// pathRange returns the oldest and the newest segment archived on the
// recovery path; onPath is false when there is none.
func (w *walListing) pathRange(rp recoveryPath) (lo, last pg.SegNo, onPath bool) {
	for tli, segs := range w.segments {
		for s := range segs {
			if ptli, _ := rp.present(w, s); rp.known && ptli != tli {
				continue // a branch recovery does not follow
			}
			if !onPath || s < lo {
				lo = s
			}
			if !onPath || s > last {
				last = s
			}
			onPath = true
		}
	}
	return lo, last, onPath
}

// continuity checks the archive from the oldest verified backup's start
// (or the oldest segment) to the newest segment on the recovery path, and
// reads every WAL file in that range again.
func (v *verifier) continuity(ctx context.Context, w *walListing, rp recoveryPath, selected []*Manifest, first pg.SegNo, haveFirst bool) error {
	wc := &WALCheck{Timelines: []pg.TimeLineID{}}
	v.rep.WAL = wc
	lo, last, onPath := w.pathRange(rp)
	if !haveFirst {
		first = lo
	}
	if !onPath || last < first {
		if !onPath {
			v.note("the archive holds no WAL segment on the timelines recovery follows")
		}
		return v.rereadWAL(ctx, w, first, first, onPath)
	}
	var missing []pg.SegNo
	var missingTLI []pg.TimeLineID
	seenTLI := map[pg.TimeLineID]bool{}
	for s := first; s <= last; s++ {
		tli, ok := rp.present(w, s)
		if !seenTLI[tli] {
			seenTLI[tli] = true
			wc.Timelines = append(wc.Timelines, tli)
		}
		wc.Segments++
		if !ok {
			missing = append(missing, s)
			missingTLI = append(missingTLI, tli)
		}
	}
	t0, _ := rp.present(w, first)
	t1, _ := rp.present(w, last)
	wc.From, wc.To = pg.SegmentName(t0, first, rp.size), pg.SegmentName(t1, last, rp.size)
	wc.Missing = len(missing)
	v.reportGaps(missing, missingTLI, selected, rp.size)
	return v.rereadWAL(ctx, w, first, last, true)
}

// reportGaps reports the missing segments, grouped by timeline and
// consecutive numbers, naming the backups whose point-in-time recovery
// stops before each gap.
func (v *verifier) reportGaps(missing []pg.SegNo, missingTLI []pg.TimeLineID, selected []*Manifest, size pg.WALSegmentSize) {
	for i := 0; i < len(missing); {
		j := i
		for j+1 < len(missing) && missing[j+1] == missing[j]+1 && missingTLI[j+1] == missingTLI[i] {
			j++
		}
		r := [2]pg.SegNo{missing[i], missing[j]}
		var affected []string
		for _, m := range selected {
			if _, _, s1, ok := walRange(m, size); ok && s1 < r[0] {
				affected = append(affected, m.ID)
			}
		}
		msg := fmt.Sprintf("timeline %d: %s missing", missingTLI[i], segRangeText(missingTLI[i], r, size))
		if len(affected) > 0 {
			msg += " (point-in-time recovery from " + strings.Join(affected, ", ") + " stops before it)"
		}
		v.problem(Problem{Kind: ProblemWALGap, Message: msg})
		i = j + 1
	}
}

// rereadWAL reads every WAL file in [first, last] and every history file
// whole, checking their checksums.
func (v *verifier) rereadWAL(ctx context.Context, w *walListing, first, last pg.SegNo, haveRange bool) error {
	var infos []storage.ObjectInfo
	for _, oi := range w.history {
		infos = append(infos, oi)
	}
	if haveRange {
		for _, segs := range w.segments {
			for s, oi := range segs {
				if s >= first && s <= last {
					infos = append(infos, oi)
				}
			}
		}
		for _, o := range w.others {
			if o.segNo >= first && o.segNo <= last {
				infos = append(infos, o.info)
			}
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.o.Jobs)
	var n, bytes atomic.Int64
	for _, oi := range infos {
		g.Go(func() error {
			obj, err := v.r.Get(gctx, oi.Key)
			if errors.Is(err, storage.ErrNotExist) {
				return nil // removed since the listing (backup-delete)
			}
			if err != nil && !errors.Is(err, codec.ErrCorrupt) {
				return fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
			}
			var read int64
			if err == nil {
				read, err = io.Copy(io.Discard, obj)
				obj.Close()
			}
			if err != nil {
				if !errors.Is(err, codec.ErrCorrupt) {
					return fmt.Errorf("read %s in %s: %w", oi.Key, v.r, err)
				}
				v.problem(Problem{Kind: ProblemWALCorrupt, Key: oi.Key,
					Message: fmt.Sprintf("WAL file %s is corrupt (%v)", oi.Key, err)})
			}
			n.Add(1)
			bytes.Add(read)
			return nil
		})
	}
	err := g.Wait()
	v.rep.WAL.Objects, v.rep.WAL.Bytes = int(n.Load()), bytes.Load()
	return err
}

// segRuns groups sorted segment numbers into runs.
func segRuns(s []pg.SegNo) [][2]pg.SegNo {
	var out [][2]pg.SegNo
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		out = append(out, [2]pg.SegNo{s[i], s[j]})
		i = j + 1
	}
	return out
}

func segRangeText(tli pg.TimeLineID, r [2]pg.SegNo, size pg.WALSegmentSize) string {
	if r[0] == r[1] {
		return pg.SegmentName(tli, r[0], size)
	}
	return pg.SegmentName(tli, r[0], size) + ".." + pg.SegmentName(tli, r[1], size)
}
