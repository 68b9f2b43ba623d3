package repo

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/walferry/walferry/storage"
)

// StaleTempAge is how long a temporary object outside backups/ must have
// gone unmodified to be taken for one a killed writer left: archive-push
// writes a segment in seconds, and a live writer keeps its file changing.
const StaleTempAge = time.Hour

// TempSweep is what a sweep of stale temporary objects found.
type TempSweep struct {
	Objects int   `json:"objects"`
	Bytes   int64 `json:"bytes"`
	// Removed is false for a report (repo check), true once removed.
	Removed bool `json:"removed"`
}

// SweepTemps finds, and unless dryRun removes, the temporary objects that
// writers killed mid-write (kill -9, a crash) left behind, invisible to
// listings and so to every other cleanup: under backups/ those last
// modified before backupCutoff (every writer there holds the backup lease,
// so a holder passes the time it acquired it, less a margin for clock
// skew), elsewhere those unmodified for StaleTempAge. Stores without such
// objects (object stores write atomically) report nothing.
func (r *Repo) SweepTemps(ctx context.Context, backupCutoff time.Time, dryRun bool) (TempSweep, error) {
	sw, ok := storage.Innermost(r.store).(storage.TempSweeper)
	if !ok {
		return TempSweep{}, nil
	}
	others := time.Now().Add(-StaleTempAge)
	stale := func(oi storage.ObjectInfo) bool {
		if strings.HasPrefix(oi.Key, BackupsPrefix) {
			return oi.ModTime.Before(backupCutoff)
		}
		return oi.ModTime.Before(others)
	}
	found, err := sw.SweepTemps(ctx, "", stale, dryRun)
	res := TempSweep{Objects: len(found), Removed: !dryRun && err == nil}
	for _, oi := range found {
		res.Bytes += oi.Size
	}
	if err != nil {
		return res, fmt.Errorf("sweep stale temporary objects in %s: %w", r, err)
	}
	return res, nil
}
