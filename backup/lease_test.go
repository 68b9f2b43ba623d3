package backup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

// TestLeaseLostIsLocked: work stopped because its lease was taken over
// fails as a lost lease (repo.ErrLocked, exit 8), not as the cancellation
// it led to (exit 130, "interrupted"). backup-push once lost the cause.
func TestLeaseLostIsLocked(t *testing.T) {
	ctx := context.Background()
	r, _ := teststore.FSRepo(t)
	lease, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "backup-push", Renew: 20 * time.Millisecond, StaleAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release(ctx)
	leased, stop := leaseContext(ctx, lease)
	defer stop()
	// Another process takes the lease over (as after a long pause).
	if _, err := r.Put(ctx, repo.LockKey("backup"), strings.NewReader(`{"token":"someone-else","purpose":"backup-push elsewhere","host":"other","pid":1,"acquired":"2026-12-06T00:00:00Z","renewed":"2026-12-06T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-leased.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was taken over and the work's context is still live")
	}
	err = leaseLost(leased, "backup-push", leased.Err())
	if !errors.Is(err, repo.ErrLocked) || failure.Of(err) != failure.Locked || failure.Of(err).ExitCode() != 8 {
		t.Errorf("work stopped by a lost lease: %v (kind %v), want repo.ErrLocked, exit 8", err, failure.Of(err))
	}
	if err := leaseLost(ctx, "backup-push", nil); err != nil {
		t.Errorf("leaseLost invented an error: %v", err)
	}
}
