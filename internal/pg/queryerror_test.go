package pg

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/internal/failure"
)

// TestQueryError: a statement that fails because the connection broke (a
// server crash) is PostgreSQL's failure like one the server refused, not
// the network's "store unreachable" (found by faults/TestPostgresCrash:
// backup-push exited 3 when PostgreSQL crashed under pg_backup_stop, 7
// when it crashed before the connection); a cancelled call stays
// interrupted.
func TestQueryError(t *testing.T) {
	lost := &net.OpError{Op: "write", Net: "unix", Err: syscall.EPIPE}
	refused := &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}
	if failure.Of(lost) != failure.Transient {
		t.Fatalf("precondition: a bare network error is %v", failure.Of(lost))
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want failure.Kind
	}{
		{"connection lost", context.Background(), lost, failure.Postgres},
		{"server error", context.Background(), refused, failure.Postgres},
		{"cancelled", cancelled, errors.Join(lost, context.Canceled), failure.Interrupted},
	} {
		err := QueryError(tc.ctx, "stop the backup", tc.err)
		if got := failure.Of(err); got != tc.want {
			t.Errorf("%s: kind %v, want %v", tc.name, got, tc.want)
		}
		if !strings.HasPrefix(err.Error(), "pg: stop the backup: ") || !errors.Is(err, tc.err) {
			t.Errorf("%s: %q does not say what failed or lost its cause", tc.name, err)
		}
	}
}
