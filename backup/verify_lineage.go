package backup

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// ProblemLineage: WAL in the repository that its lineage record does not
// permit (repo.Generation.PermitsWAL): a timeline no recorded primary
// wrote, or an old timeline continued past its fork.
const ProblemLineage = "lineage"

// UnownedTimeline is WAL of one timeline that the repository's lineage
// record does not own: a server it does not name as primary archived it
// (typically a copy promoted by restore --target-action promote whose
// archive_command still pointed at the repository, before walferry
// checked the record, or by another tool). Recovery with
// recovery_target_timeline 'latest' follows a newer such timeline and
// misses what the real primary committed.
type UnownedTimeline struct {
	Timeline pg.TimeLineID `json:"timeline"`
	// History says the timeline's history file is archived.
	History bool `json:"history"`
	// Files counts its other WAL files the record does not permit; First
	// and Last name the lowest and highest.
	Files int    `json:"files"`
	First string `json:"first,omitempty"`
	Last  string `json:"last,omitempty"`
	// Message says what it is and the fix, on one line.
	Message string `json:"message"`
}

// UnownedTimelines names the timelines whose history file is archived in
// r but that r's lineage record does not own: the ones recovery to the
// latest timeline would follow. It reads the record and lists the
// history files only (restore's check, cheap on any archive size); verify
// checks every WAL file (unownedTimelines). No record: none.
func UnownedTimelines(ctx context.Context, r *repo.Repo) ([]UnownedTimeline, error) {
	g, ok, err := r.Lineage(ctx)
	if err != nil || !ok {
		return nil, err
	}
	size, err := r.Metadata().SegmentSize()
	if err != nil {
		return nil, err
	}
	var names []string
	err = r.Store().List(ctx, repo.HistoryPrefix, func(oi storage.ObjectInfo) error {
		names = append(names, path.Base(oi.Key))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the history files of %s: %w", r, err)
	}
	return unownedTimelines(g, names, size), nil
}

// unownedTimelines groups the WAL file names g does not permit by
// timeline, in timeline order.
func unownedTimelines(g repo.Generation, names []string, size pg.WALSegmentSize) []UnownedTimeline {
	byTLI := map[pg.TimeLineID]*UnownedTimeline{}
	for _, name := range names {
		f, err := pg.ParseWALFileName(name, size)
		if err != nil || g.PermitsWAL(name, size) == nil {
			continue
		}
		u := byTLI[f.TLI]
		if u == nil {
			u = &UnownedTimeline{Timeline: f.TLI}
			byTLI[f.TLI] = u
		}
		if f.Kind == pg.KindHistory {
			u.History = true
			continue
		}
		u.Files++
		if u.First == "" || name < u.First {
			u.First = name
		}
		if name > u.Last {
			u.Last = name
		}
	}
	var out []UnownedTimeline
	for _, u := range byTLI {
		u.Message = unownedMessage(g, *u)
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b UnownedTimeline) int { return int(a.Timeline) - int(b.Timeline) })
	return out
}

func unownedMessage(g repo.Generation, u UnownedTimeline) string {
	var what []string
	if u.History {
		what = append(what, fmt.Sprintf("%08X.history", uint32(u.Timeline)))
	}
	switch {
	case u.Files == 1:
		what = append(what, "WAL file "+u.First)
	case u.Files > 1:
		what = append(what, fmt.Sprintf("%d WAL files (%s .. %s)", u.Files, u.First, u.Last))
	}
	if u.Timeline > g.Timeline {
		return fmt.Sprintf("timeline %d is not the lineage record's: %s were archived by a server the record does not name as primary "+
			"(its %s); a copy promoted by restore --target-action promote with archive_command still pointing here? "+
			"Recovery to the latest timeline follows it and misses what the real primary committed: restore with --target-timeline %d; "+
			"if that server is the new primary run walferry promote on it, otherwise delete those files from the repository",
			u.Timeline, strings.Join(what, " and "), g, g.Timeline)
	}
	return fmt.Sprintf("timeline %d continues past the point the lineage record's %s ended it: %s were archived by a fenced server "+
		"(an old primary); recovery does not follow them, walferry rejoin turns that server into a standby",
		u.Timeline, g, strings.Join(what, " and "))
}

// checkLineage reports the WAL in the listing that the repository's
// lineage record does not permit: a newer timeline as a problem (recovery
// to the latest timeline would follow it), an old timeline continued past
// its fork as a note.
func (v *verifier) checkLineage(ctx context.Context, w *walListing, size pg.WALSegmentSize) error {
	g, ok, err := v.r.Lineage(ctx)
	if err != nil || !ok {
		return err
	}
	var names []string
	for _, segs := range w.segments {
		for _, oi := range segs {
			names = append(names, path.Base(oi.Key))
		}
	}
	for _, oi := range w.history {
		names = append(names, path.Base(oi.Key))
	}
	for _, o := range w.others {
		names = append(names, path.Base(o.info.Key))
	}
	for _, u := range unownedTimelines(g, names, size) {
		v.rep.UnownedTimelines = append(v.rep.UnownedTimelines, u)
		if u.Timeline > g.Timeline {
			v.problem(Problem{Kind: ProblemLineage, Message: u.Message})
			continue
		}
		// An old primary's WAL past its fork is a branch recovery does
		// not read (a failover's usual leftover): worth knowing, harmless.
		v.note(u.Message)
	}
	return nil
}
