package walstream

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/replication"
)

// TestCopyLoopSilentServer: a server that sends nothing (a link that hangs
// without closing: found by the fault suite's TestWalReceive) is asked for
// a reply after half of ReceiveTimeout, and after all of it the loop ends
// with errServerSilent, so the receiver reconnects instead of reporting
// itself connected forever.
func TestCopyLoopSilentServer(t *testing.T) {
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
	const timeout = time.Second
	r := &receiver{o: Options{StatusInterval: time.Hour, ReceiveTimeout: timeout}, log: slog.New(slog.DiscardHandler), m: m,
		conn: conn, next: 0x3000000, flushed: 0x2000000}
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, _, err := r.copyLoop(ctx, conn.PgConn())
		done <- err
	}()
	if st := srv.next(t, "first status"); st.reply {
		t.Errorf("first status asks for a reply: %+v", st)
	}
	st := srv.next(t, "ping")
	if !st.reply {
		t.Errorf("status after half the timeout: %+v, want one asking for a reply", st)
	}
	if at := time.Since(start); at < timeout/2 {
		t.Errorf("asked for a reply after %s, before half the timeout (%s)", at, timeout/2)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errServerSilent) {
			t.Fatalf("copyLoop ended with %v, want errServerSilent", err)
		}
		if at := time.Since(start); at < timeout || at > timeout+2*time.Second {
			t.Errorf("copyLoop gave up after %s, want about %s", at, timeout)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("copyLoop still waits for a silent server 10s after its receive timeout of 1s")
	}
}
