package walstream

import (
	"errors"
	"testing"
	"time"
)

// TestCopyLoopSilentServer: a server that sends nothing (a link that hangs
// without closing: found by the fault suite's TestWalReceive) is asked for
// a reply after half of ReceiveTimeout, and after all of it the loop ends
// with errServerSilent, so the receiver reconnects instead of reporting
// itself connected forever.
func TestCopyLoopSilentServer(t *testing.T) {
	const timeout = time.Second
	start := time.Now()
	_, srv, _, done := idleReceiverWith(t, Options{StatusInterval: time.Hour, ReceiveTimeout: timeout})
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
