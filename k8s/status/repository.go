package status

import (
	"context"
	"fmt"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// FromRepository fills r.Backup from the repository's complete backups:
// the newest by stop time, its age at r.Time, and how many there are.
// A repository that cannot be read is reported in r.Backup.Error (and
// returned), so the rest of the report still stands.
func FromRepository(ctx context.Context, rp *repo.Repo, r *Report) error {
	r.Backup = Backup{Checked: true}
	list, err := backup.List(ctx, rp)
	if err != nil {
		err = fmt.Errorf("status: list backups in %s: %w", rp, err)
		r.Backup.Error = err.Error()
		return err
	}
	r.Backup.Count = len(list)
	var newest *backup.Manifest
	for _, m := range list {
		if newest == nil || m.StopTime.After(newest.StopTime) {
			newest = m
		}
	}
	if err := lineageOf(ctx, rp, r); err != nil {
		return err
	}
	if newest != nil {
		stopped := newest.StopTime.UTC()
		r.Backup.LastID = newest.ID
		r.Backup.LastType = string(newest.Type)
		r.Backup.LastStoppedAt = &stopped
		r.Backup.AgeSeconds = round(max(r.Time.Sub(stopped).Seconds(), 0))
	}
	return nil
}

// RepositoryError records in r that no repository could be opened, so the
// backup rules report it instead of staying silent.
func RepositoryError(r *Report, err error) {
	r.Backup = Backup{Checked: true, Error: err.Error()}
}

// lineageOf reads the repository's lineage record into r.Lineage and says
// whether r, a primary, is fenced by it. A promotion in progress (a
// timeline newer than the record's, not fenced) is not: walferry promote
// records it a moment later.
func lineageOf(ctx context.Context, rp *repo.Repo, r *Report) error {
	g, ok, err := rp.Lineage(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if !ok {
		return nil
	}
	r.Lineage = LineageOf(g)
	if r.Role == RolePrimary && r.Timeline <= uint32(g.Timeline) {
		if err := g.PermitsPrimary(pg.TimeLineID(r.Timeline)); err != nil {
			r.Lineage.Fenced, r.Lineage.Why = true, err.Error()
		}
	}
	return nil
}

// LineageOf is the status form of a generation.
func LineageOf(g repo.Generation) *Lineage {
	l := &Lineage{Generation: g.Number, Reason: g.Reason, Instance: g.Instance, Site: g.Site, Timeline: uint32(g.Timeline), Time: g.Time.UTC()}
	if g.FencedAt != pg.InvalidLSN {
		l.FencedAt = g.FencedAt.String()
	}
	return l
}
