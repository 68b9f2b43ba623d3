package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"
	"syscall"
	"testing"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// TestDaemonAndStandaloneExitAlike: archive-push exits with the same code
// whether it did the work itself or the daemon did it and answered with a
// failure class (walferry and walferry-hook map classes with
// hookproto.ClassExitCode). A drift between exitCode and the class table
// would make the same failure look different depending on where it ran.
func TestDaemonAndStandaloneExitAlike(t *testing.T) {
	one := func(sentinel error) error {
		return fmt.Errorf("archive-push 000000010000000000000003 to file:///a: %w", sentinel)
	}
	cases := []error{
		archive.ErrConflict, codec.ErrWrongKey, codec.ErrNoKey, repo.ErrPassphrase, storage.ErrPermission,
		codec.ErrCorrupt, storage.ErrNoBucket, repo.ErrNotInitialized, repo.ErrWrongCluster, repo.ErrIncompatible,
		repo.ErrNotRepository, repo.ErrLocked, storage.Retryable(errors.New("connection reset")), context.DeadlineExceeded,
		context.Canceled, errors.New("disk full"), archive.ErrNoSuchFile,
		// Two repositories failing differently: the same code whichever
		// way the push ran (they once exited 4 standalone, 5 via the daemon).
		errors.Join(one(storage.ErrPermission), one(archive.ErrConflict)),
		errors.Join(one(archive.ErrConflict), one(storage.ErrPermission)),
		errors.Join(one(archive.ErrConflict), one(codec.ErrCorrupt)),
		errors.Join(one(storage.Retryable(errors.New("503"))), one(archive.ErrConflict)),
	}
	for _, k := range failure.Kinds() {
		cases = append(cases, failure.New(k, "a failure of kind "+k.String()))
	}
	for _, cause := range cases {
		err := fmt.Errorf("archive-push 000000010000000000000003: %w", cause)
		standalone := exitCode(&hookError{hook: "archive-push", err: err})
		class := archive.ClassOf(err)
		viaDaemon := exitCode(&hookError{hook: "archive-push", err: &archive.DaemonError{Class: class, Message: err.Error()}})
		viaHook := hookproto.ClassExitCode(class)
		if standalone != viaHook || viaDaemon != standalone {
			t.Errorf("%v: standalone exits %d, class %q makes walferry-hook exit %d and walferry via the daemon %d",
				cause, standalone, class, viaHook, viaDaemon)
		}
	}
	for _, k := range failure.Kinds() {
		if !slices.Contains(hookproto.Classes, k.String()) {
			t.Errorf("failure kind %v has no class in the hook protocol", k)
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
