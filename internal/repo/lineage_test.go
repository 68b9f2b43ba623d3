package repo_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
)

func TestLineage(t *testing.T) {
	r, _ := teststore.FSRepo(t)
	ctx := context.Background()
	if _, ok, err := r.Lineage(ctx); ok || err != nil {
		t.Fatalf("a new repository: Lineage ok %v, %v; want none", ok, err)
	}
	g1, err := r.NextGeneration(ctx, 0, repo.Generation{Instance: "pg-0", Site: "a", Reason: "init", Timeline: 1})
	if err != nil || g1.Number != 1 || g1.SystemID != 1 {
		t.Fatalf("first generation: %+v, %v", g1, err)
	}
	if _, err := r.NextGeneration(ctx, 0, repo.Generation{Instance: "pg-1", Site: "b", Reason: "init", Timeline: 1}); !errors.Is(err, repo.ErrLineageRace) ||
		!strings.Contains(err.Error(), "a/pg-0") {
		t.Errorf("generation 1 again: %v; want a race naming a/pg-0", err)
	}
	if _, err := r.NextGeneration(ctx, 1, repo.Generation{SystemID: 2, Timeline: 1}); !errors.Is(err, repo.ErrWrongCluster) {
		t.Errorf("another cluster's generation: %v", err)
	}
	got, ok, err := r.Lineage(ctx)
	if !ok || err != nil || got.Number != 1 || got.Instance != "pg-0" {
		t.Errorf("Lineage = %+v, %v, %v; want generation 1 of pg-0", got, ok, err)
	}
}

// Of many processes taking the same next generation at once, exactly one
// wins (the store's conditional create), the others are told who.
func TestLineageRace(t *testing.T) {
	r, _ := teststore.FSRepo(t)
	ctx := context.Background()
	const racers = 8
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = r.NextGeneration(ctx, 0, repo.Generation{Instance: string(rune('a' + i)), Reason: "failover", Timeline: 2})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case errors.Is(err, repo.ErrLineageRace) && failure.Of(err) == failure.Locked:
		default:
			t.Errorf("a racer failed otherwise: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d racers won; want exactly 1", won)
	}
}

func TestPermitsWAL(t *testing.T) {
	size, _ := pg.NewWALSegmentSize(16 << 20)
	// Timeline 2 began at 0/5000060 (in segment 5); the primary was then
	// demoted at 0/9000100 (in segment 9).
	g := repo.Generation{Number: 3, Reason: "switchover", Instance: "pg-0", Timeline: 2, TimelineStart: 0x5000060}
	fenced := g
	fenced.FencedAt = 0x9000100
	tests := []struct {
		g    repo.Generation
		name string
		ok   bool
	}{
		{g, "000000010000000000000004", true},          // shared history
		{g, "000000010000000000000005", false},         // the old primary went on past the fork
		{g, "000000010000000000000005.partial", true},  // the new primary's at promotion
		{g, "000000010000000000000006.partial", false}, // an old primary's, past the fork
		{g, "000000020000000000000005", true},          // the primary's own
		{g, "00000002000000000000000A", true},          // no fence yet
		{g, "000000030000000000000006", false},         // a promotion the record does not know
		{g, "00000003.history", false},                 // a timeline the record does not know
		{g, "00000002.history", true},
		{fenced, "000000020000000000000008", true},         // before the fence
		{fenced, "000000020000000000000009", false},        // holds WAL past the fence
		{fenced, "000000020000000000000009.partial", true}, // the demote's last partial
		{fenced, "00000002000000000000000A", false},
	}
	for _, tt := range tests {
		err := tt.g.PermitsWAL(tt.name, size)
		if (err == nil) != tt.ok {
			t.Errorf("PermitsWAL(%s) with %s: %v; want ok %v", tt.name, tt.g, err, tt.ok)
		}
		if err != nil && (!errors.Is(err, repo.ErrFenced) || failure.Of(err).ExitCode() != 9 || !strings.Contains(err.Error(), "generation 3")) {
			t.Errorf("PermitsWAL(%s): %v; want ErrFenced (exit 9) naming the generation", tt.name, err)
		}
	}
	if err := g.PermitsPrimary(2); err != nil {
		t.Errorf("the record's primary: %v", err)
	}
	if err := g.PermitsPrimary(1); !errors.Is(err, repo.ErrFenced) {
		t.Errorf("an old primary: %v; want ErrFenced", err)
	}
	if err := fenced.PermitsPrimary(2); !errors.Is(err, repo.ErrFenced) {
		t.Errorf("a demoted primary: %v; want ErrFenced", err)
	}
}
