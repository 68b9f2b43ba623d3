package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/storage"
)

// The lineage record says who the primary is. It is a sequence of
// generations, each an object lineage/<generation, 20 digits>.json created
// with a conditional create (S3 If-None-Match, GCS ifGenerationMatch=0,
// Azure If-None-Match: *, an exclusive create on a filesystem): the newest
// generation is the record, and taking the next one is a compare-and-swap,
// so of two promotions racing exactly one wins. Generations are never
// rewritten nor deleted; docs/repository-format.md describes them.

// LineagePrefix holds the generations of the lineage record.
const LineagePrefix = "lineage/"

var (
	// ErrFenced: a writer is not the lineage record's primary: its WAL is
	// of a timeline the record has left behind, or beyond the point where
	// a newer generation fenced it.
	ErrFenced = failure.New(failure.Fenced, "fenced by the lineage record")
	// ErrLineageRace: another process took the generation first.
	ErrLineageRace = failure.New(failure.Locked, "another process took the next generation of the lineage record first")
)

// Generation is one entry of the lineage record: from Time on, the
// primary is Instance of Site, on Timeline (which began at TimelineStart).
type Generation struct {
	Number   uint64    `json:"generation"`
	Time     time.Time `json:"time"`
	Instance string    `json:"instance"`
	Site     string    `json:"site,omitempty"`
	// Reason says how this generation came to be: "init" (the first
	// primary), "switchover" (a planned demote: Instance is the old
	// primary, waiting to hand over), "promote" (after a switchover),
	// "failover" (promote --force).
	Reason   string `json:"reason"`
	SystemID uint64 `json:"system_identifier,string"`
	// Timeline is the primary's timeline and TimelineStart the LSN where
	// it began (0/0 for timeline 1).
	Timeline      pg.TimeLineID `json:"timeline"`
	TimelineStart pg.LSN        `json:"timeline_start_lsn"`
	// FencedAt, when set, ends Timeline's WAL: nothing of Timeline (or an
	// older timeline) past it may be written any more. A demote sets it to
	// the old primary's shutdown checkpoint end; a failover to the point
	// the new primary forked at.
	FencedAt pg.LSN `json:"fenced_at_lsn,omitempty"`
	// Switchover is the demoted primary's token, for the promote that
	// follows a planned switchover.
	Switchover *SwitchoverToken `json:"switchover,omitempty"`
}

// SwitchoverToken is what a demoted primary hands over: the position a
// standby must have replayed exactly before it promotes.
type SwitchoverToken struct {
	From          string        `json:"from"`
	SystemID      uint64        `json:"system_identifier,string"`
	Timeline      pg.TimeLineID `json:"timeline"`
	CheckpointLSN pg.LSN        `json:"checkpoint_lsn"`
	RedoLSN       pg.LSN        `json:"redo_lsn"`
	// EndLSN is the end of the shutdown checkpoint record: a standby that
	// replayed up to it has everything the old primary wrote.
	EndLSN pg.LSN    `json:"end_lsn"`
	Time   time.Time `json:"time"`
}

// String describes the generation for messages: "generation 3 (failover to
// site-b/pg-0 on timeline 2 at 2026-12-06 08:00:00Z)".
func (g Generation) String() string {
	who := g.Instance
	if g.Site != "" {
		who = g.Site + "/" + g.Instance
	}
	return fmt.Sprintf("generation %d (%s: %s, timeline %d, at %s)", g.Number, g.Reason, who, g.Timeline, g.Time.UTC().Format("2006-01-02 15:04:05Z07:00"))
}

// lineageKey is the key of generation n.
func lineageKey(n uint64) string { return fmt.Sprintf("%s%020d.json", LineagePrefix, n) }

// Lineage returns the newest generation of the lineage record; ok is false
// when the repository has none (no role change was ever recorded: nothing
// is fenced). It costs one listing and one read.
func (r *Repo) Lineage(ctx context.Context) (g Generation, ok bool, err error) {
	var newest uint64
	var found bool
	err = r.store.List(ctx, LineagePrefix, func(oi storage.ObjectInfo) error {
		name := strings.TrimSuffix(strings.TrimPrefix(oi.Key, LineagePrefix), ".json")
		n, err := strconv.ParseUint(name, 10, 64)
		if err != nil || len(name) != 20 {
			return nil // not a generation: ignored, as other tools' files are
		}
		if !found || n > newest {
			newest, found = n, true
		}
		return nil
	})
	if err != nil {
		return Generation{}, false, fmt.Errorf("read the lineage record of %s: %w", r, err)
	}
	if !found {
		return Generation{}, false, nil
	}
	g, err = r.readGeneration(ctx, newest)
	return g, err == nil, err
}

func (r *Repo) readGeneration(ctx context.Context, n uint64) (Generation, error) {
	obj, err := r.Get(ctx, lineageKey(n))
	if err != nil {
		return Generation{}, fmt.Errorf("read generation %d of the lineage record of %s: %w", n, r, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(io.LimitReader(obj, 1<<20))
	if err != nil {
		return Generation{}, fmt.Errorf("read generation %d of the lineage record of %s: %w", n, r, err)
	}
	var g Generation
	if err := json.Unmarshal(b, &g); err != nil || g.Number != n {
		return Generation{}, failure.Wrap(failure.Corrupt, fmt.Errorf("generation %d of the lineage record of %s does not parse (%v): "+
			"it was written by something else than walferry; move %s away", n, r, err, lineageKey(n)))
	}
	return g, nil
}

// NextGeneration records g as the generation after prev (prev.Number 0:
// none yet) and returns it with its number and time set. When another
// process took that number first it fails with ErrLineageRace, naming the
// winner.
func (r *Repo) NextGeneration(ctx context.Context, prev uint64, g Generation) (Generation, error) {
	g.Number = prev + 1
	if g.Time.IsZero() {
		g.Time = time.Now().UTC()
	}
	if g.SystemID == 0 {
		g.SystemID = r.meta.SystemID
	}
	if g.SystemID != r.meta.SystemID {
		return Generation{}, fmt.Errorf("%w: generation for system identifier %d in a repository of %d", ErrWrongCluster, g.SystemID, r.meta.SystemID)
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return Generation{}, err
	}
	_, err = r.PutIfAbsent(ctx, lineageKey(g.Number), bytes.NewReader(append(b, '\n')))
	if errors.Is(err, storage.ErrExist) {
		winner, rerr := r.readGeneration(ctx, g.Number)
		if rerr != nil {
			return Generation{}, fmt.Errorf("%w (generation %d); reading it: %v", ErrLineageRace, g.Number, rerr)
		}
		return Generation{}, fmt.Errorf("%w: %s", ErrLineageRace, winner)
	}
	if err != nil {
		return Generation{}, fmt.Errorf("record generation %d in the lineage record of %s: %w", g.Number, r, err)
	}
	return g, nil
}

// PermitsWAL returns nil when the primary g names may have name (a WAL
// segment, .partial or history file) written into the repository, and an
// error matching ErrFenced otherwise:
//   - WAL of g's timeline is permitted up to FencedAt, when set;
//   - WAL of an older timeline only up to where g's timeline began (the
//     history every timeline shares); a .partial of it from before that
//     point too (the new primary archives one at promotion);
//   - WAL of a newer timeline is a promotion the record does not know, and
//     so is its history file: recovery with recovery_target_timeline
//     'latest' would follow it and miss what the real primary committed.
func (g Generation) PermitsWAL(name string, size pg.WALSegmentSize) error {
	f, err := pg.ParseWALFileName(name, size)
	if err != nil {
		return err
	}
	if f.Kind == pg.KindHistory {
		if f.TLI > g.Timeline {
			return fmt.Errorf("%w: %s describes timeline %d, which the lineage record does not know: its %s; "+
				"a copy promoted without walferry promote (a restore with --target-action promote keeps archive_command) must not archive here: "+
				"point its archive_command elsewhere, or run walferry promote on it if it is the new primary", ErrFenced, name, f.TLI, g)
		}
		return nil
	}
	if f.Kind == pg.KindBackup {
		return nil
	}
	start := f.StartLSN(size)
	end := start + pg.LSN(size.Bytes())
	switch {
	case f.TLI > g.Timeline:
		return fmt.Errorf("%w: %s is of timeline %d, which the lineage record does not know: its %s; "+
			"a copy promoted without walferry promote (a restore with --target-action promote keeps archive_command) must not archive here: "+
			"point its archive_command elsewhere, or run walferry promote on it if it is the new primary", ErrFenced, name, f.TLI, g)
	case f.TLI < g.Timeline:
		if f.Kind == pg.KindPartial && start < g.TimelineStart {
			return nil
		}
		if end <= g.TimelineStart {
			return nil
		}
		return fmt.Errorf("%w: %s continues timeline %d past %s, where timeline %d began: the lineage record's %s fenced it; "+
			"this server is an old primary: run walferry rejoin on it", ErrFenced, name, f.TLI, g.TimelineStart, g.Timeline, g)
	}
	if g.FencedAt != pg.InvalidLSN && end > g.FencedAt && !(f.Kind == pg.KindPartial && start < g.FencedAt) {
		return fmt.Errorf("%w: %s is past %s, where the lineage record's %s ended timeline %d: "+
			"this server was demoted or failed over: run walferry rejoin on it", ErrFenced, name, g.FencedAt, g, g.Timeline)
	}
	return nil
}

// PermitsPrimary returns nil when a server of timeline tli may act as the
// record's primary (take backups, stream its WAL into the repository):
// it is on g's timeline and that timeline is not fenced.
func (g Generation) PermitsPrimary(tli pg.TimeLineID) error {
	if tli != g.Timeline {
		return fmt.Errorf("%w: this server is on timeline %d, the lineage record's %s: run walferry rejoin on it, or walferry promote if it is the new primary",
			ErrFenced, tli, g)
	}
	if g.FencedAt != pg.InvalidLSN {
		return fmt.Errorf("%w: the lineage record's %s ended timeline %d at %s: the primary was demoted; promote the standby (walferry promote)",
			ErrFenced, g, g.Timeline, g.FencedAt)
	}
	return nil
}
