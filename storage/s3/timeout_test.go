package s3

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
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

// An https endpoint whose certificate no trusted CA signed is refused, at
// once (not retried as a transient failure), with an error that names the
// fix: walferry has no option to skip verification.
func TestSelfSignedEndpointRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request reached a server with an untrusted certificate: %s %s", r.Method, r.URL)
	}))
	defer srv.Close()
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes
	t.Setenv("AWS_CA_BUNDLE", "")
	c, err := New(t.Context(), Config{Bucket: "b", Endpoint: srv.URL, AccessKeyID: "a", SecretAccessKey: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Stat(t.Context(), "k")
	if err == nil {
		t.Fatal("Stat against a self-signed endpoint succeeded")
	}
	if !errors.Is(err, storage.ErrUntrustedCertificate) || storage.IsRetryable(err) {
		t.Errorf("Stat = %v: want storage.ErrUntrustedCertificate, not retryable", err)
	}
	if got := failure.Of(err); got != failure.Usage {
		t.Errorf("failure kind %v, want usage (a configuration to fix)", got)
	}
	for _, want := range []string{"certificate", "SSL_CERT_FILE", "AWS_CA_BUNDLE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
