package status

import (
	"context"
	"fmt"

	"github.com/walferry/walferry/backup"
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
