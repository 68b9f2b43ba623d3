package archive

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// DefaultDialTimeout bounds how long a hook waits to connect to the
// daemon before it works standalone.
const DefaultDialTimeout = hookproto.DefaultDialTimeout

// ErrDaemonUnavailable: the daemon gave no answer (no socket, connection
// refused, connection closed before the answer, or a protocol it does not
// speak). Nothing is known to be done; the caller does the work itself,
// which is safe: a push of a file already archived with the same content
// succeeds, and a get writes its destination atomically.
var ErrDaemonUnavailable = hookproto.ErrDaemonUnavailable

// Client is the hook's side of the daemon socket: Push and Get hand one
// call to the daemon and return its answer as the in-process Pusher and
// Getter would. The exchange itself is hookproto.Client's.
type Client struct {
	// Socket is the daemon's unix socket.
	Socket string
	// DataDir is the hook's data directory and Cluster the identity read
	// from its control file; the daemon refuses another cluster's requests.
	DataDir string
	Cluster repo.Cluster
	// DialTimeout bounds the connection attempt; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
}

func (c *Client) proto() *hookproto.Client {
	return &hookproto.Client{Socket: c.Socket, DataDir: c.DataDir, SystemID: c.Cluster.SystemID,
		PGMajor: c.Cluster.PGMajor, WALSegmentSize: c.Cluster.WALSegmentSize, DialTimeout: c.DialTimeout}
}

// Push asks the daemon to archive the file at path (relative paths are
// resolved against the working directory). It returns nil once the daemon
// reports the file durable in every repository, an error wrapping
// ErrDaemonUnavailable when the daemon gave no answer, or the daemon's
// failure as a *DaemonError.
func (c *Client) Push(ctx context.Context, path string) error {
	resp, err := c.proto().Push(ctx, path)
	if err != nil {
		return err
	}
	return c.outcome(resp)
}

// Get asks the daemon to write the WAL file name to dest (relative paths
// are resolved against the working directory). A file in no repository
// returns an error wrapping ErrNotArchived; otherwise as Push.
func (c *Client) Get(ctx context.Context, name, dest string) error {
	return c.get(ctx, name, dest, false)
}

// GetPartial is Get for Getter.GetPartial: a segment in no repository is
// served from its .partial, zero-padded. It needs protocol version 2: a
// daemon that speaks only version 1 refuses it, and the error wraps
// ErrDaemonUnavailable, so the hook works standalone.
func (c *Client) GetPartial(ctx context.Context, name, dest string) error {
	return c.get(ctx, name, dest, true)
}

func (c *Client) get(ctx context.Context, name, dest string, partial bool) error {
	resp, err := c.proto().Get(ctx, name, dest, partial)
	if err != nil {
		return err
	}
	if err := c.outcome(resp); err != nil {
		if errors.Is(err, ErrNotArchived) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return err
	}
	return nil
}

// outcome turns the daemon's answer into the error the in-process work
// would have returned.
func (c *Client) outcome(resp hookproto.Response) error {
	switch resp.Status {
	case hookproto.StatusOK:
		return nil
	case hookproto.StatusNotArchived:
		return ErrNotArchived
	}
	return &DaemonError{Class: resp.Class, Message: resp.Message, Socket: c.Socket}
}

// DaemonError is a failure the daemon reported. It unwraps to the sentinel
// error of its class (ErrConflict, repo.ErrWrongCluster, ...), so callers
// classify it as if the work had failed in-process.
type DaemonError hookproto.DaemonError

func (e *DaemonError) Error() string { return (*hookproto.DaemonError)(e).Error() }

// FailureKind is the kind the daemon's class names (failure.Classified):
// the failure is classified as the daemon classified it.
func (e *DaemonError) FailureKind() failure.Kind { return failure.Parse(e.Class) }

// Unwrap returns the sentinel of the failure's class, or nil. A transient
// failure unwraps to its message marked storage.Retryable.
func (e *DaemonError) Unwrap() error {
	if e.Class == hookproto.ClassTransient {
		return storage.Retryable(errors.New(e.Message))
	}
	return classSentinels[e.Class]
}

// classSentinels are the sentinel errors of the classes that have one.
var classSentinels = map[string]error{
	hookproto.ClassConflict:       ErrConflict,
	hookproto.ClassNoSuchFile:     ErrNoSuchFile,
	hookproto.ClassWrongCluster:   repo.ErrWrongCluster,
	hookproto.ClassNotInitialized: repo.ErrNotInitialized,
	hookproto.ClassNotRepository:  repo.ErrNotRepository,
	hookproto.ClassIncompatible:   repo.ErrIncompatible,
	hookproto.ClassLocked:         repo.ErrLocked,
	hookproto.ClassNoBucket:       storage.ErrNoBucket,
	hookproto.ClassPermission:     storage.ErrPermission,
	hookproto.ClassCorrupt:        codec.ErrCorrupt,
}
