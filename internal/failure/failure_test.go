package failure

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestOf(t *testing.T) {
	conflict := New(Conflict, "conflict")
	permission := New(Permission, "permission")
	corrupt := New(Corrupt, "corrupt")
	transient := Wrap(Transient, errors.New("503 SlowDown"))
	for _, tc := range []struct {
		name string
		err  error
		want Kind
	}{
		{"nil", nil, Other},
		{"plain", errors.New("x"), Other},
		{"sentinel wrapped", fmt.Errorf("push x: %w", conflict), Conflict},
		{"permission and conflict, joined", errors.Join(fmt.Errorf("repo a: %w", permission), fmt.Errorf("repo b: %w", conflict)), Permission},
		{"conflict and permission, joined", errors.Join(conflict, permission), Permission},
		{"corrupt and conflict", errors.Join(conflict, corrupt), Corrupt},
		{"transient and conflict", errors.Join(transient, conflict), Conflict},
		{"nested joins", errors.Join(errors.Join(transient), fmt.Errorf("x: %w", errors.Join(errors.New("y"), corrupt))), Corrupt},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), Interrupted},
		{"deadline", context.DeadlineExceeded, Transient},
		{"fs permission", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, Permission},
		{"no such file locally", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, Other},
		{"disk full", &fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, Other},
		{"connection refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, Transient},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), Transient},
		{"PostgreSQL", &pgconn.PgError{Code: "42501"}, Postgres},
		// A classified wrapper decides for what it wraps.
		{"usage around a network error", Wrap(Usage, &net.DNSError{Name: "x"}), Usage},
		{"postgres around a permission error", Wrap(Postgres, fs.ErrPermission), Postgres},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("%s: Of(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
	if !errors.Is(fmt.Errorf("x: %w", Wrap(Usage, conflict)), conflict) {
		t.Error("Wrap hides the wrapped sentinel from errors.Is")
	}
}

func TestKindsNamedAndCoded(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range Kinds() {
		name := k.String()
		if seen[name] {
			t.Errorf("two kinds are named %q", name)
		}
		seen[name] = true
		if Parse(name) != k {
			t.Errorf("Parse(%q) = %v, want %v", name, Parse(name), k)
		}
		if c := k.ExitCode(); c < 1 || (c > 9 && c != 130) {
			t.Errorf("%v exits %d, not a documented code", k, c)
		}
	}
	if len(seen) != len(names) {
		t.Errorf("Kinds lists %d kinds, %d are named: the precedence misses some", len(seen), len(names))
	}
	if Parse("a class of a newer daemon") != Other {
		t.Error("an unknown name must parse as Other")
	}
}
