package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// Exit codes are part of walferry's interface; README.md documents them.
// Errors are mapped onto them here and nowhere else. The codes a daemon's
// answer can lead to are hookproto's, which walferry-hook exits with too.
const (
	exitOK          = hookproto.ExitOK          // success
	exitFailure     = hookproto.ExitFailure     // any other failure
	exitUsage       = hookproto.ExitUsage       // bad flag, argument or configuration; command not available in this build; archive-push of a missing file
	exitUnreachable = hookproto.ExitUnreachable // store or server unreachable or failing transiently: retry later
	exitPermission  = hookproto.ExitPermission  // credentials refused, access denied, wrong encryption passphrase
	exitRepository  = hookproto.ExitRepository  // no such bucket, repository not initialized, another cluster's repository; archive-push conflict
	exitCorrupt     = hookproto.ExitCorrupt     // an object failed its checksum or does not decode
	exitPostgres    = 7                         // PostgreSQL unreachable, refusing, or its data directory unreadable
	exitLocked      = 8                         // another backup-push or backup-delete holds the repository's lease
	exitInterrupted = 130                       // stopped by SIGINT or SIGTERM
)

// usageError marks errors in what the user typed.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usage(err error) error { return &usageError{err: err} }

// postgresError marks failures to reach PostgreSQL or read its data directory.
type postgresError struct{ err error }

func (e *postgresError) Error() string { return e.err.Error() }
func (e *postgresError) Unwrap() error { return e.err }

// maxHookExit is the highest status the hooks PostgreSQL runs may exit
// with: above it PostgreSQL takes the command for killed, and restarts its
// archiver (archive_command) or aborts recovery (restore_command).
const maxHookExit = 125

// hookError marks the failures of the commands PostgreSQL runs as
// archive_command and restore_command; their exit statuses follow
// PostgreSQL's rules, not only the table above:
//   - archive-push: the codes above, but never above maxHookExit (an
//     interrupted call exits 1);
//   - archive-get: 1 for every failure, whether the file is not archived
//     (printing nothing), the command line is wrong, or anything else.
type hookError struct {
	hook string // "archive-push" or "archive-get"
	err  error
}

func (e *hookError) Error() string { return e.err.Error() }
func (e *hookError) Unwrap() error { return e.err }

// hookName returns "archive-push" or "archive-get" when args run one of
// the hooks (by name or alias), else "". The command is the first argument
// that names one; a hook's status rules then apply to every failure,
// including mistakes in the flags before the command.
func (a *app) hookName(args []string) string {
	for _, arg := range args[1:] {
		if strings.HasPrefix(arg, "-") {
			continue
		}
		if cmd := a.cli.Command(arg); cmd != nil {
			if cmd.Name == "archive-push" || cmd.Name == "archive-get" {
				return cmd.Name
			}
			return ""
		}
	}
	return ""
}

// silent reports whether a failure is reported by the exit status alone:
// archive-get of a file not in the archive is how recovery learns where
// the archive ends, not an error.
func silent(err error) bool {
	return errors.Is(err, archive.ErrNotArchived)
}

// exitCode maps an error onto the documented exit codes. Order matters:
// the most specific classification wins.
func exitCode(err error) int {
	var (
		ue *usageError
		ce *config.Error
		pe *postgresError
		he *hookError
		de *archive.DaemonError

		pgConnectErr *pgconn.ConnectError
		pgErr        *pgconn.PgError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &he):
		if he.hook == "archive-get" {
			return exitFailure
		}
		if code := exitCode(he.err); code <= maxHookExit {
			return code
		}
		return exitFailure
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &de):
		// A failure the daemon reported, mapped by its class exactly as
		// walferry-hook maps it.
		return hookproto.ClassExitCode(de.Class)
	case errors.As(err, &ue), errors.As(err, &ce), errors.Is(err, archive.ErrNoSuchFile):
		return exitUsage
	case errors.Is(err, codec.ErrWrongKey), errors.Is(err, codec.ErrNoKey), errors.Is(err, repo.ErrPassphrase),
		errors.Is(err, storage.ErrPermission):
		return exitPermission
	case errors.Is(err, codec.ErrCorrupt):
		return exitCorrupt
	case errors.Is(err, storage.ErrNoBucket), errors.Is(err, repo.ErrNotInitialized),
		errors.Is(err, repo.ErrWrongCluster), errors.Is(err, repo.ErrIncompatible), errors.Is(err, repo.ErrNotRepository),
		errors.Is(err, archive.ErrConflict), errors.Is(err, backup.ErrNoBackup):
		return exitRepository
	case errors.Is(err, repo.ErrLocked):
		return exitLocked
	case errors.As(err, &pe), errors.As(err, &pgConnectErr), errors.As(err, &pgErr), errors.Is(err, backup.ErrNotReady):
		return exitPostgres
	case storage.IsRetryable(err), isNetwork(err), errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	}
	return exitFailure
}

// isNetwork reports a failure to talk over the network. Not every
// net.Error: syscall.Errno implements that interface too, and a local
// "no such file" or "disk full" is no reason to retry later.
func isNetwork(err error) bool {
	var opErr *net.OpError
	var dnsErr *net.DNSError
	return errors.As(err, &opErr) || errors.As(err, &dnsErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}
