//go:build faults

package faults

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/walferry/walferry/internal/testenv"
)

// front is the faulty path from walferry to MinIO:
//
//	walferry -> toxiproxy (TCP toxics) -> fault HTTP front (500 / 503) -> MinIO
//
// walferry signs its requests for the toxiproxy address; both hops keep the
// Host header, so MinIO checks the signature walferry made.
type front struct {
	proxy    *toxiproxy.Proxy
	Endpoint string // http://127.0.0.1:PORT, toxiproxy's listener

	// The HTTP front fails every request (or every one after the first
	// skip) with status while status is not 0.
	status atomic.Int32
	skip   atomic.Int64
	seen   atomic.Int64
}

// newFront starts a front to MinIO; it is stopped when t ends.
func newFront(t *testing.T, s3 testenv.S3Env) *front {
	t.Helper()
	return newFrontTo(t, s3.Endpoint)
}

// newFrontTo starts a front to the HTTP store at endpoint (MinIO,
// fake-gcs-server, Azurite: the 500 / 503 answers carry S3's XML body,
// which the other clients classify by status alone); it is stopped when
// t ends.
func newFrontTo(t *testing.T, endpoint string) *front {
	t.Helper()
	up, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	f := &front{}
	rp := httputil.NewSingleHostReverseProxy(up)
	rp.FlushInterval = -1
	rp.ErrorLog = nil
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := f.seen.Add(1)
		if st := int(f.status.Load()); st != 0 && n > f.skip.Load() {
			f.fail(w, r, st)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	zerolog.SetGlobalLevel(zerolog.Disabled) // the toxics log through the global logger
	tsrv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	f.proxy = toxiproxy.NewProxy(tsrv, "store", "127.0.0.1:0", ln.Addr().String())
	if err := f.proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.proxy.Stop)
	f.Endpoint = "http://" + f.proxy.Listen
	return f
}

// fail answers r as S3 does when it is overloaded (503 SlowDown) or broken
// (500 InternalError), after draining the request body.
func (f *front) fail(w http.ResponseWriter, r *http.Request, status int) {
	code, msg := "InternalError", "We encountered an internal error. Please try again."
	switch status {
	case http.StatusServiceUnavailable:
		code, msg = "SlowDown", "Please reduce your request rate."
	case http.StatusForbidden:
		code, msg = "InvalidAccessKeyId", "The Access Key Id you provided does not exist in our records."
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource></Error>`, code, msg, r.URL.Path)
	}
}

// httpFault makes the front answer status to every request after the next
// skip ones; status 0 heals it.
func (f *front) httpFault(status int, skip int64) {
	f.skip.Store(f.seen.Load() + skip)
	f.status.Store(int32(status))
}

// toxic adds a toxiproxy toxic; stream is "upstream" (walferry to the
// store) or "downstream".
func (f *front) toxic(t *testing.T, name, typ, stream string, attrs string) {
	t.Helper()
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":{%s}}`, name, typ, stream, attrs)
	if _, err := f.proxy.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatalf("add toxic %s: %v", js, err)
	}
}

var healMu sync.Mutex

// heal removes every toxic and HTTP fault.
func (f *front) heal() {
	healMu.Lock()
	defer healMu.Unlock()
	f.proxy.Toxics.ResetToxics(context.Background())
	f.status.Store(0)
}
