package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"testing"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// TestDaemonAndStandaloneExitAlike: archive-push exits with the same code
// whether it did the work itself or the daemon did it and answered with a
// failure class (walferry and walferry-hook map classes with
// hookproto.ClassExitCode). A drift between exitCode and the class table
// would make the same failure look different depending on where it ran.
func TestDaemonAndStandaloneExitAlike(t *testing.T) {
	for _, sentinel := range []error{
		archive.ErrConflict, codec.ErrWrongKey, codec.ErrNoKey, repo.ErrPassphrase, storage.ErrPermission,
		codec.ErrCorrupt, storage.ErrNoBucket, repo.ErrNotInitialized, repo.ErrWrongCluster, repo.ErrIncompatible,
		storage.Retryable(errors.New("connection reset")), context.DeadlineExceeded, errors.New("disk full"),
		archive.ErrNoSuchFile,
	} {
		err := fmt.Errorf("archive-push 000000010000000000000003: %w", sentinel)
		standalone := exitCode(&hookError{hook: "archive-push", err: err})
		class := archive.ClassOf(err)
		viaDaemon := exitCode(&hookError{hook: "archive-push", err: &archive.DaemonError{Class: class, Message: err.Error()}})
		if standalone != hookproto.ClassExitCode(class) || viaDaemon != standalone {
			t.Errorf("%v: standalone exits %d, class %q maps to %d, walferry via the daemon exits %d",
				sentinel, standalone, class, hookproto.ClassExitCode(class), viaDaemon)
		}
	}
}

// TestLocalErrorsAreNotUnreachable: a local file error is no store outage.
// syscall.Errno implements net.Error, so a check for net.Error alone took
// "no such file" for "unreachable, retry later" (exit 3).
func TestLocalErrorsAreNotUnreachable(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOENT, syscall.ENOSPC, syscall.EACCES, syscall.EISDIR} {
		err := fmt.Errorf("archive-push x: %w", &fs.PathError{Op: "open", Path: "/pgdata/pg_wal/x", Err: errno})
		if got := exitCode(err); got == exitUnreachable {
			t.Errorf("%v: exit %d (unreachable); a local error must not ask to retry later", err, got)
		}
	}
	for _, err := range []error{
		&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED},
		fmt.Errorf("get x: %w", syscall.ECONNRESET),
		&net.DNSError{Err: "no such host", Name: "minio"},
	} {
		if got := exitCode(err); got != exitUnreachable {
			t.Errorf("%v: exit %d, want %d", err, got, exitUnreachable)
		}
	}
}
