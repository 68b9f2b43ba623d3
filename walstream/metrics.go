package walstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/internal/pg"
)

// The receiver's Prometheus metrics, registered on Options.Registry for as
// long as Run runs (docs/metrics.md is the user's reference):
//
//	walferry_walstream_received_lsn          gauge    end of the WAL received into the spool (never below flushed)
//	walferry_walstream_flushed_lsn           gauge    end of the WAL durable in every repository (reported to the server as flushed)
//	walferry_walstream_uploaded_lsn          gauge    highest end of WAL in a segment or .partial uploaded (0 before the first)
//	walferry_walstream_server_lsn            gauge    the server's WAL end as it last reported it
//	walferry_walstream_lag_bytes             gauge    server_lsn - flushed_lsn, at least 0
//	walferry_walstream_lag_seconds           gauge    how long the oldest byte not yet flushed has been known (0 when none)
//	walferry_walstream_timeline              gauge    timeline being streamed
//	walferry_walstream_connected             gauge    1 while streaming, else 0
//	walferry_walstream_segments_uploaded_total   counter  complete segments stored in every repository
//	walferry_walstream_partial_uploads_total     counter  .partial objects stored in every repository
//	walferry_walstream_upload_errors_total       counter  failed upload attempts, each after its quick retries gave up
//	walferry_walstream_reconnects_total          counter  reconnections after a failed or ended session
//	walferry_walstream_upload_seconds        histogram  duration of each successful upload to every repository
//
// LSNs are byte positions in the WAL stream, exported as floats: exact up
// to 2^53 bytes (8 PiB of WAL), so differences of two of them are bytes.
const (
	metricsNamespace = "walferry"
	metricsSubsystem = "walstream"
)

// progressInterval is how often the receiver logs its positions and lag,
// when they changed.
const progressInterval = time.Minute

// lagSampleEvery and maxLagSamples bound the memory lag_seconds needs: one
// sample per second of new server WAL not yet flushed, at most an hour's
// worth; past that the newest sample is extended, which can only make
// lag_seconds larger than the truth, never smaller.
const (
	lagSampleEvery = time.Second
	maxLagSamples  = 3600
)

// uploadBuckets are upload_seconds' buckets: a 16 MiB segment takes tens
// of milliseconds on a filesystem and seconds on a slow link.
var uploadBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

// metrics is the receiver's view of its own progress: the Prometheus
// metrics (unregistered without a registry), the Health handed to the
// caller, and the periodic progress log. Safe for concurrent use by the
// receiving and the uploading goroutines; a method call costs a mutex.
type metrics struct {
	reg    *prometheus.Registry
	health *Health
	now    func() time.Time

	received, flushed, uploaded, server, lagBytes, timeline, connected prometheus.Gauge
	lagSeconds                                                         prometheus.GaugeFunc
	segments, partials, uploadErrors, reconnects                       prometheus.Counter
	uploadSeconds                                                      prometheus.Histogram

	mu                                            sync.Mutex
	serverEnd, receivedLSN, flushedLSN, uploadLSN pg.LSN
	tli                                           pg.TimeLineID
	// pending holds, oldest first, when the server's WAL end was first
	// known to have passed each end: the first sample past flushedLSN
	// dates the oldest byte not yet flushed.
	pending      []lagSample
	lastProgress time.Time
	logged       [2]pg.LSN // received and flushed at the last progress log
}

type lagSample struct {
	end pg.LSN
	at  time.Time
}

// newMetrics makes the receiver's metrics and registers them on reg when
// it is not nil; a registry that already holds them (another Run that has
// not returned) is an error.
func newMetrics(reg *prometheus.Registry, h *Health) (*metrics, error) {
	m := &metrics{reg: reg, health: h, now: time.Now}
	// A Health handed to an earlier Run starts afresh.
	h.set(func(h *Health) { h.streaming, h.stopped, h.sessionErr, h.uploadErr = false, false, nil, nil })
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help})
	}
	m.received = gauge("received_lsn", "End of the WAL received from the server into the spool, as a byte position (never below flushed_lsn).")
	m.flushed = gauge("flushed_lsn", "End of the WAL durable in every repository, as a byte position; the flush position reported to the server.")
	m.uploaded = gauge("uploaded_lsn", "Highest end of WAL held by a segment or .partial this receiver uploaded, as a byte position (ahead of flushed_lsn while an earlier segment waits); 0 before the first upload.")
	m.server = gauge("server_lsn", "The server's end of WAL as it last reported it (IDENTIFY_SYSTEM, WAL data and keepalive messages), as a byte position.")
	m.lagBytes = gauge("lag_bytes", "Bytes of WAL the server reported that are not yet durable in every repository: server_lsn - flushed_lsn, at least 0.")
	m.timeline = gauge("timeline", "Timeline being streamed.")
	m.connected = gauge("connected", "1 while streaming from the server, else 0.")
	m.lagSeconds = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "lag_seconds",
		Help: "Seconds since the receiver first learned of the oldest WAL byte that is not yet durable in every repository; 0 when every byte the server reported is."},
		func() float64 { return m.lagSince().Seconds() })
	m.segments = counter("segments_uploaded_total", "Complete WAL segments stored in every repository.")
	m.partials = counter("partial_uploads_total", "Unfinished segments stored as .partial in every repository.")
	m.uploadErrors = counter("upload_errors_total", "Failed upload attempts of segments, .partial and history files, each after its quick retries gave up; every later retry counts again.")
	m.reconnects = counter("reconnects_total", "Reconnections to the server after a failed or ended streaming session.")
	m.uploadSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "upload_seconds",
		Help: "Duration of each successful upload of a segment, .partial or history file to every repository.", Buckets: uploadBuckets})
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors()[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("walstream: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.received, m.flushed, m.uploaded, m.server, m.lagBytes, m.lagSeconds, m.timeline,
		m.connected, m.segments, m.partials, m.uploadErrors, m.reconnects, m.uploadSeconds}
}

// unregister removes the metrics from the registry (at the end of Run).
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}

// connectedTo records a new session's IDENTIFY_SYSTEM position. The
// server's end may be below what an earlier server reported (a standby
// promoted after the old primary wrote more): it replaces it.
func (m *metrics) connectedTo(serverEnd pg.LSN) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if serverEnd < m.serverEnd {
		i := len(m.pending)
		for i > 0 && m.pending[i-1].end > serverEnd {
			i--
		}
		// The first sample past the new end dates the bytes before it
		// that still exist.
		if i < len(m.pending) && serverEnd > m.flushedLSN {
			m.pending[i].end = serverEnd
			i++
		}
		m.pending = m.pending[:i]
		m.serverEnd = serverEnd
	}
	m.serverEndLocked(serverEnd)
}

// serverReported records the server's WAL end from a message.
func (m *metrics) serverReported(end pg.LSN) {
	m.mu.Lock()
	m.serverEndLocked(end)
	m.mu.Unlock()
}

func (m *metrics) serverEndLocked(end pg.LSN) {
	if end > m.serverEnd {
		m.serverEnd = end
		now := m.now()
		if end > m.flushedLSN {
			n := len(m.pending)
			if n > 0 && (n >= maxLagSamples || now.Sub(m.pending[n-1].at) < lagSampleEvery) {
				m.pending[n-1].end = end
			} else {
				m.pending = append(m.pending, lagSample{end: end, at: now})
			}
		}
	}
	m.server.Set(float64(m.serverEnd))
	m.setLagLocked()
}

// receivedTo records the end of the WAL in the spool.
func (m *metrics) receivedTo(next pg.LSN) {
	m.mu.Lock()
	m.receivedLSN = next
	// The server had it: a message's WAL end is never before its data.
	m.serverEndLocked(next)
	m.received.Set(float64(max(m.receivedLSN, m.flushedLSN)))
	m.mu.Unlock()
}

// flushedTo records the new flush position.
func (m *metrics) flushedTo(lsn pg.LSN) {
	m.mu.Lock()
	m.flushedLSN = max(m.flushedLSN, lsn)
	i := 0
	for i < len(m.pending) && m.pending[i].end <= m.flushedLSN {
		i++
	}
	m.pending = m.pending[i:]
	m.flushed.Set(float64(m.flushedLSN))
	m.received.Set(float64(max(m.receivedLSN, m.flushedLSN)))
	m.setLagLocked()
	m.mu.Unlock()
}

func (m *metrics) setLagLocked() {
	var lag float64
	if m.serverEnd > m.flushedLSN {
		lag = float64(m.serverEnd - m.flushedLSN)
	}
	m.lagBytes.Set(lag)
}

// lagSince is lag_seconds as a duration.
func (m *metrics) lagSince() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lagSinceLocked()
}

func (m *metrics) lagSinceLocked() time.Duration {
	if len(m.pending) == 0 {
		return 0
	}
	return max(0, m.now().Sub(m.pending[0].at))
}

// onTimeline records the timeline being streamed.
func (m *metrics) onTimeline(tli pg.TimeLineID) {
	m.mu.Lock()
	m.tli = tli
	m.mu.Unlock()
	m.timeline.Set(float64(tli))
}

// streaming records that START_REPLICATION succeeded.
func (m *metrics) streaming() {
	m.connected.Set(1)
	m.health.set(func(h *Health) { h.streaming, h.stopped, h.sessionErr = true, false, nil })
}

// disconnected records the end of a session; err says why (nil at
// shutdown).
func (m *metrics) disconnected(err error) {
	m.connected.Set(0)
	m.health.set(func(h *Health) {
		h.streaming, h.sessionErr = false, err
		if err == nil {
			h.stopped = true
		}
	})
}

// reconnecting counts a reconnection after a failed session.
func (m *metrics) reconnecting() { m.reconnects.Inc() }

// uploadKind is what uploadDone stored.
type uploadKind int

const (
	uploadSegment uploadKind = iota
	uploadPartial
	uploadOther // history files
)

// uploadDone records a successful upload that took d; end is the end of
// the WAL it holds (0 when not a position of the current stream).
func (m *metrics) uploadDone(kind uploadKind, end pg.LSN, d time.Duration) {
	m.uploadSeconds.Observe(d.Seconds())
	switch kind {
	case uploadSegment:
		m.segments.Inc()
	case uploadPartial:
		m.partials.Inc()
	}
	if end.IsValid() {
		m.mu.Lock()
		m.uploadLSN = max(m.uploadLSN, end)
		m.uploaded.Set(float64(m.uploadLSN))
		m.mu.Unlock()
	}
	m.health.set(func(h *Health) { h.uploadErr = nil })
}

// uploadFailed counts a failed upload attempt.
func (m *metrics) uploadFailed(err error) {
	m.uploadErrors.Inc()
	m.health.set(func(h *Health) { h.uploadErr = err })
}

// logProgress logs the positions and the lag every progressInterval, when
// something moved since the last such line or WAL waits to be flushed.
func (m *metrics) logProgress(ctx context.Context, log *slog.Logger) {
	m.mu.Lock()
	now := m.now()
	if now.Sub(m.lastProgress) < progressInterval {
		m.mu.Unlock()
		return
	}
	m.lastProgress = now
	moved := m.logged != [2]pg.LSN{m.receivedLSN, m.flushedLSN}
	m.logged = [2]pg.LSN{m.receivedLSN, m.flushedLSN}
	attrs := []slog.Attr{
		slog.String("received", max(m.receivedLSN, m.flushedLSN).String()),
		slog.String("flushed", m.flushedLSN.String()),
		slog.String("uploaded", m.uploadLSN.String()),
		slog.String("server_lsn", m.serverEnd.String()),
		slog.Int64("lag_bytes", max(0, m.serverEnd.Diff(m.flushedLSN))),
		slog.Duration("lag", m.lagSinceLocked().Round(time.Millisecond)),
		slog.Uint64("timeline", uint64(m.tli)),
	}
	waiting := len(m.pending) > 0
	m.mu.Unlock()
	if moved || waiting {
		log.LogAttrs(ctx, slog.LevelInfo, "progress", attrs...)
	}
}

// lagAttrs are the lag fields for a log line.
func (m *metrics) lagAttrs() []any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return []any{"lag_bytes", max(0, m.serverEnd.Diff(m.flushedLSN)), "lag", m.lagSinceLocked().Round(time.Millisecond)}
}

// Health is a receiver's state for a health check (Options.Health): it is
// healthy while it streams from the server and its last upload succeeded.
// The zero value is ready to use; its methods are safe for concurrent use.
type Health struct {
	mu         sync.Mutex
	streaming  bool
	stopped    bool
	sessionErr error // why the last session ended
	uploadErr  error // the last upload attempt's failure, nil once one succeeds
}

// ErrUnhealthy is wrapped by every error Health.Check returns.
var ErrUnhealthy = errors.New("unhealthy")

// Check returns nil when the receiver is streaming and its last upload (if
// any) succeeded, else an error wrapping ErrUnhealthy whose text, one
// line, says why.
func (h *Health) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.stopped:
		return fmt.Errorf("%w: the receiver stopped", ErrUnhealthy)
	case !h.streaming && h.sessionErr != nil:
		return fmt.Errorf("%w: not streaming from PostgreSQL: %s", ErrUnhealthy, oneLine(h.sessionErr))
	case !h.streaming:
		return fmt.Errorf("%w: not streaming from PostgreSQL yet", ErrUnhealthy)
	case h.uploadErr != nil:
		return fmt.Errorf("%w: the last upload failed: %s", ErrUnhealthy, oneLine(h.uploadErr))
	}
	return nil
}

// set changes h under its lock; a nil Health ignores it.
func (h *Health) set(f func(*Health)) {
	if h == nil {
		return
	}
	h.mu.Lock()
	f(h)
	h.mu.Unlock()
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
