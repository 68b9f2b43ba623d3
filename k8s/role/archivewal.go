package role

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// walArchiver pushes what a stopped server left unarchived, with the same
// engine as archive_command.
type walArchiver struct {
	pusher *archive.Pusher
	walDir string
	size   pg.WALSegmentSize
}

func newWALArchiver(repos []*repo.Repo, cd *pg.ControlData, dataDir string, log *slog.Logger) (*walArchiver, error) {
	cl, err := repo.ClusterFromControlData(cd, dataDir)
	if err != nil {
		return nil, failure.Wrap(failure.Postgres, err)
	}
	size, err := cd.SegmentSize()
	if err != nil {
		return nil, failure.Wrap(failure.Postgres, err)
	}
	p, err := archive.NewPusher(archive.Config{Repos: repos, Cluster: cl, SegmentSize: size, Log: log}, archive.PushOptions{Ahead: 0})
	if err != nil {
		return nil, err
	}
	return &walArchiver{pusher: p, walDir: filepath.Join(dataDir, "pg_wal"), size: size}, nil
}

func (a *walArchiver) close(ctx context.Context) { _ = a.pusher.Close(ctx) }

// pushReady archives every file PostgreSQL marked .ready (history files
// first, then in name order, as PostgreSQL's archiver does) and marks each
// .done, as the archiver would have.
func (a *walArchiver) pushReady(ctx context.Context) ([]string, error) {
	status := filepath.Join(a.walDir, "archive_status")
	entries, err := os.ReadDir(status)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, failure.Wrap(failure.Postgres, err)
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".ready"); ok {
			names = append(names, n)
		}
	}
	slices.SortFunc(names, func(x, y string) int {
		hx, hy := strings.HasSuffix(x, ".history"), strings.HasSuffix(y, ".history")
		if hx != hy {
			if hx {
				return -1
			}
			return 1
		}
		return strings.Compare(x, y)
	})
	for _, n := range names {
		if err := a.pusher.Push(ctx, filepath.Join(a.walDir, n)); err != nil {
			return nil, fmt.Errorf("archive %s, which PostgreSQL had not archived yet: %w", n, err)
		}
		if err := os.Rename(filepath.Join(status, n+".ready"), filepath.Join(status, n+".done")); err != nil {
			return nil, failure.Wrap(failure.Postgres, err)
		}
	}
	return names, nil
}

// push archives one file of pg_wal (a history file PostgreSQL may not have
// archived yet: archiving the same content twice succeeds).
func (a *walArchiver) push(ctx context.Context, name string) error {
	return a.pusher.Push(ctx, filepath.Join(a.walDir, name))
}

// pushPartial archives the segment of tli holding end as <segment>.partial:
// its bytes up to end, then zeros to the segment's size. That is the
// content a standby that streamed exactly to end holds once its tail is
// zeroed (see zeroTail), so both servers archive the same object under
// that name. It returns "" when end is a segment boundary (the segment is
// complete and PostgreSQL archives it as such).
func (a *walArchiver) pushPartial(ctx context.Context, tli pg.TimeLineID, end pg.LSN) (string, error) {
	segBytes := uint64(a.size.Bytes())
	off := int64(uint64(end) % segBytes)
	if off == 0 {
		return "", nil
	}
	seg := pg.SegmentNameOf(tli, end, a.size)
	tmp, err := os.MkdirTemp(filepath.Join(a.walDir), ".walferry-partial-")
	if err != nil {
		return "", failure.Wrap(failure.Postgres, err)
	}
	defer os.RemoveAll(tmp)
	name := seg + ".partial"
	if err := copyPrefix(filepath.Join(a.walDir, seg), filepath.Join(tmp, name), off, int64(segBytes)); err != nil {
		return "", failure.Wrap(failure.Postgres, fmt.Errorf("prepare %s: %w", name, err))
	}
	if err := a.pusher.Push(ctx, filepath.Join(tmp, name)); err != nil {
		return "", fmt.Errorf("archive %s (the segment holding the shutdown checkpoint): %w", name, err)
	}
	return name, nil
}

// copyPrefix writes src's first n bytes to dst, which it extends with
// zeros to size.
func copyPrefix(src, dst string, n, size int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(out, in, n); err != nil {
		out.Close()
		return err
	}
	if err := out.Truncate(size); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// zeroTail zeroes segment seg of walDir from off to its end: what follows
// the last record of an ended timeline is meaningless (a recycled
// segment's old bytes), and zeroing it makes the .partial a promoted
// standby archives equal to the one the demoted primary archived.
func zeroTail(walDir, seg string, off, size int64) error {
	f, err := os.OpenFile(filepath.Join(walDir, seg), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	zeros := make([]byte, 64<<10)
	for pos := off; pos < size; {
		n := min(int64(len(zeros)), size-pos)
		if _, err := f.WriteAt(zeros[:n], pos); err != nil {
			f.Close()
			return err
		}
		pos += n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
