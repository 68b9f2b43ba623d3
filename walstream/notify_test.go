package walstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/pg/replication"
)

// fakeWalsender is the server side of one replication connection: it
// reads the standby's status updates.
type fakeWalsender struct {
	statuses chan status
	errs     <-chan error
}

// status is a standby status update ('r').
type status struct {
	write, flush pg.LSN
	reply        bool
}

// startFakeWalsender starts the fake server and returns the connection
// string for it.
func startFakeWalsender(t *testing.T) (*fakeWalsender, string) {
	t.Helper()
	f := &fakeWalsender{statuses: make(chan status, 16)}
	connString, errs := pgtest.FakeServer(t, "15.0", f.serve)
	f.errs = errs
	return f, connString
}

func (f *fakeWalsender) serve(be *pgproto3.Backend) error {
	for {
		msg, err := be.Receive()
		if err != nil {
			return err
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) != 34 || cd.Data[0] != 'r' {
			continue
		}
		f.statuses <- status{
			write: pg.LSN(binary.BigEndian.Uint64(cd.Data[1:])),
			flush: pg.LSN(binary.BigEndian.Uint64(cd.Data[9:])),
			reply: cd.Data[33] == 1,
		}
	}
}

func (f *fakeWalsender) next(t *testing.T, what string) status {
	t.Helper()
	select {
	case st := <-f.statuses:
		return st
	case err := <-f.errs:
		t.Fatalf("%s: the fake server stopped: %v", what, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no status update within 30s", what)
	}
	return status{}
}

// idleReceiver runs copyLoop against a fake server with a status interval
// of an hour: any status after the first one is prompted by something
// else.
func idleReceiver(t *testing.T) (*receiver, *fakeWalsender, context.CancelFunc, chan error) {
	t.Helper()
	return idleReceiverWith(t, Options{StatusInterval: time.Hour})
}

// idleReceiverWith is idleReceiver with the receiver's options o.
func idleReceiverWith(t *testing.T, o Options) (*receiver, *fakeWalsender, context.CancelFunc, chan error) {
	t.Helper()
	srv, connString := startFakeWalsender(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	conn, err := replication.ConnectString(ctx, connString)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	m, err := newMetrics(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &receiver{o: o, log: slog.New(slog.DiscardHandler), m: m,
		conn: conn, next: 0x3000000, flushed: 0x2000000}
	done := make(chan error, 1)
	go func() {
		_, _, err := r.copyLoop(ctx, conn.PgConn())
		done <- err
	}()
	if st := srv.next(t, "first status"); st.flush != 0x2000000 || st.write != 0x3000000 {
		t.Fatalf("first status: %+v, want flush 0/2000000, write 0/3000000", st)
	}
	return r, srv, cancel, done
}

// TestFlushReportedOnDurability: the receiving loop sleeps in its wait for
// the server until the uploader makes WAL durable, and then reports the
// new flush position at once: no timer woke it before, and the one wake-up
// is the uploader's. A poll (the 200 ms one this replaced) fails the
// count, however fast the machine.
func TestFlushReportedOnDurability(t *testing.T) {
	r, srv, _, _ := idleReceiver(t)
	time.Sleep(500 * time.Millisecond)
	if n := r.wakeups.Load(); n != 0 {
		t.Fatalf("the idle loop woke %d times without a message, a ring or its status timer: it polls", n)
	}
	r.advanceFlushed(0x2800000) // what uploadOne and uploadPartial call once stored
	if st := srv.next(t, "status after durability"); st.flush != 0x2800000 {
		t.Fatalf("status after durability: %+v, want flush 0/2800000", st)
	}
	if n := r.wakeups.Load(); n != 1 {
		t.Errorf("%d wake-ups for one durable upload, want 1", n)
	}
	// The same flush position is not reported twice; a position that does
	// not move (a partial behind a gap) wakes nobody.
	r.moveFlushed(0x2900000, 0x2a00000)
	select {
	case st := <-srv.statuses:
		t.Errorf("status without progress: %+v", st)
	case <-time.After(300 * time.Millisecond):
	}
	if n := r.wakeups.Load(); n != 1 {
		t.Errorf("%d wake-ups after a partial that moved nothing, want 1", n)
	}
}

// TestCopyLoopWakesOnEnd: cancellation and an uploader failure end the
// wait at once, too.
func TestCopyLoopWakesOnEnd(t *testing.T) {
	_, _, cancel, done := idleReceiver(t)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("copyLoop after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("copyLoop did not return after cancel")
	}

	r, _, _, done := idleReceiver(t)
	boom := errors.New("upload: conflict")
	r.setFatal(boom)
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Errorf("copyLoop after the uploader failed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("copyLoop did not return after the uploader failed")
	}
}

// TestWakeup: a ring ends the armed wait, or, when none is armed, the
// next one; the deadline ends a wait nobody rings.
func TestWakeup(t *testing.T) {
	var w wakeup
	far := time.Now().Add(time.Hour)
	ctx, done := w.arm(context.Background(), far)
	w.ring()
	if ctx.Err() == nil {
		t.Error("ring did not end the armed wait")
	}
	done()
	w.ring() // between waits
	ctx, done = w.arm(context.Background(), far)
	if ctx.Err() == nil {
		t.Error("a ring between waits was lost")
	}
	done()
	ctx, done = w.arm(context.Background(), far)
	if ctx.Err() != nil {
		t.Error("one ring ended two waits")
	}
	done()
	ctx, done = w.arm(context.Background(), time.Now().Add(10*time.Millisecond))
	<-ctx.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("unrung wait ended with %v, want its deadline", ctx.Err())
	}
	done()
}

func TestPrefixReaderAt(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "seg")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The file holds more than the flush position: bytes being written.
	if _, err := f.Write([]byte("flushedNEWER")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(prefixReaderAt{f: f, n: 7}, 0, 16))
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte("flushed"), make([]byte, 9)...); !bytes.Equal(got, want) {
		t.Errorf("read %q; want the flushed prefix then zeros %q", got, want)
	}
	// A file shorter than n reads as zeros past its end.
	got, err = io.ReadAll(io.NewSectionReader(prefixReaderAt{f: f, n: 14}, 0, 16))
	if err != nil || !bytes.Equal(got, append([]byte("flushedNEWER"), 0, 0, 0, 0)) {
		t.Errorf("read %q, %v", got, err)
	}
}
