package repo_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

func TestLease(t *testing.T) {
	ctx := context.Background()
	r, st := teststore.FSRepo(t)
	first, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "first", Renew: 50 * time.Millisecond, StaleAfter: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "second"})
	if !errors.Is(err, repo.ErrLocked) || !strings.Contains(err.Error(), "first") {
		t.Fatalf("second acquire while held: %v", err)
	}
	time.Sleep(150 * time.Millisecond) // renewed meanwhile: still held
	if _, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "third"}); !errors.Is(err, repo.ErrLocked) {
		t.Fatalf("acquire after renewals: %v", err)
	}
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if first.Context().Err() == nil {
		t.Error("a released lease's context is still live")
	}
	second, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "second", StaleAfter: 100 * time.Millisecond, Renew: time.Hour})
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	// second never renews (Renew is an hour): after StaleAfter, it is
	// taken over, and second learns it at its next renewal.
	time.Sleep(200 * time.Millisecond)
	third, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "third", StaleAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("take over a stale lease: %v", err)
	}
	defer third.Release(ctx)
	if err := second.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, repo.LockKey("backup")); err != nil {
		t.Errorf("releasing a lease taken over deleted the new holder's lease: %v", err)
	}
}

// A lease whose holder ran on this host and is gone (kill -9) is taken
// over at once, without waiting for it to go stale.
func TestLeaseOfDeadProcess(t *testing.T) {
	ctx := context.Background()
	r, _ := teststore.FSRepo(t)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	now := time.Now().UTC().Format(time.RFC3339Nano)
	rec := fmt.Sprintf(`{"token":"dead","purpose":"killed backup","host":%q,"pid":%d,"acquired":%q,"renewed":%q}`,
		host, cmd.Process.Pid, now, now)
	if _, err := r.Put(ctx, repo.LockKey("backup"), strings.NewReader(rec)); err != nil {
		t.Fatal(err)
	}
	l, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "next"})
	if err != nil {
		t.Fatalf("the lease of a dead process on this host: %v", err)
	}
	l.Release(ctx)
}
