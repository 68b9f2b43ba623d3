// Package failure classifies errors, once, for every user: the command
// line's exit codes, the daemon's answers to the hooks, and the components
// that decide whether trying again can help (the archiver, the WAL
// receiver, the agent).
//
// An error's Kind comes from the error itself: the sentinel errors of the
// domain packages are made with New and carry their kind, storage.Retryable
// marks transient store failures, and a few foreign errors are recognised
// here (PostgreSQL's, the network's, the context's, io/fs's permission
// error). When an error joins several failures (errors.Join, one per
// repository), the kind with the highest precedence wins, so the same
// failure exits alike however it was reached.
package failure

import (
	"context"
	"io/fs"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

// Kind is a class of failure.
type Kind int

// The kinds. Their exit codes are part of walferry's interface (README.md,
// "Exit codes").
const (
	Other          Kind = iota // 1: anything else
	Usage                      // 2: a bad flag, argument or configuration
	NoSuchFile                 // 2: archive-push of a file that does not exist
	Transient                  // 3: a store or server unreachable or failing transiently
	Permission                 // 4: access denied, wrong or missing encryption key
	NoBucket                   // 5: no such bucket, container or directory
	NotInitialized             // 5: no repository there
	NotRepository              // 5: objects there, but not a walferry repository
	WrongCluster               // 5: another cluster's repository
	Incompatible               // 5: a newer repository format
	Conflict                   // 5: a name already archived with other content
	NoBackup                   // 5: no such backup
	Corrupt                    // 6: an object failed its checksum or does not decode
	Postgres                   // 7: PostgreSQL unreachable, refusing, or its data directory unusable
	Locked                     // 8: another process holds the repository's lease
	Fenced                     // 9: the lineage record fenced this server (another is the primary)
	Interrupted                // 130: stopped by SIGINT or SIGTERM
)

// precedence orders the kinds for errors that hold several, highest first:
// an interruption explains everything after it; a mistake in the command
// line, a refused credential or a damaged object is what to fix first;
// "unreachable, retry later" only when nothing else is known.
var precedence = []Kind{
	Interrupted, Usage, NoSuchFile, Permission, Corrupt, Fenced,
	NoBucket, NotInitialized, NotRepository, WrongCluster, Incompatible, Conflict, NoBackup,
	Locked, Postgres, Transient, Other,
}

// ExitCode is the command line's exit code for k.
func (k Kind) ExitCode() int {
	switch k {
	case Usage, NoSuchFile:
		return 2
	case Transient:
		return 3
	case Permission:
		return 4
	case NoBucket, NotInitialized, NotRepository, WrongCluster, Incompatible, Conflict, NoBackup:
		return 5
	case Corrupt:
		return 6
	case Postgres:
		return 7
	case Locked:
		return 8
	case Fenced:
		return 9
	case Interrupted:
		return 130
	}
	return 1
}

// String names k as the daemon's answers do (hookproto's classes).
func (k Kind) String() string {
	if int(k) >= 0 && int(k) < len(names) {
		return names[k]
	}
	return "failure"
}

var names = [...]string{
	Other: "failure", Usage: "usage", NoSuchFile: "no-such-file", Transient: "transient", Permission: "permission",
	NoBucket: "no-bucket", NotInitialized: "not-initialized", NotRepository: "not-repository",
	WrongCluster: "wrong-cluster", Incompatible: "incompatible", Conflict: "conflict", NoBackup: "no-backup",
	Corrupt: "corrupt", Postgres: "postgres", Locked: "locked", Fenced: "fenced", Interrupted: "interrupted",
}

// Kinds lists every kind.
func Kinds() []Kind { return append([]Kind(nil), precedence...) }

// Parse returns the kind a name from String stands for, Other for a name
// it does not know (a newer daemon's).
func Parse(name string) Kind {
	for k, n := range names {
		if n == name {
			return Kind(k)
		}
	}
	return Other
}

// Classified is implemented by errors that know their kind: sentinels made
// with New, and wrappers that classify what they wrap (a usage mistake
// around a parse error). The classification stops at such an error: what
// it wraps does not change its kind.
type Classified interface {
	error
	FailureKind() Kind
}

// sentinel is an error value of a known kind.
type sentinel struct {
	kind Kind
	msg  string
}

func (e *sentinel) Error() string     { return e.msg }
func (e *sentinel) FailureKind() Kind { return e.kind }

// New returns a sentinel error of kind k, to be matched with errors.Is.
func New(k Kind, msg string) error { return &sentinel{kind: k, msg: msg} }

// Wrap returns err classified as k, keeping err's message and chain.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &wrapped{kind: k, err: err}
}

type wrapped struct {
	kind Kind
	err  error
}

func (e *wrapped) Error() string     { return e.err.Error() }
func (e *wrapped) Unwrap() error     { return e.err }
func (e *wrapped) FailureKind() Kind { return e.kind }

// Of returns err's kind: the one of highest precedence among the failures
// err holds; Other for nil or an error nothing here knows.
func Of(err error) Kind {
	best := Other
	rank := func(k Kind) int {
		for i, p := range precedence {
			if p == k {
				return i
			}
		}
		return len(precedence)
	}
	visit(err, func(k Kind) {
		if rank(k) < rank(best) {
			best = k
		}
	})
	return best
}

// Retryable reports whether trying the same operation again may succeed.
func Retryable(err error) bool { return Of(err) == Transient }

// visit walks err's tree, reporting the kind of each classified branch.
func visit(err error, report func(Kind)) {
	if err == nil {
		return
	}
	if k, ok := own(err); ok {
		report(k)
		return
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			visit(e, report)
		}
	case interface{ Unwrap() error }:
		visit(u.Unwrap(), report)
	}
}

// own is the kind err itself says or is known to be, without unwrapping.
func own(err error) (Kind, bool) {
	if c, ok := err.(Classified); ok {
		return c.FailureKind(), true
	}
	switch err {
	case context.Canceled:
		return Interrupted, true
	case context.DeadlineExceeded:
		return Transient, true
	case fs.ErrPermission:
		return Permission, true
	}
	switch e := err.(type) {
	case *pgconn.PgError, *pgconn.ConnectError:
		return Postgres, true
	case *net.OpError, *net.DNSError:
		return Transient, true
	case syscall.Errno:
		switch e {
		case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH:
			return Transient, true
		case syscall.EACCES, syscall.EPERM:
			return Permission, true
		}
	}
	return 0, false
}
