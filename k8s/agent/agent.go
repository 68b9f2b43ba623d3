// Package agent is walferry's sidecar: one long-running process beside
// each PostgreSQL instance that does what the instance's role needs, and
// follows the role when it changes, without a restart.
//
//   - Whatever the role, it serves the hooks' socket (archive.Daemon:
//     archive-push on a primary, archive-get with prefetch on a standby),
//     and /healthz, /readyz, /metrics and /status on one HTTP address.
//   - On a primary: scheduled backups (cron), optionally a WAL receiver
//     streaming the primary's own WAL to the repository (walstream), and
//     the replication slots of the standby sites it is told about.
//   - On a standby: recovery replays the repository through restore_command
//     (PostgreSQL's archive mode); as soon as the upstream answers as the
//     same cluster on a compatible timeline, the agent writes
//     primary_conninfo and primary_slot_name into walferry.conf and reloads
//     the server, which then streams. When streaming breaks, PostgreSQL
//     itself falls back to restore_command and retries the upstream: the
//     settings stay, nobody edits a file. The agent creates the slot on the
//     upstream when missing and warns when it holds too much WAL.
//
// Every few seconds (Options.Interval) the agent observes the instance
// into a status.Report, the one status model: /status serves it, the
// metrics and the readiness are read from it. Nothing here knows
// Kubernetes: the same agent runs beside PostgreSQL on a VM.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/k8s/status"
	"github.com/walferry/walferry/storage/retry"
	"github.com/walferry/walferry/walstream"
)

// Defaults of Options.
const (
	DefaultInterval    = 2 * time.Second
	DefaultMaxReadyLag = 30 * time.Second
	// DefaultStuckAfter is how long recovery may sit on one segment, with
	// a later one in the repository, before the agent calls it stuck.
	DefaultStuckAfter = time.Minute
)

// ErrUsage marks Options that cannot work.
var ErrUsage = failure.New(failure.Usage, "invalid sidecar options")

// Options configure an agent.
type Options struct {
	// DataDir is the instance's data directory. The agent waits for it to
	// hold a cluster (an init container or initdb may still be writing it).
	DataDir string
	// ConfigFile is postgresql.conf when it is not in DataDir.
	ConfigFile string
	// Conn is the libpq connection string of the local server (empty: the
	// server DataDir/postmaster.pid names, see status.LocalConnString).
	Conn string
	// Upstream is the libpq connection string a standby streams from: the
	// source primary for a standby leader, the standby leader for a
	// cascading instance. Empty: the standby replays only the repository
	// (seed 002).
	Upstream string
	// Follow, "HOST:PORT", aims Upstream's settings (user, TLS files,
	// passfile) at the standby leader of the site instead (cascading).
	Follow string
	// ApplicationName is the standby's application_name on the upstream.
	ApplicationName string
	// Slot is the physical replication slot the standby uses on the
	// upstream: created there when missing, and written as
	// primary_slot_name. Empty: no slot.
	Slot string
	// MaxSlotRetained is how much WAL a slot may hold back before the
	// agent warns (a forgotten standby must not fill a disk); 0 means
	// status.DefaultLimits().MaxSlotRetained.
	MaxSlotRetained int64
	// Instance and Site name this instance in the lineage record (the
	// first generation a primary's sidecar records).
	Instance, Site string
	// FenceTimeout bounds the stop of a primary the lineage record fenced
	// (0: DefaultFenceTimeout); PromotionGrace how long a primary on a
	// timeline newer than the record's runs before it is fenced
	// (0: DefaultPromotionGrace).
	FenceTimeout, PromotionGrace time.Duration
	// StandbySlots are slots the agent keeps on a primary for standby
	// sites (created when missing, watched like Slot).
	StandbySlots []string

	// Repos are the opened repositories (the first one gets backups).
	Repos []*repo.Repo
	// Socket, when set, is where the hooks' daemon listens.
	Socket string
	// Push and Get tune the daemon's engines.
	Push archive.PushOptions
	Get  archive.GetOptions
	// Retry bounds the daemon's uploads (archive.Config.Retry).
	Retry retry.Policy

	// Backups schedules base backups on a primary.
	Backups BackupPolicy
	// WALReceive, when not nil, streams the primary's own WAL into the
	// repositories while the instance is primary (Repos, SegmentSize,
	// Conn, Registry and Health are set by the agent).
	WALReceive *walstream.Options

	// RoleLabel, when set, publishes the role: "primary" or "replica" (a
	// standby), called when it changes and again until it succeeds; in a
	// pod it keeps the walferry.io/role label the Services select on
	// (k8s/podlabel), so the agent itself knows nothing of Kubernetes.
	RoleLabel func(ctx context.Context, role string) error

	// Listener serves /healthz, /readyz, /metrics and /status; nil serves
	// nothing.
	Listener net.Listener
	// Registry gets the agent's metrics (and the daemon's and the
	// receiver's); nil makes a private one.
	Registry *prometheus.Registry
	// MaxReadyLag: a standby is ready while it streams and lags less.
	MaxReadyLag time.Duration
	// ReadyOnArchive makes a standby that replays the repository ready too
	// (a seed 002 site has no upstream at all).
	ReadyOnArchive bool
	// Limits are status's thresholds for problems.
	Limits status.Limits

	// Interval is how often the instance is observed.
	Interval time.Duration
	// ShutdownTimeout bounds the wait for the daemon, a running backup
	// and the receiver at shutdown (0: 25 s, inside Kubernetes' default
	// 30 s grace period).
	ShutdownTimeout time.Duration
	Log             *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// BackupPolicy says when the agent takes base backups on a primary.
type BackupPolicy struct {
	// Schedule is a cron expression (5 fields, or @daily, @every 6h, ...);
	// empty takes no scheduled backup.
	Schedule string
	// FullEvery makes every FullEvery-th scheduled backup a full one and
	// the others incremental; 0 or 1 takes only full backups.
	FullEvery int
	// Backup tunes each backup; Conn and PGData default to the agent's.
	Backup backup.Options
	// AfterPromotion takes a full backup as soon as the instance becomes
	// primary (a new timeline's first backup).
	AfterPromotion bool
}

// Agent is one running sidecar.
type Agent struct {
	o   Options
	log *slog.Logger
	m   *metrics

	report  atomic.Pointer[status.Report]
	started time.Time
	lastObs atomic.Int64 // unix nanos of the last completed observation

	daemon       *archive.Daemon
	daemonHealth archive.DaemonHealth
	segSize      pg.WALSegmentSize

	conn *pgx.Conn // the local server; reconnected when lost

	up       upstreamState
	lineage  lineageState
	stuck    stuckTracker
	backups  *scheduler
	primary  *roleTasks
	lastRole status.Role
	slotWarn map[string]time.Time

	labeled     string // the role RoleLabel last published
	repoBackup  status.Backup
	repoLineage *status.Lineage
	repoRead    time.Time
	repoStale   atomic.Bool
}

// Validate checks what New checks of the options without the
// repositories, so a command line can refuse them before it listens or
// reaches a store. Errors wrap ErrUsage and name the flag.
func (o Options) Validate() error {
	if o.DataDir == "" {
		return fmt.Errorf("%w: the data directory is required (--pgdata or PGDATA)", ErrUsage)
	}
	if o.Follow != "" {
		if _, err := followConn(o.Upstream, o.Follow); err != nil {
			return err
		}
	}
	_, err := newScheduler(o.Backups)
	return err
}

// New checks o and returns an agent ready to Run.
func New(o Options) (*Agent, error) {
	if o.DataDir == "" {
		return nil, fmt.Errorf("%w: the data directory is required (--pgdata or PGDATA)", ErrUsage)
	}
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: data directory %q: %v", ErrUsage, o.DataDir, err)
	}
	o.DataDir = dir
	if len(o.Repos) == 0 {
		return nil, fmt.Errorf("%w: no repository: the sidecar serves the hooks and takes backups against one (--repo URL)", ErrUsage)
	}
	if o.Follow != "" {
		up, err := followConn(o.Upstream, o.Follow)
		if err != nil {
			return nil, err
		}
		o.Upstream = up
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.MaxReadyLag <= 0 {
		o.MaxReadyLag = DefaultMaxReadyLag
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 25 * time.Second
	}
	if o.Limits == (status.Limits{}) {
		o.Limits = status.DefaultLimits()
	}
	if o.MaxSlotRetained > 0 {
		o.Limits.MaxSlotRetained = o.MaxSlotRetained
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.FenceTimeout <= 0 {
		o.FenceTimeout = DefaultFenceTimeout
	}
	if o.PromotionGrace <= 0 {
		o.PromotionGrace = DefaultPromotionGrace
	}
	if o.Instance == "" {
		o.Instance, _ = os.Hostname()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	sched, err := newScheduler(o.Backups)
	if err != nil {
		return nil, err
	}
	a := &Agent{o: o, log: o.Log, backups: sched, slotWarn: map[string]time.Time{}}
	if a.m, err = newMetrics(o.Registry, func() float64 { return float64(sched.failures.Load()) }); err != nil {
		return nil, err
	}
	rep := status.New(o.Now())
	rep.DataDir = o.DataDir
	a.report.Store(&rep)
	return a, nil
}

// followConn is the connection string a cascading standby streams from:
// the source's settings aimed at follow ("HOST:PORT").
func followConn(source, follow string) (string, error) {
	host, port, err := net.SplitHostPort(follow)
	if err != nil || host == "" {
		return "", fmt.Errorf("%w: --follow %q: want HOST:PORT, e.g. site-b-leader:5432", ErrUsage, follow)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("%w: --follow %q: port %q is not a number", ErrUsage, follow, port)
	}
	return pg.OverrideHostPort(source, host, port)
}

// Report is the latest observation.
func (a *Agent) Report() status.Report {
	r := *a.report.Load()
	return r
}

// Run works until ctx is cancelled (SIGTERM), then stops everything it
// started within ShutdownTimeout: the hooks fall back to working
// standalone, a backup in flight is abandoned (the repository removes its
// objects; no manifest, so no half backup), the receiver uploads what it
// spooled.
func (a *Agent) Run(ctx context.Context) error {
	a.started = a.o.Now()
	var wg sync.WaitGroup
	defer wg.Wait()

	if a.o.Listener != nil {
		stop := a.serveHTTP()
		defer stop()
	}
	cl, err := a.waitForCluster(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.log.Info("sidecar serving", "data_dir", a.o.DataDir, "system_id", cl.SystemID, "repos", len(a.o.Repos))

	if a.o.Socket != "" {
		if err := a.startDaemon(ctx, cl, &wg); err != nil {
			return err
		}
	}
	defer a.closeConn()
	defer a.stopPrimaryTasks()

	t := time.NewTicker(a.o.Interval)
	defer t.Stop()
	for {
		a.observe(ctx)
		select {
		case <-ctx.Done():
			a.log.Info("sidecar stopping")
			return nil
		case <-t.C:
		}
	}
}

// waitForCluster waits until the data directory holds a cluster of the
// repositories' (an init container or initdb may still be at work) and
// returns its identity. Another cluster is an error at once.
func (a *Agent) waitForCluster(ctx context.Context) (repo.Cluster, error) {
	var warned time.Time
	for {
		cd, err := pg.ReadControlData(a.o.DataDir)
		if err == nil {
			cl, err := repo.ClusterFromControlData(cd, a.o.DataDir)
			if err != nil {
				return repo.Cluster{}, err
			}
			for _, r := range a.o.Repos {
				if err := r.Metadata().Matches(cl, r.String()); err != nil {
					return repo.Cluster{}, err
				}
			}
			a.segSize, err = pg.NewWALSegmentSize(cl.WALSegmentSize)
			return cl, err
		}
		if !errors.Is(err, os.ErrNotExist) {
			return repo.Cluster{}, fmt.Errorf("read the control file of %s: %w", a.o.DataDir, err)
		}
		if now := a.o.Now(); now.Sub(warned) > 30*time.Second {
			a.log.Info("waiting for the data directory to hold a cluster (bootstrap or initdb)", "data_dir", a.o.DataDir)
			warned = now
		}
		select {
		case <-ctx.Done():
			return repo.Cluster{}, ctx.Err()
		case <-time.After(a.o.Interval):
		}
	}
}

// startDaemon serves the hooks' socket until ctx ends.
func (a *Agent) startDaemon(ctx context.Context, cl repo.Cluster, wg *sync.WaitGroup) error {
	cfg := archive.Config{Repos: a.o.Repos, Cluster: cl, SegmentSize: a.segSize,
		Log: a.log.With("component", "archive"), Retry: a.o.Retry}
	ln, err := archive.Listen(a.o.Socket)
	if err != nil {
		return err
	}
	d, err := archive.NewDaemon(cfg, archive.DaemonOptions{
		DataDir: a.o.DataDir, Push: a.o.Push, Get: a.o.Get,
		ShutdownTimeout: a.o.ShutdownTimeout, Registry: a.o.Registry, Health: &a.daemonHealth,
	})
	if err != nil {
		ln.Close()
		return err
	}
	a.daemon = d
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.Serve(ctx, ln); err != nil {
			a.log.Error("the hooks' daemon stopped; hooks work standalone", "err", err)
		}
	}()
	return nil
}

// observe builds this tick's report and acts on it.
func (a *Agent) observe(ctx context.Context) {
	now := a.o.Now()
	rep := status.New(now)
	rep.DataDir = a.o.DataDir
	rep.Sidecar = status.Sidecar{Reachable: true, Since: &a.started}
	if a.o.Listener != nil {
		rep.Sidecar.Address = a.o.Listener.Addr().String()
	}
	if err := a.observePostgres(ctx, &rep); err != nil {
		rep.Postgres.Error = err.Error()
	}
	if rep.Role != a.lastRole {
		// A role change (a promotion, a demotion) changes the record,
		// the backups and the upstream: read them now, not at their
		// next turn.
		a.lineage.read, a.repoRead = time.Time{}, time.Time{}
		a.up = upstreamState{conninfo: a.up.conninfo}
	}
	a.watchLineage(ctx, &rep)
	if rep.Lineage != nil && rep.Lineage.Fenced && rep.Role == status.RolePrimary {
		// Stopped by the fence: nothing of a primary's runs.
		rep.Role, rep.Mode = status.RoleDown, status.ModeNone
	}
	if rep.Role != a.lastRole {
		a.roleChanged(ctx, a.lastRole, rep.Role)
		a.lastRole = rep.Role
	}
	switch rep.Role {
	case status.RolePrimary:
		a.actPrimary(ctx, &rep)
	case status.RoleStandby:
		a.actStandby(ctx, &rep)
	}
	a.publishRole(ctx, rep.Role)
	rep.Backup = a.repositoryFacts(ctx, now)
	if rep.Lineage == nil {
		rep.Lineage = a.repoLineage
	}
	a.addDaemonState(&rep)
	status.Diagnose(&rep, a.o.Limits)
	rep.Problems = append(rep.Problems, a.upstreamProblems(&rep)...)
	a.m.update(&rep, a.up.reachable)
	a.report.Store(&rep)
	a.lastObs.Store(now.UnixNano())
}

// observePostgres asks the local server, (re)connecting when needed.
func (a *Agent) observePostgres(ctx context.Context, rep *status.Report) error {
	if a.conn == nil || a.conn.IsClosed() {
		// Without a connection string, the server postmaster.pid names:
		// read again at each connection, a restart may change it.
		connString, err := a.localConn()
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pg.Connect(cctx, connString)
		cancel()
		if err != nil {
			return err
		}
		a.conn = conn
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := status.FromPostgres(qctx, a.conn, rep); err != nil {
		a.closeConn()
		return err
	}
	return nil
}

// localConn is the local server's connection string: Options.Conn, or the
// server DataDir/postmaster.pid names.
func (a *Agent) localConn() (string, error) {
	return status.LocalConnString(a.o.Conn, a.o.DataDir)
}

func (a *Agent) closeConn() {
	if a.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		a.conn.Close(ctx)
		cancel()
		a.conn = nil
	}
}

// roleChanged starts and stops what a role needs.
func (a *Agent) roleChanged(ctx context.Context, from, to status.Role) {
	if from != "" {
		a.log.Info("role changed", "from", from, "to", to)
	}
	if to == status.RolePrimary {
		a.startPrimaryTasks(ctx, from == status.RoleStandby)
		return
	}
	if to == status.RoleStandby || from == status.RolePrimary {
		// A primary that went down may come back as a standby (demoted)
		// or as the primary: its tasks stop either way and start again
		// when it is seen as primary.
		a.stopPrimaryTasks()
	}
}

// publishRole calls RoleLabel when the published role is not the
// instance's; a down instance keeps its label (its Services have no
// endpoint anyway, and a restart must not flip it).
func (a *Agent) publishRole(ctx context.Context, r status.Role) {
	if a.o.RoleLabel == nil {
		return
	}
	want := ""
	switch r {
	case status.RolePrimary:
		want = "primary"
	case status.RoleStandby:
		want = "replica"
	}
	if want == "" || want == a.labeled {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.o.RoleLabel(lctx, want); err != nil {
		a.log.Warn("could not publish the role label; retrying", "role", want, "err", err)
		return
	}
	a.labeled = want
}

// repositoryInterval is how often the agent reads the repository's
// backups: listing them is a few requests, not for every observation.
const repositoryInterval = time.Minute

// repositoryFacts returns the newest backup, read again when a minute
// passed or a backup finished since the last read.
func (a *Agent) repositoryFacts(ctx context.Context, now time.Time) status.Backup {
	if a.repoRead.IsZero() || now.Sub(a.repoRead) >= repositoryInterval || a.repoStale.Swap(false) {
		tmp := status.New(now)
		if err := status.FromRepository(ctx, a.o.Repos[0], &tmp); err != nil && tmp.Backup.Error == "" {
			tmp.Backup.Error = err.Error()
		}
		a.repoBackup, a.repoRead = tmp.Backup, now
		a.repoLineage = tmp.Lineage
	}
	b := a.repoBackup
	if b.LastStoppedAt != nil {
		b.AgeSeconds = now.Sub(*b.LastStoppedAt).Seconds()
	}
	return b
}

// refreshRepository makes the next observation read the repository.
func (a *Agent) refreshRepository() { a.repoStale.Store(true) }

// addDaemonState adds the hooks' daemon's view: its last archiving error
// and the prefetch spool.
func (a *Agent) addDaemonState(rep *status.Report) {
	if a.daemon == nil {
		return
	}
	st := a.daemonHealth.State()
	if st.LastFailure != "" && st.LastFailureAt.After(st.ArchivedAt) {
		rep.Archive.LastError = st.LastFailure
	}
	rep.Archive.SpoolDepth = a.daemon.SpoolDepth()
}

// settingsFiles is the instance's walferry.conf.
func (a *Agent) settingsFiles() pgconf.Files {
	return pgconf.Files{DataDir: a.o.DataDir, ConfigFile: a.o.ConfigFile, Origin: "walferry sidecar"}
}
