package archive

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walferry/walferry/archive/hookproto"
	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
)

// lineageClock is a settable clock for the gate's cache.
type lineageClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *lineageClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *lineageClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lineageSetup is a repository on a counting store and a fake pg_wal.
type lineageSetup struct {
	store *pushCountingStore
	r     *repo.Repo
	w     *pushWAL
	clock *lineageClock
}

func newLineageSetup(t *testing.T, segments int) *lineageSetup {
	t.Helper()
	const segBytes = pushMiB
	inner, _ := teststore.FS(t)
	cs := newPushCountingStore(inner)
	return &lineageSetup{store: cs, r: pushRepo(t, cs, segBytes, codec.New()), w: newPushWAL(t, segBytes, segments),
		clock: &lineageClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}}
}

func (s *lineageSetup) pusher(t *testing.T, maxAge time.Duration) *Pusher {
	p := newTestPusher(t, pushConfig(t, pushMiB, nil, s.r), PushOptions{Ahead: 0, LineageMaxAge: maxAge})
	p.lineage.now = s.clock.now
	return p
}

func (s *lineageSetup) record(t *testing.T, prev uint64, g repo.Generation) {
	t.Helper()
	if _, err := s.r.NextGeneration(context.Background(), prev, g); err != nil {
		t.Fatal(err)
	}
}

func (s *lineageSetup) lineageReads() int { return s.store.keyOps(repo.LineagePrefix) }

func (s *lineageSetup) stored(t *testing.T, name string) bool {
	t.Helper()
	key, err := repo.WALKey(name, s.w.size)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.r.ObjectInfo(context.Background(), key)
	if err != nil && !errors.Is(err, storage.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// Without a lineage record (an older repository) everything is permitted;
// with one, WAL of a timeline it does not know, and that timeline's
// history file, are refused as fenced (exit 9, the daemon's class
// "fenced"), naming the generation and the fix, and nothing is stored.
func TestPushLineageRefuses(t *testing.T) {
	s := newLineageSetup(t, 2)
	p := s.pusher(t, 0)
	ctx := t.Context()
	if err := p.Push(ctx, s.w.path(s.w.seg(1))); err != nil {
		t.Fatalf("no lineage record: %v", err)
	}
	s.record(t, 0, repo.Generation{Instance: "pg-0", Site: "a", Reason: "init", Timeline: 1})
	p = s.pusher(t, 0) // a new process: reads the record
	if err := p.Push(ctx, s.w.path(s.w.seg(2))); err != nil {
		t.Fatalf("the record's primary: %v", err)
	}

	seg2 := pg.SegmentName(2, 3, s.w.size)
	s.w.add(t, seg2, s.w.random(pushMiB), true)
	s.w.add(t, "00000002.history", []byte("1\t0/3000000\tno recovery target specified\n"), true)
	for _, name := range []string{seg2, "00000002.history"} {
		err := p.Push(ctx, s.w.path(name))
		if !errors.Is(err, repo.ErrFenced) || failure.Of(err) != failure.Fenced || failure.Fenced.ExitCode() != 9 {
			t.Fatalf("%s of an unknown timeline: %v (kind %v); want fenced", name, err, failure.Of(err))
		}
		for _, want := range []string{name, "generation 1", "a/pg-0", "walferry promote", s.r.String()} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("refusal %q does not name %q", err, want)
			}
		}
		if resp := responseFor(err); resp.Status != hookproto.StatusError || resp.Class != hookproto.ClassFenced ||
			hookproto.ClassExitCode(resp.Class) != hookproto.ExitFenced {
			t.Errorf("the daemon answers %+v; want class %q", resp, hookproto.ClassFenced)
		}
		if s.stored(t, name) {
			t.Errorf("%s was stored although refused", name)
		}
	}
	if err := p.Permit(ctx, seg2+".partial"); !errors.Is(err, repo.ErrFenced) {
		t.Errorf("Permit of a partial of an unknown timeline: %v", err)
	}
}

// A long-lived Pusher reads the record at most every LineageMaxAge while
// it permits, so a fence recorded elsewhere is seen within that time; it
// re-reads before refusing, so a cache older than this server's own
// promotion never refuses wrongly.
func TestPushLineageCache(t *testing.T) {
	s := newLineageSetup(t, 6)
	s.record(t, 0, repo.Generation{Instance: "pg-0", Reason: "init", Timeline: 1})
	const maxAge = 5 * time.Second
	p := s.pusher(t, maxAge)
	ctx := t.Context()

	for i := 1; i <= 3; i++ {
		if err := p.Push(ctx, s.w.path(s.w.seg(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.lineageReads(); n != 1 {
		t.Errorf("3 pushes within %v listed the record %d times; want 1", maxAge, n)
	}

	// Another server fails over at the start of segment 4: this one's
	// segment 4 is fenced, but the cache still permits it for maxAge.
	s.record(t, 1, repo.Generation{Instance: "pg-1", Reason: "failover", Timeline: 1, FencedAt: s.w.size.StartLSN(4)})
	s.clock.advance(maxAge / 2)
	if err := p.Push(ctx, s.w.path(s.w.seg(4))); err != nil {
		t.Fatalf("within the cache's age: %v", err)
	}
	s.clock.advance(maxAge)
	err := p.Push(ctx, s.w.path(s.w.seg(5)))
	if !errors.Is(err, repo.ErrFenced) || !strings.Contains(err.Error(), "generation 2") || !strings.Contains(err.Error(), "walferry rejoin") {
		t.Fatalf("after the cache's age: %v; want fenced by generation 2, naming walferry rejoin", err)
	}
	if n := s.lineageReads(); n != 2 {
		t.Errorf("the record was listed %d times; want 2", n)
	}

	// This server is promoted (walferry promote records timeline 2): its
	// cache still says timeline 1, which would refuse; it re-reads first.
	s.record(t, 2, repo.Generation{Instance: "pg-0", Reason: "promote", Timeline: 2, TimelineStart: s.w.size.StartLSN(4)})
	s.w.add(t, "00000002.history", []byte("1\t0/400000\tno recovery target specified\n"), true)
	if err := p.Push(ctx, s.w.path("00000002.history")); err != nil {
		t.Fatalf("after this server's promotion, with a cached older generation: %v", err)
	}
	if n := s.lineageReads(); n != 3 {
		t.Errorf("the record was listed %d times; want 3 (one re-read before refusing)", n)
	}
}

// Concurrent pushes share one read of the record.
func TestPushLineageConcurrent(t *testing.T) {
	s := newLineageSetup(t, 8)
	s.record(t, 0, repo.Generation{Instance: "pg-0", Reason: "init", Timeline: 1})
	p := s.pusher(t, time.Hour)
	var wg sync.WaitGroup
	for i := 1; i <= 8; i++ {
		wg.Go(func() {
			if err := p.Push(t.Context(), s.w.path(s.w.seg(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := s.lineageReads(); n != 1 {
		t.Errorf("8 concurrent pushes listed the record %d times; want 1", n)
	}
}

// BenchmarkPushCheck measures the lineage check on the hooks' path (W1):
// "standalone" is what each archive-push process pays once (one listing,
// one small object), "cached" what the daemon pays per file.
func BenchmarkPushCheck(b *testing.B) {
	for _, sc := range pushStores {
		b.Run(sc.name, func(b *testing.B) {
			st := sc.open(b)
			r := pushRepo(b, st, pushMiB, codec.New())
			if _, err := r.NextGeneration(context.Background(), 0, repo.Generation{Instance: "pg-0", Reason: "init", Timeline: 1}); err != nil {
				b.Fatal(err)
			}
			size := pushSegSize(b, pushMiB)
			name := pg.SegmentName(1, 7, size)
			ctx := context.Background()
			b.Run("standalone", func(b *testing.B) {
				for b.Loop() {
					if err := newLineageGate([]*repo.Repo{r}, size, 0).permit(ctx, r, name); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("cached", func(b *testing.B) {
				gate := newLineageGate([]*repo.Repo{r}, size, time.Hour)
				for b.Loop() {
					if err := gate.permit(ctx, r, name); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
