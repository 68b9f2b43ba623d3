// Package hookproto is the wire protocol between walferry's hooks
// (archive-push, archive-get) and "walferry daemon", and the hook's side
// of it. It imports only the standard library, so walferry-hook, the small
// binary PostgreSQL starts once per WAL file, links nothing else.
//
// # Protocol, versions 1 and 2
//
// One connection carries one call. The hook connects to the daemon's unix
// socket, writes one Request as a single line of JSON, and reads one
// Response line; the daemon closes the connection after answering. The
// hook keeps its side open until the answer arrives: the daemon takes a
// closed connection for a hook that gave up (PostgreSQL killed it) and
// cancels the work.
//
// Requests carry absolute paths (the hook resolves %p against its working
// directory, PostgreSQL's data directory) and the identity of the cluster
// the hook read from the control file. The daemon refuses requests for
// another cluster or another data directory.
//
//	→ {"v":1,"op":"push","path":"/pgdata/pg_wal/000000010000000000000003","pgdata":"/pgdata","system_identifier":"7311...","pg_major":15,"wal_segment_size":16777216}
//	← {"v":1,"status":"ok"}
//	→ {"v":1,"op":"get","name":"000000010000000000000004","dest":"/pgdata/pg_wal/RECOVERYXLOG","pgdata":"/pgdata",...}
//	← {"v":1,"status":"not-archived"}
//	← {"v":1,"status":"error","class":"conflict","message":"..."}
//
// A daemon that does not speak the hook's version answers with class
// "unsupported", and the hook does the work itself.
//
// Version 2 adds "partial" to get (archive-get --partial: serve the
// segment's .partial when the segment is not archived). A hook sends
// version 2 only for a request that needs it, so a version-1 daemon keeps
// serving every other request and answers "unsupported" to one whose
// field it would silently drop; the daemon accepts both versions and
// answers in its own.
//
//	→ {"v":2,"op":"get","name":"000000010000000000000005","dest":"/pgdata/pg_wal/RECOVERYXLOG","partial":true,...}
package hookproto

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"
)

// ProtocolVersion is the newest version of the protocol, the one the
// daemon answers in.
const ProtocolVersion = 2

// MinProtocolVersion is the oldest version the daemon serves, and the one
// a request goes in unless it needs a newer one.
const MinProtocolVersion = 1

// PartialVersion is the version that added Request.Partial.
const PartialVersion = 2

// Operations of a Request.
const (
	OpPush = "push" // archive one WAL file (archive_command)
	OpGet  = "get"  // fetch one WAL file (restore_command)
)

// Statuses of a Response.
const (
	StatusOK          = "ok"
	StatusNotArchived = "not-archived"
	StatusError       = "error"
)

// Classes of a failed Response. They are the names of walferry's failure
// kinds (internal/failure, which classifies every error once; package
// archive maps them both ways), so the hook exits as if it had done the
// work. A class a hook does not know (a newer daemon's) exits ExitFailure.
const (
	ClassConflict       = "conflict"        // archive.ErrConflict
	ClassWrongCluster   = "wrong-cluster"   // repo.ErrWrongCluster, or a request for another cluster or data directory
	ClassNotInitialized = "not-initialized" // repo.ErrNotInitialized
	ClassNoBucket       = "no-bucket"       // storage.ErrNoBucket
	ClassIncompatible   = "incompatible"    // repo.ErrIncompatible
	ClassPermission     = "permission"      // storage.ErrPermission, wrong or missing encryption key
	ClassCorrupt        = "corrupt"         // codec.ErrCorrupt
	ClassTransient      = "transient"       // a retryable store failure, after retries
	ClassNoSuchFile     = "no-such-file"    // archive.ErrNoSuchFile: the file to push does not exist
	ClassUsage          = "usage"           // a bad argument or configuration
	ClassNotRepository  = "not-repository"  // repo.ErrNotRepository: objects there, but no walferry repository
	ClassNoBackup       = "no-backup"       // backup.ErrNoBackup
	ClassPostgres       = "postgres"        // PostgreSQL unreachable or refusing, its data directory unusable
	ClassLocked         = "locked"          // repo.ErrLocked
	ClassFenced         = "fenced"          // repo.ErrFenced: the lineage record names another primary
	ClassInterrupted    = "interrupted"     // the daemon was stopped during the work
	ClassBadRequest     = "bad-request"     // a malformed request
	ClassUnsupported    = "unsupported"     // a protocol version or operation the daemon does not know
	ClassFailure        = "failure"         // anything else
)

// Classes lists every class of a failed Response.
var Classes = []string{
	ClassConflict, ClassWrongCluster, ClassNotInitialized, ClassNoBucket, ClassIncompatible,
	ClassPermission, ClassCorrupt, ClassTransient, ClassNoSuchFile, ClassUsage, ClassNotRepository, ClassNoBackup,
	ClassPostgres, ClassLocked, ClassFenced, ClassInterrupted, ClassBadRequest, ClassUnsupported, ClassFailure,
}

// Request is one hook call handed to the daemon.
type Request struct {
	Version int    `json:"v"`
	Op      string `json:"op"`
	// Path is the absolute path of the file to archive (push).
	Path string `json:"path,omitempty"`
	// Name is the WAL file name to fetch and Dest the absolute path to
	// write it to (get).
	Name string `json:"name,omitempty"`
	Dest string `json:"dest,omitempty"`
	// Partial serves the segment's .partial, zero-padded, when the
	// segment itself is not archived (get; version 2).
	Partial bool `json:"partial,omitempty"`
	// DataDir and the identity fields say which cluster the hook runs for.
	DataDir        string `json:"pgdata"`
	SystemID       uint64 `json:"system_identifier,string"`
	PGMajor        int    `json:"pg_major"`
	WALSegmentSize int64  `json:"wal_segment_size"`
}

// Response is the daemon's answer to one Request.
type Response struct {
	Version int    `json:"v"`
	Status  string `json:"status"`
	Class   string `json:"class,omitempty"`
	Message string `json:"message,omitempty"`
}

// MaxLine bounds a request or response line (paths are at most 4 KiB).
const MaxLine = 64 << 10

// ReadLine reads one newline-terminated line of at most MaxLine bytes.
func ReadLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > MaxLine {
			return nil, fmt.Errorf("line longer than %d bytes", MaxLine)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

// Exit statuses of the hooks for a daemon's answer: the subset of
// walferry's exit codes (README.md, "Exit codes") a failure class maps to.
// cmd/walferry declares its codes from these, so walferry and
// walferry-hook exit alike.
const (
	ExitOK          = 0 // success
	ExitFailure     = 1 // any other failure
	ExitUsage       = 2 // a bad argument: archive-push of a file that does not exist
	ExitUnreachable = 3 // store unreachable or failing transiently
	ExitPermission  = 4 // access denied, wrong or missing encryption passphrase
	ExitRepository  = 5 // no bucket, repository not initialized, of another cluster or newer; push conflict
	ExitCorrupt     = 6 // an object failed its checksum or does not decode
	ExitPostgres    = 7 // PostgreSQL unreachable or refusing, its data directory unusable
	ExitLocked      = 8 // another process holds the repository's lease
	ExitFenced      = 9 // the lineage record fenced this server: another is the primary
)

// ClassExitCode is walferry's exit code for a failure of class: the code
// of the sentinel error the class names. archive-push exits with it;
// archive-get exits ExitFailure for every failure (restore_command knows
// only 0 and 1).
func ClassExitCode(class string) int {
	switch class {
	case ClassConflict, ClassWrongCluster, ClassNotInitialized, ClassNoBucket, ClassIncompatible, ClassNotRepository, ClassNoBackup:
		return ExitRepository
	case ClassPermission:
		return ExitPermission
	case ClassCorrupt:
		return ExitCorrupt
	case ClassTransient:
		return ExitUnreachable
	case ClassNoSuchFile, ClassUsage:
		return ExitUsage
	case ClassPostgres:
		return ExitPostgres
	case ClassLocked:
		return ExitLocked
	case ClassFenced:
		return ExitFenced
	}
	return ExitFailure
}

// DefaultDialTimeout bounds how long a hook waits to connect to the
// daemon before it works standalone.
const DefaultDialTimeout = 100 * time.Millisecond

// ErrDaemonUnavailable: the daemon gave no answer (no socket, connection
// refused, connection closed before the answer, or a protocol it does not
// speak). Nothing is known to be done; the caller does the work itself,
// which is safe: a push of a file already archived with the same content
// succeeds, and a get writes its destination atomically.
var ErrDaemonUnavailable = errors.New("daemon unavailable")

// DaemonError is a failure the daemon reported (a Response with
// StatusError).
type DaemonError struct {
	Class   string
	Message string
	Socket  string
}

func (e *DaemonError) Error() string {
	return fmt.Sprintf("%s (reported by the daemon on %s)", e.Message, e.Socket)
}

// Client is the hook's side of the daemon socket: each call is one
// connection, one request line out and one answer line in.
type Client struct {
	// Socket is the daemon's unix socket.
	Socket string
	// DataDir is the hook's data directory (relative paths are resolved
	// against the working directory); the identity fields are read from
	// its control file. The daemon refuses another cluster's requests.
	DataDir        string
	SystemID       uint64
	PGMajor        int
	WALSegmentSize int64
	// DialTimeout bounds the connection attempt; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
}

// Push asks the daemon to archive the file at path (relative paths are
// resolved against the working directory).
func (c *Client) Push(ctx context.Context, path string) (Response, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Response{}, fmt.Errorf("push %s: %w", path, err)
	}
	return c.Do(ctx, Request{Op: OpPush, Path: abs})
}

// Get asks the daemon to write the WAL file name to dest (relative paths
// are resolved against the working directory); partial serves the
// segment's .partial when it is not archived, which needs PartialVersion.
func (c *Client) Get(ctx context.Context, name, dest string, partial bool) (Response, error) {
	abs, err := filepath.Abs(dest)
	if err != nil {
		return Response{}, fmt.Errorf("get %s: %w", name, err)
	}
	req := Request{Op: OpGet, Name: name, Dest: abs}
	if partial {
		req.Version, req.Partial = PartialVersion, true
	}
	return c.Do(ctx, req)
}

// Do sends one request and reads its answer. The request goes in the
// oldest protocol version that has its fields (req.Version when set, else
// MinProtocolVersion), so older daemons serve what they can and refuse the
// rest; the data directory and identity are the Client's.
//
// The Response returned has StatusOK, StatusNotArchived, or StatusError
// with a class other than ClassUnsupported. When the daemon gave no
// answer, or one this client cannot use, the error wraps
// ErrDaemonUnavailable. When ctx ends first (a signal), the error is
// ctx.Err() and the daemon, seeing the connection close, stops the work.
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return Response{}, fmt.Errorf("data directory: %w", err)
	}
	if req.Version == 0 {
		req.Version = MinProtocolVersion
	}
	req.DataDir = dataDir
	req.SystemID, req.PGMajor, req.WALSegmentSize = c.SystemID, c.PGMajor, c.WALSegmentSize
	line, err := json.Marshal(req)
	if err != nil {
		return Response{}, err
	}

	timeout := c.DialTimeout
	if timeout <= 0 {
		timeout = DefaultDialTimeout
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if ctx.Err() != nil {
			return Response{}, ctx.Err()
		}
		return Response{}, c.unavailable(err)
	}
	defer conn.Close()
	// Cancelling ctx (a signal) unblocks the exchange; the daemon sees the
	// connection close and stops the work.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(append(line, '\n')); err != nil {
		if ctx.Err() != nil {
			return Response{}, ctx.Err()
		}
		return Response{}, c.unavailable(err)
	}
	answer, err := ReadLine(bufio.NewReaderSize(conn, 512))
	if err != nil {
		if ctx.Err() != nil {
			return Response{}, ctx.Err()
		}
		return Response{}, c.unavailable(fmt.Errorf("no answer: %w", err))
	}
	var resp Response
	if err := json.Unmarshal(answer, &resp); err != nil {
		return Response{}, c.unavailable(fmt.Errorf("malformed answer: %w", err))
	}
	switch resp.Status {
	case StatusOK, StatusNotArchived:
		return resp, nil
	case StatusError:
		if resp.Class == ClassUnsupported {
			return Response{}, c.unavailable(errors.New(resp.Message))
		}
		return resp, nil
	}
	return Response{}, c.unavailable(fmt.Errorf("unknown answer status %q", resp.Status))
}

func (c *Client) unavailable(err error) error {
	return fmt.Errorf("%w: %s: %v", ErrDaemonUnavailable, c.Socket, err)
}
