// Package archive is the engine behind the hooks PostgreSQL calls:
// archive-push (archive_command) and archive-get (restore_command), with
// look-ahead pushing of further .ready segments, a prefetch spool for
// recovery, and a daemon that serves both over a unix socket so each hook
// call skips start-up costs.
//
// A Pusher and a Getter are long-lived: the command line builds one per
// call, the daemon one for its lifetime.
package archive

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage/retry"
)

// Errors of the archive domain. Match with errors.Is.
var (
	// ErrNotArchived: archive-get found the file in no repository. For
	// restore_command this is the normal end of the archive, reported
	// quietly with exit status 1.
	ErrNotArchived = errors.New("not in the archive")
	// ErrConflict: a file with different content is already archived under
	// the name being pushed (split-brain, or a wrong repository). Nothing
	// is overwritten; the error names both checksums.
	ErrConflict = failure.New(failure.Conflict, "a different file is already archived under this name")
	// ErrNoSuchFile: the file archive-push was asked to archive does not
	// exist. A local mistake (a wrong path), not a store failure: retrying
	// cannot help.
	ErrNoSuchFile = failure.New(failure.NoSuchFile, "no such file to archive")
)

// CheckName checks, before any I/O, that name can be the name of a file
// the hooks handle: a WAL segment, .history, .backup or .partial file of
// some segment size (the cluster's is known only once its control file is
// read; Push and Get check against it). Anything else, a path with a
// directory, "..", a NUL byte, is the caller's mistake: the error is
// classified as usage.
func CheckName(name string) error {
	// The smallest segment size, 1 MiB, has the widest set of names:
	// 4096 segments per xlog id.
	anySize, err := pg.NewWALSegmentSize(pg.MinWALSegmentSize)
	if err != nil {
		return err
	}
	if _, err := pg.ParseWALFileName(name, anySize); err != nil {
		return badName(err)
	}
	return nil
}

// badName classifies a file name that is no WAL file name as the
// caller's mistake, with the fix.
func badName(err error) error {
	return failure.Wrap(failure.Usage, fmt.Errorf("%w (want a WAL file name like 000000010000000000000001, 00000002.history or a .backup or .partial file's name, as PostgreSQL passes it)", err))
}

// Config is what pushing and getting need: the opened repositories, the
// local cluster they were checked against, and a logger.
type Config struct {
	// Repos are every configured repository, opened and already checked to
	// belong to Cluster (repo.Metadata.Matches). A push succeeds only when
	// every one holds the file; a get reads the first that has it.
	Repos []*repo.Repo
	// Cluster identifies the local cluster.
	Cluster repo.Cluster
	// SegmentSize is the cluster's WAL segment size.
	SegmentSize pg.WALSegmentSize
	// Log receives operational messages; nil discards them.
	Log *slog.Logger
	// Retry bounds the retries of one upload to one repository, which the
	// store's retry decorator cannot repeat (it is fed from a pipe); zero
	// fields take retry.DefaultPolicy's, the configuration's default.
	Retry retry.Policy
	// Unreachable are the errors of configured repositories that could
	// not be opened (repos.OpenAvailable) and are not in Repos. A get of
	// a file none of Repos has then fails naming them, instead of
	// reporting the file not archived: it may be in one of them.
	Unreachable []error
}

func (c Config) logger() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// waitFor waits until wg's count falls to zero or ctx is done, and reports
// whether the count fell (when ctx ends first, the goroutines keep running).
func waitFor(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
