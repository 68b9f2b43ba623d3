package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// DeleteOptions select what Delete removes: exactly one of RetainFull,
// Before and ID.
type DeleteOptions struct {
	// RetainFull keeps the RetainFull newest full backups and every
	// incremental built on them; older chains are deleted.
	RetainFull int
	// Before deletes the chains (a full and the incrementals built on it)
	// whose newest member stopped before this time. The chain of the
	// newest backup is always kept.
	Before time.Time
	// ID deletes one backup; it is refused while incrementals depend on it.
	ID string
	// DryRun reports what would be deleted and deletes nothing (it takes
	// no lease and writes nothing).
	DryRun bool
	// Jobs is how many objects are deleted at once; 0 means 8.
	Jobs int
}

// Validate checks that exactly one rule is chosen and that it is usable.
func (o DeleteOptions) Validate() error {
	n := 0
	if o.RetainFull != 0 {
		n++
	}
	if !o.Before.IsZero() {
		n++
	}
	if o.ID != "" {
		n++
	}
	switch {
	case n == 0:
		return errors.New("say what to delete: --retain-full N, --before TIME or a backup id")
	case n > 1:
		return errors.New("--retain-full, --before and a backup id exclude each other: choose one rule")
	case o.RetainFull < 0:
		return fmt.Errorf("--retain-full %d: keep at least 1 full backup", o.RetainFull)
	case o.ID != "":
		return CheckID(o.ID, false)
	}
	return nil
}

// ErrHasDependents: a backup cannot be deleted alone because incremental
// backups are built on it.
var ErrHasDependents = errors.New("incremental backups depend on it")

// DeleteResult says what Delete removed (or, for a dry run, would remove).
type DeleteResult struct {
	Repository string `json:"repository"`
	DryRun     bool   `json:"dry_run"`
	// Rule is the rule applied, as given ("retain-full 2", "before ...", "id ...").
	Rule    string          `json:"rule"`
	Deleted []DeletedBackup `json:"deleted"`
	// Kept lists the backups that remain, oldest first.
	Kept []string `json:"kept"`
	// Incomplete lists leftovers of interrupted backups (objects under
	// backups/<id>/ without a manifest), removed too.
	Incomplete []DeletedBackup `json:"incomplete"`
	// WALObjects and WALBytes count the archived WAL files removed: every
	// segment, .partial and .backup file before WALKeptFrom (history files
	// are always kept).
	WALObjects  int    `json:"wal_objects"`
	WALBytes    int64  `json:"wal_bytes"`
	WALKeptFrom string `json:"wal_kept_from,omitempty"`
	// Temporary counts the temporary objects writers killed mid-write left
	// (invisible to listings): removed, or in a dry run found.
	Temporary repo.TempSweep `json:"temporary_objects"`
	// Notes explain what was deliberately left alone.
	Notes []string `json:"notes,omitempty"`
	// BytesFreed is the stored size of everything removed.
	BytesFreed int64 `json:"bytes_freed"`
}

// DeletedBackup is one backup (or incomplete backup prefix) removed.
type DeletedBackup struct {
	ID       string    `json:"id"`
	Type     Type      `json:"type,omitempty"`
	StopTime time.Time `json:"stop_time,omitzero"`
	Objects  int       `json:"objects"`
	Bytes    int64     `json:"bytes"`
	// Reason says which rule selected it.
	Reason string `json:"reason"`
}

// Delete applies one retention rule to the repository. A backup is only
// ever deleted together with every backup that depends on it, so no chain
// is broken; each backup disappears atomically (its manifest is deleted
// first, its data objects after). Leftovers of interrupted backups are
// removed, then the archived WAL that no remaining backup needs: every
// segment, .partial and .backup file whose segment number is below the
// oldest remaining backup's start segment, on every timeline. History
// files are never deleted, and when no backup remains no WAL is deleted.
//
// Delete holds the repository's "backup" lease (the one backup-push
// holds) for the whole operation, so it never runs beside a backup; a
// dry run takes no lease.
func Delete(ctx context.Context, r *repo.Repo, o DeleteOptions) (*DeleteResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Jobs <= 0 {
		o.Jobs = 8
	}
	res := &DeleteResult{Repository: r.String(), DryRun: o.DryRun, Rule: o.rule(),
		Deleted: []DeletedBackup{}, Kept: []string{}, Incomplete: []DeletedBackup{}}
	tempCutoff := time.Now().Add(-repo.StaleTempAge) // a dry run holds no lease
	if !o.DryRun {
		tempCutoff = time.Now().Add(-tempSkewMargin)
		lease, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "backup-delete " + res.Rule})
		if err != nil {
			return nil, err
		}
		var stop func()
		ctx, stop = leaseContext(ctx, lease)
		defer func() {
			stop()
			releaseLease(ctx, lease)
		}()
	}
	res, err := deleteLocked(ctx, r, o, res)
	if err == nil {
		res.Temporary, err = r.SweepTemps(ctx, tempCutoff, o.DryRun)
		if !o.DryRun {
			res.BytesFreed += res.Temporary.Bytes
		}
	}
	return res, leaseLost(ctx, "backup-delete", err)
}

// leaseContext returns a context cancelled when ctx is or when the lease
// is lost, with the lease's cause.
func leaseContext(ctx context.Context, l *repo.Lease) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(l.Context(), func() { cancel(context.Cause(l.Context())) })
	return ctx, func() { stop(); cancel(nil) }
}

// leaseLost reports a failure that losing the lease caused as the lost
// lease (repo.ErrLocked, exit 8), not as the cancellation it led to
// (which reads as "interrupted").
func leaseLost(ctx context.Context, what string, err error) error {
	if cause := context.Cause(ctx); err != nil && cause != nil && errors.Is(cause, repo.ErrLocked) {
		return fmt.Errorf("%s stopped: %w", what, cause)
	}
	return err
}

func (o DeleteOptions) rule() string {
	switch {
	case o.RetainFull > 0:
		return "retain-full " + strconv.Itoa(o.RetainFull)
	case !o.Before.IsZero():
		return "before " + o.Before.UTC().Format(time.RFC3339)
	}
	return "id " + o.ID
}

func deleteLocked(ctx context.Context, r *repo.Repo, o DeleteOptions, res *DeleteResult) (*DeleteResult, error) {
	segSize, err := r.Metadata().SegmentSize()
	if err != nil {
		return res, err
	}
	ids, incomplete, err := IDs(ctx, r)
	if err != nil {
		return res, err
	}
	manifests := make([]*Manifest, 0, len(ids))
	for _, id := range ids {
		m, err := ReadManifest(ctx, r, id)
		if err != nil {
			return res, fmt.Errorf("cannot tell which backups depend on %s, nothing deleted: %w", id, err)
		}
		manifests = append(manifests, m)
	}
	reasons, err := planDeletion(manifests, o)
	if err != nil {
		return res, err
	}

	// Plan everything before deleting anything: the WAL boundary and the
	// incomplete prefixes a remaining backup still points into.
	var kept []*Manifest
	needed := map[string]bool{}
	for _, m := range manifests {
		if _, gone := reasons[m.ID]; gone {
			continue
		}
		kept = append(kept, m)
		res.Kept = append(res.Kept, m.ID)
		for _, dep := range m.DependsOn() {
			needed[dep] = true
		}
	}
	var boundary pg.SegNo
	for i, m := range kept {
		// start_wal is the segment of the start LSN (Manifest.Check).
		if seg := segSize.SegNoOf(m.StartLSN); i == 0 || seg < boundary {
			boundary, res.WALKeptFrom = seg, m.StartWAL
		}
	}

	// Newest first: an incremental goes before its parent, so an
	// interruption never leaves an incremental without its parent.
	for i := len(manifests) - 1; i >= 0; i-- {
		m := manifests[i]
		reason, gone := reasons[m.ID]
		if !gone {
			continue
		}
		d := DeletedBackup{ID: m.ID, Type: m.Type, StopTime: m.StopTime, Reason: reason}
		if err := deleteBackupObjects(ctx, r, m.ID, true, o, &d); err != nil {
			return res, err
		}
		res.Deleted = append(res.Deleted, d)
		res.BytesFreed += d.Bytes
	}
	sort.Slice(res.Deleted, func(i, j int) bool { return res.Deleted[i].ID < res.Deleted[j].ID })

	for _, id := range incomplete {
		if needed[id] {
			res.Notes = append(res.Notes, fmt.Sprintf("%s has no manifest but a remaining backup points into it: left alone (run walferry verify)", repo.BackupPrefix(id)))
			continue
		}
		d := DeletedBackup{ID: id, Reason: "incomplete: an interrupted backup left objects without a manifest"}
		if err := deleteBackupObjects(ctx, r, id, false, o, &d); err != nil {
			return res, err
		}
		res.Incomplete = append(res.Incomplete, d)
		res.BytesFreed += d.Bytes
	}
	if o.DryRun && len(res.Incomplete) > 0 {
		res.Notes = append(res.Notes, "incomplete backups are listed without the lease: one may be a backup-push running now (the real run takes the lease and cannot overlap one)")
	}

	if len(kept) == 0 {
		res.Notes = append(res.Notes, "no backup remains, so no WAL was deleted: without a backup nothing tells which WAL is no longer needed")
		return res, nil
	}
	n, bytes, err := deleteWALBefore(ctx, r, segSize, boundary, o)
	res.WALObjects, res.WALBytes = n, bytes
	res.BytesFreed += bytes
	return res, err
}

// planDeletion returns the backups the rule deletes, with the reason.
// Backups are grouped into chains (connected by Parent and by the objects
// their extents point at); retain-full and before delete whole chains.
func planDeletion(ms []*Manifest, o DeleteOptions) (map[string]string, error) {
	byID := make(map[string]*Manifest, len(ms))
	for _, m := range ms {
		byID[m.ID] = m
	}
	deps := func(m *Manifest) []string {
		out := m.DependsOn()
		if m.Parent != "" {
			out = append(out, m.Parent)
		}
		return out
	}
	out := map[string]string{}

	if o.ID != "" {
		if byID[o.ID] == nil {
			return nil, fmt.Errorf("%w: there is no backup %s (see walferry backup-list)", ErrNoBackup, o.ID)
		}
		var dependents []string
		for _, m := range ms {
			for _, d := range deps(m) {
				if d == o.ID && m.ID != o.ID {
					dependents = append(dependents, m.ID)
					break
				}
			}
		}
		if len(dependents) > 0 {
			return nil, fmt.Errorf("cannot delete backup %s: %w: %s; delete them first (newest first), or use --retain-full / --before, which delete whole chains",
				o.ID, ErrHasDependents, strings.Join(dependents, ", "))
		}
		out[o.ID] = "requested"
		return out, nil
	}

	// Union-find over the dependency edges gives the chains.
	parent := map[string]string{}
	var find func(string) string
	find = func(id string) string {
		p, ok := parent[id]
		if !ok || p == id {
			return id
		}
		root := find(p)
		parent[id] = root
		return root
	}
	union := func(a, b string) {
		if ra, rb := find(a), find(b); ra != rb {
			parent[ra] = rb
		}
	}
	for _, m := range ms {
		parent[m.ID] = m.ID
	}
	for _, m := range ms {
		for _, d := range deps(m) {
			if byID[d] != nil {
				union(m.ID, d)
			}
		}
	}
	chains := map[string][]*Manifest{}
	for _, m := range ms { // oldest first, so members are in age order
		root := find(m.ID)
		chains[root] = append(chains[root], m)
	}

	switch {
	case o.RetainFull > 0:
		var fulls []string
		for _, m := range ms {
			if m.Type == Full {
				fulls = append(fulls, m.ID)
			}
		}
		keep := map[string]bool{}
		if n := len(fulls) - o.RetainFull; n > 0 {
			fulls = fulls[n:]
		}
		for _, id := range fulls {
			keep[find(id)] = true
		}
		for root, members := range chains {
			if keep[root] {
				continue
			}
			reason := fmt.Sprintf("older than the %d newest full backups", o.RetainFull)
			if o.RetainFull == 1 {
				reason = "older than the newest full backup"
			}
			if !hasFull(members) {
				reason = "its chain has no full backup (parent " + missingParent(members, byID) + " is gone): it cannot be restored"
			}
			for _, m := range members {
				out[m.ID] = reason
			}
		}
	default:
		newest := ms[len(ms)-1:] // ms is oldest first; empty when there is no backup
		for root, members := range chains {
			if len(newest) > 0 && find(newest[0].ID) == root {
				continue // never delete the newest backup's chain
			}
			last := members[0]
			for _, m := range members {
				if m.StopTime.After(last.StopTime) {
					last = m
				}
			}
			if !last.StopTime.Before(o.Before) {
				continue
			}
			reason := fmt.Sprintf("its chain ended before %s", o.Before.UTC().Format(time.RFC3339))
			if len(members) == 1 {
				reason = fmt.Sprintf("stopped before %s", o.Before.UTC().Format(time.RFC3339))
			}
			for _, m := range members {
				out[m.ID] = reason
			}
		}
	}
	return out, nil
}

func hasFull(ms []*Manifest) bool {
	for _, m := range ms {
		if m.Type == Full {
			return true
		}
	}
	return false
}

func missingParent(ms []*Manifest, byID map[string]*Manifest) string {
	for _, m := range ms {
		if m.Parent != "" && byID[m.Parent] == nil {
			return m.Parent
		}
	}
	return "?"
}

// deleteBackupObjects deletes (or, dry, counts) every object under backup id's
// prefix; the manifest, when there is one, goes first.
func deleteBackupObjects(ctx context.Context, r *repo.Repo, id string, hasManifest bool, o DeleteOptions, d *DeletedBackup) error {
	manifest := repo.BackupManifestKey(id)
	var keys []string
	err := r.Store().List(ctx, repo.BackupPrefix(id), func(oi storage.ObjectInfo) error {
		d.Objects++
		d.Bytes += oi.Size
		if oi.Key != manifest {
			keys = append(keys, oi.Key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list backup %s in %s: %w", id, r, err)
	}
	if o.DryRun {
		return nil
	}
	if hasManifest {
		if err := r.Store().Delete(ctx, manifest); err != nil {
			return fmt.Errorf("delete backup %s: its manifest %s: %w", id, manifest, err)
		}
	}
	if err := deleteKeysParallel(ctx, r, keys, o.Jobs); err != nil {
		return fmt.Errorf("delete backup %s (its manifest is gone; the next backup-delete removes the rest): %w", id, err)
	}
	return nil
}

// deleteWALBefore deletes every archived segment, .partial and .backup
// file whose segment number is below boundary, on every timeline (LSNs,
// hence segment numbers, are shared by all timelines). History files and
// names that are not WAL files are left alone.
func deleteWALBefore(ctx context.Context, r *repo.Repo, segSize pg.WALSegmentSize, boundary pg.SegNo, o DeleteOptions) (int, int64, error) {
	var keys []string
	var bytes int64
	err := r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		if strings.HasPrefix(oi.Key, repo.HistoryPrefix) {
			return nil
		}
		f, ok := repo.ParseWALKey(oi.Key, segSize)
		if !ok || f.Kind == pg.KindHistory || f.SegNo >= boundary {
			return nil
		}
		keys = append(keys, oi.Key)
		bytes += oi.Size
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("list WAL in %s: %w", r, err)
	}
	if !o.DryRun {
		if err := deleteKeysParallel(ctx, r, keys, o.Jobs); err != nil {
			return 0, 0, fmt.Errorf("delete WAL no backup needs: %w", err)
		}
	}
	return len(keys), bytes, nil
}

// deleteKeysParallel deletes keys, jobs at a time; deleting a missing key is fine.
func deleteKeysParallel(ctx context.Context, r *repo.Repo, keys []string, jobs int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	var mu sync.Mutex
	var first error
	for _, k := range keys {
		g.Go(func() error {
			if err := r.Store().Delete(gctx, k); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("delete %s in %s: %w", k, r, err)
				}
				mu.Unlock()
				return err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		if first != nil {
			return first
		}
		return err
	}
	return nil
}

// ParseBefore reads backup-delete's --before TIME: an RFC 3339 time
// ("2026-11-01T00:00:00Z"), a UTC time "2006-01-02 15:04:05" or date
// "2006-01-02", or an age: a Go duration ("36h", "90m") or a number of
// days or weeks ("14d", "2w"), meaning now minus that.
func ParseBefore(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, errors.New("--before needs a time: RFC 3339 (2026-11-01T00:00:00Z), '2026-11-01 00:00:00' (UTC) or an age (14d, 36h)")
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	var age time.Duration
	if n, unit := s[:len(s)-1], s[len(s)-1]; unit == 'd' || unit == 'w' {
		v, err := strconv.ParseUint(n, 10, 32)
		if err != nil {
			return time.Time{}, fmt.Errorf("--before %q: %q is not a whole number of days or weeks", s, n)
		}
		age = time.Duration(v) * 24 * time.Hour
		if unit == 'w' {
			age *= 7
		}
	} else {
		d, err := time.ParseDuration(s)
		if err != nil {
			return time.Time{}, fmt.Errorf("--before %q is neither a time (2026-11-01T00:00:00Z, '2026-11-01 00:00:00' UTC) nor an age (14d, 2w, 36h)", s)
		}
		age = d
	}
	if age <= 0 {
		return time.Time{}, fmt.Errorf("--before %q: the age must be positive", s)
	}
	return now.Add(-age).UTC(), nil
}
