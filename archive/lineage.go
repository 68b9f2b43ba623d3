package archive

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// DefaultLineageMaxAge is how long a Pusher trusts a read of a
// repository's lineage record before it permits a file with it: a fence
// recorded by a promotion elsewhere is seen within that time. A one-shot
// archive-push (shorter than that) reads the record once: one listing and
// one small object per repository.
const DefaultLineageMaxAge = 5 * time.Second

// lineageGate decides, for every file a Pusher would write, whether the
// lineage record of each repository permits it (repo.Generation.PermitsWAL).
// It caches each repository's record for maxAge; a refusal is always made
// with a record read after the check began, so a stale cache can delay a
// fence by maxAge but never refuses wrongly.
type lineageGate struct {
	maxAge time.Duration
	now    func() time.Time
	size   pg.WALSegmentSize
	repos  map[*repo.Repo]*lineageCache
}

// lineageCache is one repository's record as last read. lock is held by
// the one reading it (a channel, so waiting ends with the context).
type lineageCache struct {
	r    *repo.Repo
	lock chan struct{}

	mu      sync.Mutex
	g       repo.Generation
	ok      bool      // a generation is recorded
	read    time.Time // when the read that produced g began
	seq     uint64    // that read's number (0: never read)
	started uint64    // reads begun so far
}

func newLineageGate(repos []*repo.Repo, size pg.WALSegmentSize, maxAge time.Duration) *lineageGate {
	if maxAge <= 0 {
		maxAge = DefaultLineageMaxAge
	}
	g := &lineageGate{maxAge: maxAge, now: time.Now, size: size, repos: make(map[*repo.Repo]*lineageCache, len(repos))}
	for _, r := range repos {
		g.repos[r] = &lineageCache{r: r, lock: make(chan struct{}, 1)}
	}
	return g
}

// permitAll is permit for every repository, in turn.
func (l *lineageGate) permitAll(ctx context.Context, repos []*repo.Repo, name string) error {
	for _, r := range repos {
		if err := l.permit(ctx, r, name); err != nil {
			return fmt.Errorf("%s to %s: %w", name, r, err)
		}
	}
	return nil
}

// permit returns nil when r's lineage record permits name, an error
// wrapping repo.ErrFenced (naming the generation, its time and the fix)
// when it does not, and the read's error when the record cannot be read:
// archiving waits until permission can be proven.
func (l *lineageGate) permit(ctx context.Context, r *repo.Repo, name string) error {
	c := l.repos[r]
	if c == nil {
		return fmt.Errorf("%s is not one of the pusher's repositories", r) // a programming error
	}
	began, startedBefore := l.now(), c.startedReads()
	g, ok, err := c.get(ctx, l.now, func(read time.Time, _ uint64) bool { return !read.Before(began.Add(-l.maxAge)) })
	if err != nil {
		return err
	}
	if !ok {
		return nil // no generation recorded: an older repository, nothing fenced
	}
	perr := g.PermitsWAL(name, l.size)
	if perr != nil {
		// Refuse only on a record read for this very check: the cached
		// one may predate a promotion of this server (walferry promote).
		if g, ok, err = c.get(ctx, l.now, func(_ time.Time, seq uint64) bool { return seq > startedBefore }); err != nil {
			return err
		}
		if !ok {
			return nil
		}
		perr = g.PermitsWAL(name, l.size)
	}
	return perr
}

// get returns the cached record when fresh says it will do (given when
// the read that produced it began, and its number), else reads it again;
// concurrent callers share one read.
func (c *lineageCache) get(ctx context.Context, now func() time.Time, fresh func(read time.Time, seq uint64) bool) (repo.Generation, bool, error) {
	if g, ok, hit := c.cached(fresh); hit {
		return g, ok, nil
	}
	select {
	case c.lock <- struct{}{}:
	case <-ctx.Done():
		return repo.Generation{}, false, context.Cause(ctx)
	}
	defer func() { <-c.lock }()
	// Another caller may have read it while this one waited.
	if g, ok, hit := c.cached(fresh); hit {
		return g, ok, nil
	}
	c.mu.Lock()
	c.started++
	seq := c.started
	c.mu.Unlock()
	at := now()
	g, ok, err := c.r.Lineage(ctx)
	if err != nil {
		return repo.Generation{}, false, err
	}
	c.mu.Lock()
	c.g, c.ok, c.read, c.seq = g, ok, at, seq
	c.mu.Unlock()
	return g, ok, nil
}

func (c *lineageCache) cached(fresh func(read time.Time, seq uint64) bool) (repo.Generation, bool, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.g, c.ok, c.seq > 0 && fresh(c.read, c.seq)
}

// startedReads is how many reads of the record began so far: a read
// numbered above it began after this moment.
func (c *lineageCache) startedReads() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started
}
