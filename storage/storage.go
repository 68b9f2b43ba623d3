// Package storage defines the one small interface every walferry repository
// backend implements. Backends move bytes under keys; they never know what a
// WAL segment or a backup is (only internal/repo names keys).
//
// Keys are slash-separated relative paths ("wal/0000000100000000/000000010000000000000001.lz4"),
// never starting with "/" and never containing "." or ".." elements. A backend
// created with a prefix prepends it to every key and strips it from listings.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/failure"
)

// Store is a key/value object store with streaming reads and writes.
//
// Every method takes a context; cancelling it aborts the operation. Errors
// are classified with errors.Is against ErrNotExist, ErrExist, ErrPermission,
// ErrNoBucket and with IsRetryable.
type Store interface {
	// Put stores everything read from r under key, replacing any existing
	// object. It is atomic: when Put returns an error, or ctx is cancelled
	// mid-upload, no partial object is visible under key (a previous object
	// under key, if any, is either still there or fully replaced).
	Put(ctx context.Context, key string, r io.Reader) error

	// Get opens the object for streaming. A missing key returns an error
	// matching ErrNotExist. The caller must Close the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// GetRange opens length bytes of the object starting at offset. A
	// negative length reads to the end. Reading past the end returns what
	// there is (possibly nothing); a missing key matches ErrNotExist, also
	// for a zero length; a negative offset matches fs.ErrInvalid (the rules
	// TrivialRange applies for every backend).
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)

	// Stat returns the object's metadata; a missing key matches ErrNotExist.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List calls fn for every object whose key starts with prefix, in
	// lexical key order, across as many pages as the backend needs. Keys
	// passed to fn are relative to the store (the backend's own prefix
	// stripped). An error from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Delete removes the object. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error

	// String names the store for messages ("s3://bucket/prefix"), with no
	// secret in it.
	String() string

	// Close releases connections. The Store must not be used afterwards.
	Close() error
}

// TrivialRange answers the GetRange calls that need no read, with the
// same rules for every backend: a negative offset is refused (the error
// matches fs.ErrInvalid), and a zero length, which no HTTP Range can
// express, yields an empty reader once st.Stat found the key, so that a
// missing key still matches ErrNotExist. When answered is false, the
// backend reads the range itself.
func TrivialRange(ctx context.Context, st Store, key string, offset, length int64) (rc io.ReadCloser, answered bool, err error) {
	if offset < 0 {
		return nil, true, fmt.Errorf("%s: get %s: negative offset %d: %w", st, key, offset, fs.ErrInvalid)
	}
	if length != 0 {
		return nil, false, nil
	}
	if _, err := st.Stat(ctx, key); err != nil {
		return nil, true, err
	}
	return io.NopCloser(strings.NewReader("")), true, nil
}

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// ConditionalCreator is implemented by stores that can create an object only
// if its key is free, atomically. Exactly one of several concurrent callers
// for the same key succeeds; the others get an error matching ErrExist and
// the winner's object is left intact.
type ConditionalCreator interface {
	PutIfAbsent(ctx context.Context, key string, r io.Reader) error
}

// Wrapper is implemented by decorators (retry, limit, stall): Unwrap returns the
// store they wrap. Maintenance abilities that need no policy of their own
// (TempSweeper) are found through it instead of being forwarded by every
// decorator.
type Wrapper interface {
	Unwrap() Store
}

// Innermost returns st with every Wrapper decorator removed.
func Innermost(st Store) Store {
	for {
		w, ok := st.(Wrapper)
		if !ok {
			return st
		}
		st = w.Unwrap()
	}
}

// TempSweeper is implemented by stores where a writer killed mid-write
// leaves a temporary object behind that List does not show (a
// filesystem's temporary files). SweepTemps finds those under prefix for
// which stale returns true and, unless dryRun, removes them; it returns
// what it found (Key is the temporary object's own key). The caller's
// stale must spare live writers: a live writer keeps its object changing.
type TempSweeper interface {
	SweepTemps(ctx context.Context, prefix string, stale func(ObjectInfo) bool, dryRun bool) ([]ObjectInfo, error)
}

// Copier is implemented by stores that copy objects server-side.
type Copier interface {
	Copy(ctx context.Context, srcKey, dstKey string) error
}

// Errors every backend maps its provider's errors onto. They alias io/fs's so
// that errors.Is(err, fs.ErrNotExist) works across the code base.
var (
	ErrNotExist   = fs.ErrNotExist
	ErrExist      = fs.ErrExist
	ErrPermission = fs.ErrPermission
	// ErrNoBucket means the bucket, container or root directory itself is
	// missing, as opposed to one key in it.
	ErrNoBucket = failure.New(failure.NoBucket, "bucket, container or directory does not exist")
)

// retryableError marks an error as transient: the same call may succeed if
// repeated (timeouts, connection resets, throttling, 5xx answers).
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// FailureKind classifies a marked error as transient (failure.Classified).
func (e *retryableError) FailureKind() failure.Kind { return failure.Transient }

// Retryable marks err as transient. A nil err stays nil.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &retryableError{err: err}
}

// IsRetryable reports whether err, or any error it wraps, was marked with
// Retryable. Context cancellation is never retryable.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var r *retryableError
	return errors.As(err, &r)
}
