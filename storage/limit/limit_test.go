package limit

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
	"github.com/walferry/walferry/storage/storagetest"
)

func newFS(t *testing.T) *fs.Client {
	t.Helper()
	c, err := fs.New(fs.Config{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// gated counts the Stat calls in flight and holds each until gate closes.
type gated struct {
	storage.Store
	gate     chan struct{}
	inFlight atomic.Int32
	peak     atomic.Int32
}

func (g *gated) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	n := g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	<-g.gate
	return storage.ObjectInfo{Key: key}, nil
}

func TestBoundsConcurrency(t *testing.T) {
	for _, n := range []int{1, 3} {
		g := &gated{Store: newFS(t), gate: make(chan struct{})}
		s := New(g, n)
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if _, err := s.Stat(t.Context(), "k"); err != nil {
					t.Error(err)
				}
			})
		}
		deadline := time.Now().Add(5 * time.Second)
		for g.inFlight.Load() < int32(n) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // give extra callers a chance to slip through
		if got := g.inFlight.Load(); got != int32(n) {
			t.Errorf("n=%d: %d operations in flight, want %d", n, got, n)
		}
		close(g.gate)
		wg.Wait()
		if got := g.peak.Load(); got != int32(n) {
			t.Errorf("n=%d: peak %d operations in flight, want %d", n, got, n)
		}
	}
}

// busy reports whether s has no free slot: a Stat cannot start within a
// short wait.
func busy(t *testing.T, s storage.Store) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	_, err := s.Stat(ctx, "k")
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stat: %v", err)
	}
	return errors.Is(err, context.DeadlineExceeded)
}

func TestReaderHoldsSlotUntilClose(t *testing.T) {
	ctx := t.Context()
	c := newFS(t)
	if err := c.Put(ctx, "k", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	s := New(c, 1)
	opens := []struct {
		name string
		open func() (io.ReadCloser, error)
	}{
		{"Get", func() (io.ReadCloser, error) { return s.Get(ctx, "k") }},
		{"GetRange", func() (io.ReadCloser, error) { return s.GetRange(ctx, "k", 1, 2) }},
	}
	for _, o := range opens {
		t.Run(o.name, func(t *testing.T) {
			rc, err := o.open()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Fatal(err)
			}
			if !busy(t, s) {
				t.Error("slot free while a reader is open, even read to its end")
			}
			rc.Close()
			rc.Close() // a second Close must not free a second slot
			if busy(t, s) {
				t.Error("slot still taken after Close")
			}
			rc2, err := o.open()
			if err != nil {
				t.Fatal(err)
			}
			defer rc2.Close()
			if !busy(t, s) {
				t.Error("a double Close freed two slots")
			}
		})
	}
	t.Run("failed-Get-releases", func(t *testing.T) {
		if _, err := s.Get(ctx, "missing"); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("Get = %v, want ErrNotExist", err)
		}
		if busy(t, s) {
			t.Error("slot still taken after a failed Get")
		}
	})
}

func TestWaitHonoursContext(t *testing.T) {
	c := newFS(t)
	s := New(c, 1)
	if err := c.Put(t.Context(), "k", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	ops := map[string]func(ctx context.Context) error{
		"Put":    func(ctx context.Context) error { return s.Put(ctx, "k2", strings.NewReader("y")) },
		"Delete": func(ctx context.Context) error { return s.Delete(ctx, "k") },
		"List": func(ctx context.Context) error {
			return s.List(ctx, "", func(storage.ObjectInfo) error { return nil })
		},
		"Get": func(ctx context.Context) error { _, err := s.Get(ctx, "k"); return err },
		"Copy": func(ctx context.Context) error {
			return s.(storage.Copier).Copy(ctx, "k", "k3")
		},
		"PutIfAbsent": func(ctx context.Context) error {
			return s.(storage.ConditionalCreator).PutIfAbsent(ctx, "k4", strings.NewReader("z"))
		},
	}
	for name, op := range ops {
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(10*time.Millisecond, cancel)
		if err := op(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("%s while the only slot is taken = %v, want context.Canceled", name, err)
		}
	}
	if keys, err := listKeys(c); err != nil || len(keys) != 1 {
		t.Errorf("the store changed: %q, %v", keys, err)
	}
}

func listKeys(s storage.Store) ([]string, error) {
	var keys []string
	err := s.List(context.Background(), "", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	return keys, err
}

func TestForwardsOptionalInterfaces(t *testing.T) {
	type plain struct{ storage.Store }
	type onlyCC struct {
		storage.Store
		storage.ConditionalCreator
	}
	type onlyCopier struct {
		storage.Store
		storage.Copier
	}
	c := newFS(t)
	tests := []struct {
		name       string
		inner      storage.Store
		cc, copier bool
	}{
		{"none", plain{c}, false, false},
		{"conditional", onlyCC{c, c}, true, false},
		{"copier", onlyCopier{c, c}, false, true},
		{"both", c, true, true},
	}
	for _, tc := range tests {
		s := New(tc.inner, 2)
		if _, ok := s.(storage.ConditionalCreator); ok != tc.cc {
			t.Errorf("%s: ConditionalCreator = %v, want %v", tc.name, ok, tc.cc)
		}
		if _, ok := s.(storage.Copier); ok != tc.copier {
			t.Errorf("%s: Copier = %v, want %v", tc.name, ok, tc.copier)
		}
		if s.String() != c.String() {
			t.Errorf("%s: String() = %q, want %q", tc.name, s.String(), c.String())
		}
	}
}

// TestConformance runs the suite through a single slot: the wrapper is
// transparent and the suite never needs two operations at once.
func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s := New(newFS(t), 1)
		t.Cleanup(func() { s.Close() })
		return s
	})
}
