package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// pickBackup returns the backup to restore (o.Backup, or the newest
// usable one), nil when the repository has none usable; the newer ones
// skipped are in the result with their reasons.
func (b *bootstrapper) pickBackup(ctx context.Context) (*candidate, error) {
	return b.pickBackupOr(ctx, b.o.Backup)
}

// pickBackupOr is pickBackup for a chosen id ("" for the newest usable).
// A usable backup has its whole chain of manifests and every WAL segment
// from its start to its end archived: without them the restored standby
// never becomes consistent.
func (b *bootstrapper) pickBackupOr(ctx context.Context, id string) (*candidate, error) {
	if b.o.Repo == nil {
		return nil, nil
	}
	var list []*backup.Manifest
	if id != "" && !strings.EqualFold(id, backup.Latest) {
		m, err := backup.ReadManifest(ctx, b.o.Repo, id)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: backup %s: %w", id, err)
		}
		list = []*backup.Manifest{m}
	} else {
		all, err := backup.List(ctx, b.o.Repo)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: list backups in %s: %w", b.o.Repo, err)
		}
		list = all
	}
	b.res.Skipped = nil
	for i := len(list) - 1; i >= 0; i-- {
		m := list[i]
		reason, err := b.unusable(ctx, m)
		if err != nil {
			return nil, err
		}
		if reason == "" {
			b.log.Info("backup chosen", "backup", m.ID, "stop_lsn", m.StopLSN, "bytes", m.Stats.DataBytes, "skipped", len(b.res.Skipped))
			return &candidate{ID: m.ID, Bytes: m.Stats.DataBytes, StopLSN: m.StopLSN, Timeline: m.Timeline}, nil
		}
		b.log.Warn("backup skipped", "backup", m.ID, "reason", reason)
		b.res.Skipped = append(b.res.Skipped, SkippedBackup{ID: m.ID, Reason: reason})
	}
	if id != "" && len(b.res.Skipped) == 1 {
		return nil, fmt.Errorf("bootstrap: backup %s cannot be restored: %s; choose another (walferry backup-list) or leave --backup out", id, b.res.Skipped[0].Reason)
	}
	return nil, nil
}

// unusable says why m cannot make a standby, "" when it can.
func (b *bootstrapper) unusable(ctx context.Context, m *backup.Manifest) (string, error) {
	_, broken, err := backup.Chain(ctx, b.o.Repo, m)
	if err != nil {
		return "", fmt.Errorf("bootstrap: read the chain of backup %s: %w", m.ID, err)
	}
	if broken != "" {
		return fmt.Sprintf("its parent backup %s is missing", broken), nil
	}
	size, err := b.o.Repo.Metadata().SegmentSize()
	if err != nil {
		return "", err
	}
	tli, first, err := pg.ParseSegmentName(m.StartWAL, size)
	if err != nil {
		return fmt.Sprintf("its start segment %q is not a WAL name", m.StartWAL), nil
	}
	_, last, err := pg.ParseSegmentName(m.StopWAL, size)
	if err != nil {
		return fmt.Sprintf("its stop segment %q is not a WAL name", m.StopWAL), nil
	}
	for s := first; s <= last; s++ {
		name := pg.SegmentName(tli, s, size)
		key, err := repo.WALKey(name, size)
		if err != nil {
			return "", err
		}
		if _, err := b.o.Repo.Store().Stat(ctx, key); err != nil {
			if errors.Is(err, storage.ErrNotExist) {
				return fmt.Sprintf("WAL segment %s, needed to make it consistent, is not archived", name), nil
			}
			return "", fmt.Errorf("bootstrap: check WAL %s in %s: %w", name, b.o.Repo, err)
		}
	}
	return "", nil
}

func skippedSummary(s []SkippedBackup) string {
	if len(s) == 0 {
		return "it has no backup"
	}
	var parts []string
	for _, k := range s {
		parts = append(parts, k.ID+": "+k.Reason)
	}
	return "skipped " + strings.Join(parts, "; ")
}
