package s3

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// A store that accepts the connection and never answers fails the request
// with net/http's "timeout awaiting response headers", which is
// errors.Is(context.DeadlineExceeded) while the caller's ctx is live: that
// is a transient failure (retried, exit 3), not the caller's deadline.
func TestResponseHeaderTimeoutIsRetryable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // never answers
		}
	}()
	client := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 100 * time.Millisecond}}
	_, err = client.Get("http://" + ln.Addr().String() + "/")
	if err == nil {
		t.Fatal("a server that never answers: no error")
	}
	if !isRetryable(err) {
		t.Errorf("isRetryable(%v) = false, want true", err)
	}
	if isRetryable(context.Canceled) {
		t.Error("isRetryable(context.Canceled) = true")
	}
}
