package main

import (
	"errors"
	"strings"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/failure"
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
	exitPostgres    = hookproto.ExitPostgres    // PostgreSQL unreachable, refusing, or its data directory unreadable
	exitLocked      = hookproto.ExitLocked      // another backup-push or backup-delete holds the repository's lease
	exitFenced      = hookproto.ExitFenced      // the lineage record fenced this server: another is the primary
	exitInterrupted = 130                       // stopped by SIGINT or SIGTERM
)

// usageError marks errors in what the user typed.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// FailureKind classifies a usage mistake whatever it wraps.
func (e *usageError) FailureKind() failure.Kind { return failure.Usage }

func usage(err error) error { return &usageError{err: err} }

// postgresError marks failures to reach PostgreSQL or read its data directory.
type postgresError struct{ err error }

func (e *postgresError) Error() string { return e.err.Error() }
func (e *postgresError) Unwrap() error { return e.err }

// FailureKind classifies the failure as PostgreSQL's whatever it wraps.
func (e *postgresError) FailureKind() failure.Kind { return failure.Postgres }

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

// exitCode maps an error onto the documented exit codes: its kind's
// (internal/failure classifies every error, once, for the command line and
// the daemon alike), under the hooks' rules.
func exitCode(err error) int {
	var he *hookError
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
	}
	return failure.Of(err).ExitCode()
}
