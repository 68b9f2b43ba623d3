package restore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// clockSkewAllowance is how much later than the newest WAL object's time a
// --target-time may be and still be tried: commit times come from the
// database server's clock, object times from the store's.
const clockSkewAllowance = 5 * time.Minute

// newestWAL is the WAL object stored last.
type newestWAL struct {
	key string
	at  time.Time
}

// findNewestWAL lists the repository's WAL (segments, and .partial files
// when withPartial) and returns the one stored last; ok is false when the
// repository holds none.
func findNewestWAL(ctx context.Context, r *repo.Repo, withPartial bool) (newestWAL, bool, error) {
	var n newestWAL
	err := r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		if strings.HasPrefix(oi.Key, repo.HistoryPrefix) || strings.HasSuffix(oi.Key, ".backup") ||
			(!withPartial && strings.HasSuffix(oi.Key, ".partial")) {
			return nil
		}
		if oi.ModTime.After(n.at) {
			n = newestWAL{key: oi.Key, at: oi.ModTime}
		}
		return nil
	})
	if err != nil {
		return n, false, fmt.Errorf("list the WAL of %s: %w", r, err)
	}
	return n, n.key != "", nil
}

// checkTimeReachable refuses a --target-time later than every WAL object in
// the repository: no commit after the target was archived, so recovery
// would run out of WAL before reaching it and PostgreSQL would refuse to
// start ("recovery ended before configured recovery target was reached").
// A target within the clock-skew allowance is tried, with a warning.
func checkTimeReachable(ctx context.Context, r *repo.Repo, o Options) error {
	if o.Target.Time == "" || o.Standby {
		return nil
	}
	at, _, err := parseTargetTime(o.Target.Time)
	if err != nil {
		return invalidf("--target-time %q: %v", o.Target.Time, err)
	}
	n, ok, err := findNewestWAL(ctx, r, o.RestoreCommand.Partial)
	if err != nil || !ok {
		return err // no WAL at all: the backup's own check reports it
	}
	newest := n.at.UTC().Format("2006-01-02 15:04:05Z07:00")
	switch {
	case at.After(n.at.Add(clockSkewAllowance)):
		return invalidf("--target-time %s is after the newest WAL in %s (%s, stored %s): recovery would end before reaching it and PostgreSQL would refuse to start; "+
			"choose a time up to %s, restore without a target to replay all that is archived, or archive the primary's current WAL first (SELECT pg_switch_wal())",
			o.Target.Time, r, n.key, newest, newest)
	case at.After(n.at):
		o.Log.Warn("the recovery target is after the newest WAL in the repository (within the allowance for clock skew): recovery may end before reaching it",
			"target_time", o.Target.Time, "newest_wal", n.key, "stored", newest)
	}
	return nil
}
