package repo

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walferry/walferry/storage"
)

// gatedReader counts the readers inside Read at once, and blocks each
// until the gate opens.
type gatedReader struct {
	gate        <-chan struct{}
	busy, peak  *atomic.Int32
	data        io.Reader
	waitedFirst bool // only the first Read waits: the encoder holds its slot meanwhile
}

func (g *gatedReader) Read(p []byte) (int, error) {
	n := g.busy.Add(1)
	defer g.busy.Add(-1)
	for {
		old := g.peak.Load()
		if n <= old || g.peak.CompareAndSwap(old, n) {
			break
		}
	}
	if !g.waitedFirst {
		g.waitedFirst = true
		<-g.gate
	}
	return g.data.Read(p)
}

// slotsRepo initializes and opens a repository in store.
func slotsRepo(t *testing.T, store storage.Store, compression string) *Repo {
	t.Helper()
	if _, err := Init(t.Context(), store, InitOptions{Cluster: testCluster, Compression: compression, CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(t.Context(), store, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestEncodeSlotsBoundEncoders(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	r := slotsRepo(t, store, "zstd")
	slots := NewEncodeSlots(2)
	gate := make(chan struct{})
	var busy, peak atomic.Int32
	errs := make(chan error, 5)
	for i := range 5 {
		src := &gatedReader{gate: gate, busy: &busy, peak: &peak, data: strings.NewReader(strings.Repeat("wal ", 1000))}
		go func() {
			_, err := r.PutWith(ctx, "obj/"+string(rune('a'+i)), src, PutOptions{IfAbsent: true, Slots: slots})
			errs <- err
		}()
	}
	// Two encoders reach their source; give the other three time to
	// (wrongly) do the same before opening the gate.
	for deadline := time.Now().Add(10 * time.Second); busy.Load() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d encoders started in 10 s, want 2", busy.Load())
		}
	}
	time.Sleep(100 * time.Millisecond)
	if got := busy.Load(); got != 2 {
		t.Errorf("%d encoders reading at once, want 2 (the slots)", got)
	}
	close(gate)
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := peak.Load(); got > 2 {
		t.Errorf("peak of %d encoders at once, want at most 2", got)
	}
	for i := range 5 {
		if _, err := store.Stat(ctx, "obj/"+string(rune('a'+i))); err != nil {
			t.Errorf("object %d: %v", i, err)
		}
	}
}

func TestEncodeSlotsWaitEndsWithContext(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	r := slotsRepo(t, store, "lz4")
	slots := NewEncodeSlots(1)
	gate := make(chan struct{})
	var busy, peak atomic.Int32
	held := &gatedReader{gate: gate, busy: &busy, peak: &peak, data: strings.NewReader("held")}
	done := make(chan error, 1)
	go func() {
		_, err := r.PutWith(ctx, "obj/held", held, PutOptions{Slots: slots})
		done <- err
	}()
	for busy.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := r.PutWith(waitCtx, "obj/waiting", strings.NewReader("waiting"), PutOptions{Slots: slots})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for a free encoder") {
		t.Fatalf("Put while the only slot is held: %v, want the deadline while waiting for a free encoder", err)
	}
	if _, err := store.Stat(ctx, "obj/waiting"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("the refused Put left an object: %v", err)
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutWith(ctx, "obj/waiting", strings.NewReader("waiting"), PutOptions{Slots: slots}); err != nil {
		t.Fatalf("Put after the slot came back: %v", err)
	}
}
