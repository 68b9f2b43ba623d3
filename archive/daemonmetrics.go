package archive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/internal/pg"
)

// The daemon's Prometheus metrics, registered on DaemonOptions.Registry for
// as long as Serve runs (docs/metrics.md is the user's reference):
//
//	walferry_archive_pushes_total{result}           counter  archive-push requests answered: ok, error
//	walferry_archive_gets_total{result}             counter  archive-get requests answered: ok, not_archived, error
//	walferry_archive_last_archived_timestamp_seconds gauge   when the last WAL segment was archived (0: none yet)
//	walferry_archive_last_archived_end_lsn          gauge    end of the WAL in the last segment archived, a byte position
//	walferry_archive_last_failure_timestamp_seconds gauge    when archive-push last failed (0: never)
//	walferry_archive_spool_segments                 gauge    segments waiting in the prefetch spool
const daemonSubsystem = "archive"

// DaemonHealth is what the daemon knows of its own state, for the agent's
// /healthz and walferry status. Safe for concurrent use; the zero value is
// ready to be handed to DaemonOptions.Health.
type DaemonHealth struct {
	mu            sync.Mutex
	serving       bool
	stopped       error
	lastArchived  string
	archivedAt    time.Time
	lastFailure   string
	lastFailureAt time.Time
}

// DaemonState is a snapshot of a DaemonHealth.
type DaemonState struct {
	Serving bool
	// LastArchived and ArchivedAt name the last WAL segment the daemon
	// archived and when ("" and zero before the first).
	LastArchived string
	ArchivedAt   time.Time
	// LastFailure is the last archive-push error, LastFailureAt its time;
	// a later success does not clear it (compare the times).
	LastFailure   string
	LastFailureAt time.Time
}

// State returns a snapshot.
func (h *DaemonHealth) State() DaemonState {
	h.mu.Lock()
	defer h.mu.Unlock()
	return DaemonState{Serving: h.serving, LastArchived: h.lastArchived, ArchivedAt: h.archivedAt,
		LastFailure: h.lastFailure, LastFailureAt: h.lastFailureAt}
}

// Check reports whether the daemon answers hooks: nil while it serves.
func (h *DaemonHealth) Check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.stopped != nil:
		return fmt.Errorf("archive daemon stopped: %w", h.stopped)
	case !h.serving:
		return errors.New("archive daemon not serving yet")
	}
	return nil
}

func (h *DaemonHealth) set(f func(*DaemonHealth)) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	f(h)
}

// daemonMetrics records what the daemon answers.
type daemonMetrics struct {
	reg    *prometheus.Registry
	health *DaemonHealth
	size   pg.WALSegmentSize

	pushes, gets                                *prometheus.CounterVec
	lastArchivedAt, lastArchivedEnd, lastFailAt prometheus.Gauge
	spool                                       prometheus.GaugeFunc
}

func newDaemonMetrics(reg *prometheus.Registry, h *DaemonHealth, size pg.WALSegmentSize, spoolDir string) (*daemonMetrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "walferry", Subsystem: daemonSubsystem, Name: name, Help: help}
	}
	m := &daemonMetrics{
		reg: reg, health: h, size: size,
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts(opts("pushes_total", "archive-push requests answered, by result (ok, error).")), []string{"result"}),
		gets:   prometheus.NewCounterVec(prometheus.CounterOpts(opts("gets_total", "archive-get requests answered, by result (ok, not_archived, error).")), []string{"result"}),
		lastArchivedAt: prometheus.NewGauge(prometheus.GaugeOpts(opts("last_archived_timestamp_seconds",
			"When the last WAL segment was archived, seconds since the epoch (0: none yet)."))),
		lastArchivedEnd: prometheus.NewGauge(prometheus.GaugeOpts(opts("last_archived_end_lsn",
			"End of the WAL in the last segment archived, as a byte position."))),
		lastFailAt: prometheus.NewGauge(prometheus.GaugeOpts(opts("last_failure_timestamp_seconds",
			"When archive-push last failed, seconds since the epoch (0: never)."))),
	}
	m.spool = prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("spool_segments",
		"Segments waiting in the prefetch spool.")), func() float64 { return float64(countSpooled(spoolDir)) })
	for _, l := range []string{"ok", "error"} {
		m.pushes.WithLabelValues(l)
	}
	for _, l := range []string{"ok", "not_archived", "error"} {
		m.gets.WithLabelValues(l)
	}
	if reg != nil {
		for _, c := range m.collectors() {
			if err := reg.Register(c); err != nil {
				m.unregister()
				return nil, fmt.Errorf("daemon metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *daemonMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.pushes, m.gets, m.lastArchivedAt, m.lastArchivedEnd, m.lastFailAt, m.spool}
}

func (m *daemonMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}

// pushed records an archive-push answer for the file name.
func (m *daemonMetrics) pushed(name string, err error) {
	now := time.Now()
	if err != nil {
		m.pushes.WithLabelValues("error").Inc()
		m.lastFailAt.Set(float64(now.UnixNano()) / 1e9)
		m.health.set(func(h *DaemonHealth) { h.lastFailure, h.lastFailureAt = err.Error(), now })
		return
	}
	m.pushes.WithLabelValues("ok").Inc()
	wf, perr := pg.ParseWALFileName(name, m.size)
	if perr != nil || wf.Kind != pg.KindSegment {
		return // history and backup files say nothing of WAL progress
	}
	m.lastArchivedAt.Set(float64(now.UnixNano()) / 1e9)
	m.lastArchivedEnd.Set(float64(m.size.StartLSN(wf.SegNo + 1)))
	m.health.set(func(h *DaemonHealth) { h.lastArchived, h.archivedAt = name, now })
}

// got records an archive-get answer.
func (m *daemonMetrics) got(err error) {
	switch {
	case err == nil:
		m.gets.WithLabelValues("ok").Inc()
	case errors.Is(err, ErrNotArchived):
		m.gets.WithLabelValues("not_archived").Inc()
	default:
		m.gets.WithLabelValues("error").Inc()
	}
}

// countSpooled counts the complete segments in the spool directory.
func countSpooled(dir string) int {
	if dir == "" {
		return 0
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && filepath.Ext(e.Name()) != ".tmp" {
			n++
		}
	}
	return n
}
