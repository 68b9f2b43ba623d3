package archive

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// DefaultDialTimeout bounds how long a hook waits to connect to the
// daemon before it works standalone.
const DefaultDialTimeout = 100 * time.Millisecond

// ErrDaemonUnavailable: the daemon gave no answer (no socket, connection
// refused, connection closed before the answer, or a protocol it does not
// speak). Nothing is known to be done; the caller does the work itself,
// which is safe: a push of a file already archived with the same content
// succeeds, and a get writes its destination atomically.
var ErrDaemonUnavailable = errors.New("daemon unavailable")

// Client is the hook's side of the daemon socket: Push and Get hand one
// call to the daemon and return its answer as the in-process Pusher and
// Getter would.
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

// Push asks the daemon to archive the file at path (relative paths are
// resolved against the working directory). It returns nil once the daemon
// reports the file durable in every repository, an error wrapping
// ErrDaemonUnavailable when the daemon gave no answer, or the daemon's
// failure as a *DaemonError.
func (c *Client) Push(ctx context.Context, path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("push %s: %w", path, err)
	}
	return c.do(ctx, Request{Op: OpPush, Path: abs})
}

// Get asks the daemon to write the WAL file name to dest (relative paths
// are resolved against the working directory). A file in no repository
// returns an error wrapping ErrNotArchived; otherwise as Push.
func (c *Client) Get(ctx context.Context, name, dest string) error {
	return c.get(ctx, Request{Op: OpGet, Name: name}, dest)
}

// GetPartial is Get for Getter.GetPartial: a segment in no repository is
// served from its .partial, zero-padded. It needs protocol version 2: a
// daemon that speaks only version 1 refuses it, and the error wraps
// ErrDaemonUnavailable, so the hook works standalone.
func (c *Client) GetPartial(ctx context.Context, name, dest string) error {
	return c.get(ctx, Request{Version: partialVersion, Op: OpGet, Name: name, Partial: true}, dest)
}

func (c *Client) get(ctx context.Context, req Request, dest string) error {
	name := req.Name
	abs, err := filepath.Abs(dest)
	if err != nil {
		return fmt.Errorf("get %s: %w", name, err)
	}
	req.Dest = abs
	if err := c.do(ctx, req); err != nil {
		if errors.Is(err, ErrNotArchived) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return err
	}
	return nil
}

// do sends one request and reads its answer. The request goes in the
// oldest protocol version that has its fields (req.Version when set,
// else 1), so older daemons serve what they can and refuse the rest.
func (c *Client) do(ctx context.Context, req Request) error {
	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if req.Version == 0 {
		req.Version = minProtocolVersion
	}
	req.DataDir = dataDir
	req.SystemID, req.PGMajor, req.WALSegmentSize = c.Cluster.SystemID, c.Cluster.PGMajor, c.Cluster.WALSegmentSize
	line, err := json.Marshal(req)
	if err != nil {
		return err
	}

	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.unavailable(err)
	}
	defer conn.Close()
	// Cancelling ctx (a signal) unblocks the exchange; the daemon sees the
	// connection close and stops the work.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(append(line, '\n')); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.unavailable(err)
	}
	answer, err := readLine(bufio.NewReaderSize(conn, 512))
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.unavailable(fmt.Errorf("no answer: %w", err))
	}
	var resp Response
	if err := json.Unmarshal(answer, &resp); err != nil {
		return c.unavailable(fmt.Errorf("malformed answer: %w", err))
	}
	switch resp.Status {
	case StatusOK:
		return nil
	case StatusNotArchived:
		return ErrNotArchived
	case StatusError:
		if resp.Class == ClassUnsupported {
			return c.unavailable(errors.New(resp.Message))
		}
		return &DaemonError{Class: resp.Class, Message: resp.Message, Socket: c.Socket}
	}
	return c.unavailable(fmt.Errorf("unknown answer status %q", resp.Status))
}

func (c *Client) unavailable(err error) error {
	return fmt.Errorf("%w: %s: %v", ErrDaemonUnavailable, c.Socket, err)
}

// DaemonError is a failure the daemon reported. It unwraps to the sentinel
// error of its class (ErrConflict, repo.ErrWrongCluster, ...), so callers
// classify it as if the work had failed in-process.
type DaemonError struct {
	Class   string
	Message string
	Socket  string
}

func (e *DaemonError) Error() string {
	return fmt.Sprintf("%s (reported by the daemon on %s)", e.Message, e.Socket)
}

// Unwrap returns the sentinel of the failure's class, or nil.
func (e *DaemonError) Unwrap() error {
	switch e.Class {
	case ClassConflict:
		return ErrConflict
	case ClassWrongCluster:
		return repo.ErrWrongCluster
	case ClassNotInitialized:
		return repo.ErrNotInitialized
	case ClassNoBucket:
		return storage.ErrNoBucket
	case ClassIncompatible:
		return repo.ErrIncompatible
	case ClassPermission:
		return storage.ErrPermission
	case ClassCorrupt:
		return codec.ErrCorrupt
	case ClassTransient:
		return storage.Retryable(errors.New(e.Message))
	}
	return nil
}
