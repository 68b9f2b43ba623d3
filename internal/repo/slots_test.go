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

// encoderGate holds back the encoders of the Puts whose sources it made,
// and counts how many are inside their source's Read at once.
type encoderGate struct {
	open       chan struct{}
	busy, peak atomic.Int32
}

func newEncoderGate() *encoderGate { return &encoderGate{open: make(chan struct{})} }

// source returns a reader of data whose first Read waits for the gate:
// the encoder reading it holds its slot meanwhile.
func (g *encoderGate) source(data string) io.Reader {
	return &gatedReader{g: g, data: strings.NewReader(data)}
}

// waitBusy waits until n encoders are inside Read.
func (g *encoderGate) waitBusy(t *testing.T, n int32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); g.busy.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d encoders started in 10 s, want %d", g.busy.Load(), n)
		}
	}
}

type gatedReader struct {
	g      *encoderGate
	data   io.Reader
	waited bool
}

func (r *gatedReader) Read(p []byte) (int, error) {
	n := r.g.busy.Add(1)
	defer r.g.busy.Add(-1)
	for {
		old := r.g.peak.Load()
		if n <= old || r.g.peak.CompareAndSwap(old, n) {
			break
		}
	}
	if !r.waited {
		r.waited = true
		<-r.g.open
	}
	return r.data.Read(p)
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
	gate := newEncoderGate()
	errs := make(chan error, 5)
	for i := range 5 {
		src := gate.source(strings.Repeat("wal ", 1000))
		go func() {
			_, err := r.PutWith(ctx, "obj/"+string(rune('a'+i)), src, PutOptions{IfAbsent: true, Slots: slots})
			errs <- err
		}()
	}
	// Two encoders reach their source; give the other three time to
	// (wrongly) do the same before opening the gate.
	gate.waitBusy(t, 2)
	time.Sleep(100 * time.Millisecond)
	if got := gate.busy.Load(); got != 2 {
		t.Errorf("%d encoders reading at once, want 2 (the slots)", got)
	}
	close(gate.open)
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := gate.peak.Load(); got > 2 {
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
	gate := newEncoderGate()
	held := gate.source("held")
	done := make(chan error, 1)
	go func() {
		_, err := r.PutWith(ctx, "obj/held", held, PutOptions{Slots: slots})
		done <- err
	}()
	gate.waitBusy(t, 1)
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := r.PutWith(waitCtx, "obj/waiting", strings.NewReader("waiting"), PutOptions{Slots: slots})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for a free encoder") {
		t.Fatalf("Put while the only slot is held: %v, want the deadline while waiting for a free encoder", err)
	}
	if _, err := store.Stat(ctx, "obj/waiting"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("the refused Put left an object: %v", err)
	}
	close(gate.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := r.PutWith(ctx, "obj/waiting", strings.NewReader("waiting"), PutOptions{Slots: slots}); err != nil {
		t.Fatalf("Put after the slot came back: %v", err)
	}
}
