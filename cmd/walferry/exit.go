package main

import (
	"context"
	"errors"
	"net"
	"syscall"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// Exit codes are part of walferry's interface; README.md documents them.
// They are mapped here and nowhere else.
const (
	exitOK          = 0   // success
	exitFailure     = 1   // any other failure
	exitUsage       = 2   // bad flag, argument or configuration; command not available in this build
	exitUnreachable = 3   // store or server unreachable or failing transiently: retry later
	exitPermission  = 4   // credentials refused, access denied, wrong encryption passphrase
	exitRepository  = 5   // no such bucket, repository not initialized, another cluster's repository
	exitCorrupt     = 6   // an object failed its checksum or does not decode
	exitPostgres    = 7   // PostgreSQL unreachable, or its data directory unreadable
	exitInterrupted = 130 // stopped by SIGINT or SIGTERM
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

// exitCode maps an error onto the documented exit codes. Order matters:
// the most specific classification wins.
func exitCode(err error) int {
	var (
		ue *usageError
		ce *config.Error
		pe *postgresError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.As(err, &ue), errors.As(err, &ce):
		return exitUsage
	case errors.Is(err, codec.ErrWrongKey), errors.Is(err, codec.ErrNoKey), errors.Is(err, repo.ErrPassphrase),
		errors.Is(err, storage.ErrPermission):
		return exitPermission
	case errors.Is(err, codec.ErrCorrupt):
		return exitCorrupt
	case errors.Is(err, storage.ErrNoBucket), errors.Is(err, repo.ErrNotInitialized),
		errors.Is(err, repo.ErrWrongCluster), errors.Is(err, repo.ErrIncompatible):
		return exitRepository
	case errors.As(err, &pe):
		return exitPostgres
	case storage.IsRetryable(err), isNetwork(err), errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	}
	return exitFailure
}

func isNetwork(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}
