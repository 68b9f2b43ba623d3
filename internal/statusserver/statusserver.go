// Package statusserver serves a process's Prometheus metrics and its
// health over HTTP: /metrics from a private registry, /healthz (alive) and,
// when the process has a notion of it, /readyz (ready for traffic). The
// WAL receiver and the agent serve through it.
package statusserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/walferry/walferry/internal/failure"
)

// ShutdownTimeout bounds the wait for requests in flight when the server
// stops.
const ShutdownTimeout = 5 * time.Second

// Checker says whether something is healthy (nil) or why not.
type Checker interface {
	Check() error
}

// Listen listens on addr (HOST:PORT). A malformed or unusable address is a
// usage mistake, found before anything connects.
func Listen(addr string) (net.Listener, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, failure.Wrap(failure.Usage, fmt.Errorf("metrics address %q: %v; want HOST:PORT, e.g. 127.0.0.1:9187 or :9187", addr, err))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, failure.Wrap(failure.Usage, fmt.Errorf("metrics address %q: %w; choose another HOST:PORT", addr, err))
	}
	return ln, nil
}

// NewRegistry returns a private registry with the Go runtime's and the
// process's collectors; components register their own metrics on it.
func NewRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return reg, nil
}

// Route is one more handler a process serves beside its metrics and
// health (the agent's GET /status).
type Route struct {
	// Pattern is an http.ServeMux pattern, e.g. "GET /status".
	Pattern string
	Handler http.Handler
}

// Serve serves /metrics for reg, /healthz from health and, when ready is
// not nil, /readyz from ready, and routes, on ln until the returned stop
// is called, which waits (at most ShutdownTimeout) for requests in flight.
func Serve(ln net.Listener, reg *prometheus.Registry, health, ready Checker, log *slog.Logger, routes ...Route) (stop func()) {
	mux := http.NewServeMux()
	for _, r := range routes {
		mux.Handle(r.Pattern, r.Handler)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", checkHandler(health))
	if ready != nil {
		mux.HandleFunc("GET /readyz", checkHandler(ready))
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}
}

// checkHandler answers 200 "ok" while c is healthy, else 503 and why.
func checkHandler(c Checker) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := c.Check(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, err)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}
