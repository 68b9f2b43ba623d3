package walstream

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
)

// gather returns the registry's walferry_walstream_* values by name:
// gauges and counters by their name, histograms as name_count.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "walferry_walstream_") || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		switch mf.GetType() {
		case dto.MetricType_GAUGE:
			out[mf.GetName()] = m.GetGauge().GetValue()
		case dto.MetricType_COUNTER:
			out[mf.GetName()] = m.GetCounter().GetValue()
		case dto.MetricType_HISTOGRAM:
			out[mf.GetName()+"_count"] = float64(m.GetHistogram().GetSampleCount())
		}
	}
	return out
}

// TestMetricsLag drives the metrics with a fake clock: lag_bytes and
// lag_seconds follow the server's reported end and the flush position.
func TestMetricsLag(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := &Health{}
	m, err := newMetrics(reg, h)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	m.now = func() time.Time { return now }
	at := func(d time.Duration) { now = t0.Add(d) }
	check := func(step string, wantBytes, wantSeconds float64) {
		t.Helper()
		got := gather(t, reg)
		if got["walferry_walstream_lag_bytes"] != wantBytes || got["walferry_walstream_lag_seconds"] != wantSeconds {
			t.Errorf("%s: lag %v bytes, %v seconds; want %v bytes, %v seconds", step,
				got["walferry_walstream_lag_bytes"], got["walferry_walstream_lag_seconds"], wantBytes, wantSeconds)
		}
		if got["walferry_walstream_received_lsn"] < got["walferry_walstream_flushed_lsn"] {
			t.Errorf("%s: received_lsn %v < flushed_lsn %v", step, got["walferry_walstream_received_lsn"], got["walferry_walstream_flushed_lsn"])
		}
	}

	m.flushedTo(0x1000)
	m.connectedTo(0x3000) // t0: the server is 0x2000 bytes ahead
	m.receivedTo(0x1000)
	at(5 * time.Second)
	check("connected behind", 0x2000, 5)
	at(2 * time.Second)
	m.serverReported(0x5000) // t0+2s
	at(6 * time.Second)
	m.flushedTo(0x3000) // what was known at t0 is flushed; 0x3000-0x5000 known since t0+2s
	check("first part flushed", 0x2000, 4)
	m.receivedTo(0x5000)
	m.flushedTo(0x5000)
	at(8 * time.Second)
	check("caught up", 0, 0)

	// Reports within a second share one sample dated by the first.
	at(10 * time.Second)
	m.serverReported(0x6000)
	at(10*time.Second + 500*time.Millisecond)
	m.serverReported(0x7000)
	at(12 * time.Second)
	m.flushedTo(0x6800)
	check("within one sample", 0x800, 2)

	// A server that reports less than its predecessor (promoted standby)
	// replaces the end; the dates of the bytes that remain are kept.
	m.connectedTo(0x6c00)
	check("lower server end", 0x400, 2)
	m.flushedTo(0x6c00)
	check("lower server end flushed", 0, 0)

	// The flush position never goes back; received is never shown below it.
	m.flushedTo(0x100)
	m.receivedTo(0x100)
	if got := gather(t, reg); got["walferry_walstream_flushed_lsn"] != 0x6c00 || got["walferry_walstream_received_lsn"] != 0x6c00 {
		t.Errorf("flushed %v, received %v after going back; want both 0x6c00", got["walferry_walstream_flushed_lsn"], got["walferry_walstream_received_lsn"])
	}

	// A second receiver on the same registry is refused until the first
	// unregisters.
	if _, err := newMetrics(reg, nil); err == nil {
		t.Fatal("a second registration on one registry succeeded")
	}
	m.unregister()
	if got := gather(t, reg); len(got) != 0 {
		t.Fatalf("metrics left after unregister: %v", got)
	}
	if _, err := newMetrics(reg, nil); err != nil {
		t.Fatalf("register after unregister: %v", err)
	}
}

func TestMetricsNilRegistry(t *testing.T) {
	m, err := newMetrics(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.connectedTo(10)
	m.streaming()
	m.uploadFailed(errors.New("x"))
	m.uploadDone(uploadSegment, 20, time.Second)
	m.disconnected(nil)
	m.unregister()
}

func TestHealth(t *testing.T) {
	h := &Health{}
	m, err := newMetrics(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	want := func(step, reason string) {
		t.Helper()
		err := h.Check()
		switch {
		case reason == "" && err != nil:
			t.Errorf("%s: Check() = %v, want nil", step, err)
		case reason != "" && (err == nil || !strings.Contains(err.Error(), reason) || !errors.Is(err, ErrUnhealthy)):
			t.Errorf("%s: Check() = %v, want ErrUnhealthy containing %q", step, err, reason)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("%s: Check() is more than one line: %q", step, err)
		}
	}
	want("new", "not streaming from PostgreSQL yet")
	m.streaming()
	want("streaming", "")
	m.uploadFailed(errors.New("s3: put: 503 Slow Down\nretry later"))
	want("upload failed", "the last upload failed: s3: put: 503 Slow Down retry later")
	m.uploadDone(uploadPartial, 1, time.Millisecond)
	want("upload succeeded again", "")
	m.disconnected(errors.New("receive: unexpected EOF"))
	want("disconnected", "not streaming from PostgreSQL: receive: unexpected EOF")
	m.streaming()
	want("reconnected", "")
	m.disconnected(nil)
	want("stopped", "the receiver stopped")
}

// TestMetricsReceive streams from a real server and checks the metrics
// against what the server reports: the flush position it shows for the
// receiver and its slot equals flushed_lsn, segment switches count, and
// connected follows the server going down.
func TestMetricsReceive(t *testing.T) {
	c := testCluster(t)
	rp := testRepo(t, c)
	size := testSize(t)
	c.Exec(t, "CREATE TABLE t (id int, v text)")
	log := &logBuf{}
	reg := prometheus.NewRegistry()
	health := &Health{}
	o := testOptions(t, c, rp, filepath.Join(t.TempDir(), "spool"), log)
	o.Registry, o.Health = reg, health
	recv := start(o)
	stopped := false
	defer func() {
		if !stopped {
			recv.stop(t)
		}
	}()

	waitFor(t, "connected = 1", 30*time.Second, log, func() bool {
		return gather(t, reg)["walferry_walstream_connected"] == 1
	})
	if err := health.Check(); err != nil {
		t.Errorf("Health while streaming: %v", err)
	}
	if got := gather(t, reg)["walferry_walstream_timeline"]; got != 1 {
		t.Errorf("timeline = %v, want 1", got)
	}

	// Inserts reach the repository as a .partial: flushed_lsn passes the
	// server's flush position after them, and the server then shows
	// exactly flushed_lsn as the receiver's flush position and as the
	// slot's restart point.
	c.Exec(t, "INSERT INTO t SELECT g, repeat('m', 100) FROM generate_series(1, 2000) g")
	var text string
	c.QueryRow(t, "SELECT pg_current_wal_flush_lsn()::text").Scan(&text)
	after, err := pg.ParseLSN(text)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flushed_lsn to pass "+after.String(), 30*time.Second, log, func() bool {
		return gather(t, reg)["walferry_walstream_flushed_lsn"] >= float64(after)
	})
	var last string
	waitFor(t, "the server to report flushed_lsn for the receiver and its slot", 30*time.Second, log, func() bool {
		before := gather(t, reg)
		var flush, restart string
		c.QueryRow(t, `SELECT r.flush_lsn::text, s.restart_lsn::text FROM pg_stat_replication r
			JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'walferry_test'`).Scan(&flush, &restart)
		now := gather(t, reg)
		for _, m := range []map[string]float64{before, now} {
			if m["walferry_walstream_received_lsn"] < m["walferry_walstream_flushed_lsn"] {
				t.Fatalf("received_lsn %v < flushed_lsn %v", m["walferry_walstream_received_lsn"], m["walferry_walstream_flushed_lsn"])
			}
			if m["walferry_walstream_uploaded_lsn"] < m["walferry_walstream_flushed_lsn"] {
				t.Fatalf("uploaded_lsn %v < flushed_lsn %v", m["walferry_walstream_uploaded_lsn"], m["walferry_walstream_flushed_lsn"])
			}
		}
		f := pg.LSN(now["walferry_walstream_flushed_lsn"])
		last = "metric " + f.String() + ", pg_stat_replication " + flush + ", slot " + restart
		return before["walferry_walstream_flushed_lsn"] == now["walferry_walstream_flushed_lsn"] &&
			flush == f.String() && restart == f.String()
	})
	t.Logf("flush positions agree: %s", last)
	if got := gather(t, reg)["walferry_walstream_partial_uploads_total"]; got < 1 {
		t.Errorf("partial_uploads_total = %v after a .partial made the inserts durable", got)
	}

	// Idle and caught up: no lag.
	waitFor(t, "lag_bytes and lag_seconds to reach 0", 30*time.Second, log, func() bool {
		m := gather(t, reg)
		return m["walferry_walstream_lag_bytes"] == 0 && m["walferry_walstream_lag_seconds"] == 0 &&
			m["walferry_walstream_server_lsn"] == m["walferry_walstream_flushed_lsn"]
	})

	// Each switched segment counts once it is stored.
	before := gather(t, reg)
	names := switchWAL(t, c, 2)
	checkSegments(t, c, rp, log, names)
	_, lastNo, err := pg.ParseSegmentName(names[len(names)-1], size)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "segments_uploaded_total and flushed_lsn to count the switched segments", 30*time.Second, log, func() bool {
		m := gather(t, reg)
		return m["walferry_walstream_segments_uploaded_total"] >= before["walferry_walstream_segments_uploaded_total"]+float64(len(names)) &&
			m["walferry_walstream_flushed_lsn"] >= float64(size.StartLSN(lastNo+1))
	})
	m := gather(t, reg)
	if got, uploads := m["walferry_walstream_upload_seconds_count"], m["walferry_walstream_segments_uploaded_total"]+m["walferry_walstream_partial_uploads_total"]; got < uploads {
		t.Errorf("upload_seconds has %v observations, fewer than the %v uploads", got, uploads)
	}
	if m["walferry_walstream_upload_errors_total"] != 0 || m["walferry_walstream_reconnects_total"] != 0 {
		t.Errorf("upload_errors_total %v, reconnects_total %v; want 0 on a healthy run",
			m["walferry_walstream_upload_errors_total"], m["walferry_walstream_reconnects_total"])
	}

	// The server stops: not connected, unhealthy, and reconnecting.
	c.Stop(t, pgtest.StopFast)
	waitFor(t, "connected = 0 and a reconnection after the server stopped", 30*time.Second, log, func() bool {
		m := gather(t, reg)
		return m["walferry_walstream_connected"] == 0 && m["walferry_walstream_reconnects_total"] >= 1
	})
	if err := health.Check(); err == nil || !strings.Contains(err.Error(), "not streaming") {
		t.Errorf("Health with the server down: %v", err)
	}
	recv.stop(t)
	stopped = true
	if got := gather(t, reg); len(got) != 0 {
		t.Errorf("metrics still registered after Run returned: %v", got)
	}
	if err := health.Check(); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Errorf("Health after Run returned: %v", err)
	}
}
