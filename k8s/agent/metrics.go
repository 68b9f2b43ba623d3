package agent

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/k8s/status"
)

// The agent's metrics, read from each observation's status.Report (the
// hooks' daemon and the WAL receiver add theirs, walferry_archive_* and
// walferry_walstream_*, to the same registry). docs/metrics.md lists them.
//
//	walferry_instance_role{role}                       gauge  1 for the current role (primary, standby, down)
//	walferry_instance_standby_mode{mode}               gauge  1 for the current mode (streaming, archive, none)
//	walferry_instance_timeline                         gauge  timeline
//	walferry_instance_receive_lsn_bytes                gauge  last WAL position received (standby)
//	walferry_instance_replay_lsn_bytes                 gauge  last WAL position replayed (standby); the current position on a primary
//	walferry_instance_lag_bytes                        gauge  WAL not yet replayed (standby)
//	walferry_instance_lag_seconds                      gauge  age of the last replayed transaction while behind (standby)
//	walferry_instance_upstream_reachable               gauge  1 when the upstream answered the last probe (standby with an upstream)
//	walferry_instance_last_archived_timestamp_seconds  gauge  when the last segment was archived (pg_stat_archiver)
//	walferry_instance_last_archived_age_seconds        gauge  how long ago
//	walferry_instance_archiver_failed                  gauge  pg_stat_archiver.failed_count
//	walferry_instance_archiver_failing                 gauge  1 when the last archive attempt failed
//	walferry_instance_spool_segments                   gauge  prefetched segments waiting in the spool
//	walferry_instance_last_backup_timestamp_seconds    gauge  stop time of the newest backup in the repository
//	walferry_instance_last_backup_age_seconds          gauge  its age
//	walferry_instance_backup_failures_total            counter scheduled or requested backups that failed
//	walferry_instance_slot_retained_bytes{slot,where}  gauge  WAL a replication slot holds back (where: local, upstream)
//	walferry_instance_problems{severity}               gauge  problems status reports now
type metrics struct {
	role, mode                             *prometheus.GaugeVec
	timeline, receiveLSN, replayLSN        prometheus.Gauge
	lagBytes, lagSeconds, upstream         prometheus.Gauge
	archivedAt, archivedAge, failed, failg prometheus.Gauge
	spool, backupAt, backupAge             prometheus.Gauge
	backupFailures                         prometheus.CounterFunc
	slots, problems                        *prometheus.GaugeVec
}

func newMetrics(reg *prometheus.Registry, failures func() float64) (*metrics, error) {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "walferry", Subsystem: "instance", Name: name, Help: help})
	}
	vec := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "walferry", Subsystem: "instance", Name: name, Help: help}, labels)
	}
	m := &metrics{
		role:       vec("role", "1 for the instance's current role (primary, standby, down).", "role"),
		mode:       vec("standby_mode", "1 for where a standby's WAL comes from now (streaming, archive; none on a primary).", "mode"),
		timeline:   g("timeline", "The instance's timeline."),
		receiveLSN: g("receive_lsn_bytes", "Last WAL position received and flushed by the WAL receiver (standby)."),
		replayLSN:  g("replay_lsn_bytes", "Last WAL position replayed (standby), or the current WAL position (primary)."),
		lagBytes:   g("lag_bytes", "WAL a standby has yet to replay: behind its upstream when known, else behind what it received."),
		lagSeconds: g("lag_seconds", "Age of the last replayed transaction while the standby is behind; 0 when caught up."),
		upstream:   g("upstream_reachable", "1 when the standby's upstream answered the sidecar's last probe."),
		archivedAt: g("last_archived_timestamp_seconds", "When the last WAL segment was archived (pg_stat_archiver), Unix time."),
		archivedAge: g("last_archived_age_seconds",
			"Seconds since the last WAL segment was archived."),
		failed:    g("archiver_failed", "Failed archive attempts (pg_stat_archiver.failed_count)."),
		failg:     g("archiver_failing", "1 when the last archive attempt failed."),
		spool:     g("spool_segments", "Prefetched WAL segments waiting in the spool."),
		backupAt:  g("last_backup_timestamp_seconds", "Stop time of the newest backup in the repository, Unix time."),
		backupAge: g("last_backup_age_seconds", "Seconds since the newest backup in the repository stopped."),
		backupFailures: prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "walferry", Subsystem: "instance",
			Name: "backup_failures_total", Help: "Scheduled or requested backups that failed since the sidecar started."}, failures),
		slots:    vec("slot_retained_bytes", "WAL a replication slot holds back (where: local, or upstream for the standby's slot on its source).", "slot", "where"),
		problems: vec("problems", "Problems walferry status reports now, by severity.", "severity"),
	}
	for _, c := range []prometheus.Collector{m.role, m.mode, m.timeline, m.receiveLSN, m.replayLSN, m.lagBytes, m.lagSeconds,
		m.upstream, m.archivedAt, m.archivedAge, m.failed, m.failg, m.spool, m.backupAt, m.backupAge, m.backupFailures, m.slots, m.problems} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return m, nil
}

// update sets every metric from rep.
func (m *metrics) update(rep *status.Report, upstreamReachable bool) {
	for _, r := range []status.Role{status.RolePrimary, status.RoleStandby, status.RoleDown} {
		m.role.WithLabelValues(string(r)).Set(b2f(rep.Role == r))
	}
	for _, md := range []status.Mode{status.ModeStreaming, status.ModeArchive, status.ModeNone} {
		m.mode.WithLabelValues(string(md)).Set(b2f(rep.Mode == md))
	}
	m.timeline.Set(float64(rep.Timeline))
	m.upstream.Set(b2f(upstreamReachable))
	m.receiveLSN.Set(0)
	m.lagBytes.Set(0)
	m.lagSeconds.Set(0)
	m.replayLSN.Set(lsnValue(rep.Postgres.CurrentLSN))
	if r := rep.Replication; r != nil {
		m.receiveLSN.Set(lsnValue(r.ReceiveLSN))
		m.replayLSN.Set(lsnValue(r.ReplayLSN))
		m.lagBytes.Set(float64(r.LagBytes))
		m.lagSeconds.Set(r.LagSeconds)
	}
	m.archivedAt.Set(unixOrZero(rep.Archive.LastArchivedAt))
	m.archivedAge.Set(rep.Archive.AgeSeconds)
	m.failed.Set(float64(rep.Archive.FailedCount))
	m.failg.Set(b2f(rep.Archive.Failing))
	m.spool.Set(float64(rep.Archive.SpoolDepth))
	m.backupAt.Set(unixOrZero(rep.Backup.LastStoppedAt))
	m.backupAge.Set(rep.Backup.AgeSeconds)
	m.slots.Reset()
	for _, s := range rep.Slots {
		m.slots.WithLabelValues(s.Name, s.Where).Set(float64(s.RetainedBytes))
	}
	counts := map[status.Severity]int{status.Critical: 0, status.Warning: 0}
	for _, p := range rep.Problems {
		counts[p.Severity]++
	}
	for sev, n := range counts {
		m.problems.WithLabelValues(string(sev)).Set(float64(n))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func lsnValue(s string) float64 {
	lsn, err := pg.ParseLSN(s)
	if err != nil {
		return 0
	}
	return float64(lsn)
}

func unixOrZero(t *time.Time) float64 {
	if t == nil {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
