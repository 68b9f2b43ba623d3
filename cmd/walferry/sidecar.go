package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/statusserver"
	"github.com/walferry/walferry/k8s/agent"
	"github.com/walferry/walferry/k8s/bootstrap"
	"github.com/walferry/walferry/k8s/podlabel"
	"github.com/walferry/walferry/k8s/status"
	"github.com/walferry/walferry/walstream"
)

// defaultSidecarAddress is where the sidecar serves HTTP and where walferry
// status looks for it.
const defaultSidecarAddress = ":9898"

func (a *app) sidecarCommand() *cli.Command {
	return &cli.Command{
		Name:      "sidecar",
		Usage:     "the agent beside a PostgreSQL instance: hooks' socket, backups, WAL streaming, standby switching, health and metrics",
		UsageText: "walferry sidecar --pgdata DIR --repo URL... [--socket PATH] [--listen HOST:PORT] [--source-conn CONNINFO | --follow HOST:PORT] [--slot NAME] [--backup-schedule CRON] [--wal-receive] [...]",
		Description: `Runs beside one PostgreSQL instance for as long as it lives, and does what
the instance's role needs. It watches the role continuously (every
--interval) and follows it when it changes (promotion, demotion): it never
needs a restart.

Whatever the role:
   - serves the hooks' socket (--socket; see walferry daemon): archive-push
     with look-ahead on a primary, archive-get with prefetch on a standby;
   - serves HTTP on --listen: /healthz (the sidecar observes and PostgreSQL
     answers), /readyz (see below), /metrics (Prometheus, docs/metrics.md),
     GET /status (walferry status's report as JSON, docs/status.md) and
     POST /backup (a backup now, on a primary).

On a primary:
   - takes base backups on --backup-schedule (cron: "0 2 * * *", @daily,
     "@every 6h"), every --backup-full-every-th one full and the others
     incremental; with --backup-after-promotion, a full backup as soon as a
     standby becomes primary (walferry promote takes one itself);
   - records itself as generation 1 of the repository's lineage record when
     the repository has none (--instance, --site), and watches the record:
     a primary the record does not allow (an old primary after a switchover
     or a failover) is FENCED: the sidecar writes standby.signal and stops
     PostgreSQL (fast shutdown, within --fence-timeout), so it takes no more
     writes and cannot start as a primary again; its hooks refuse to archive.
     walferry rejoin makes it a standby of the new primary. A primary on a
     timeline newer than the record's runs for --promotion-grace first:
     walferry promote records the new timeline right after promoting;
   - with --wal-receive, streams its own WAL into the repository (as walferry
     wal-receive does), so the repository trails the primary by seconds
     (.partial objects) instead of by archive_timeout: a standby site with
     no network path to the primary replays it (seed 002);
   - keeps the replication slots of the standby sites given by
     --standby-slot, so WAL they still need is not recycled.

On a standby:
   - recovery replays the repository (restore_command, written by walferry
     bootstrap) with the daemon's prefetch;
   - as soon as the upstream (--source-conn, the source primary, for a standby
     leader; --follow HOST:PORT, the standby leader, for the other instances
     of a standby site) answers as the same cluster on a compatible timeline,
     the sidecar writes primary_conninfo and primary_slot_name into
     walferry.conf and reloads PostgreSQL, which then streams. PostgreSQL 13
     and later take both on reload (PostgreSQL 12 would need a restart; walferry
     supports 15 and later);
   - when streaming breaks, PostgreSQL goes back to the repository by itself
     and retries the upstream; when it returns, streaming resumes. Nobody
     edits a file;
   - creates --slot on the upstream when missing and warns when it holds back
     more than --max-slot-retained (bound it on the source with
     max_slot_wal_keep_size: a forgotten standby must not fill its disk);
   - reports recovery stuck on a segment no repository holds.

The password of --source-conn never reaches walferry.conf: put it in a
passfile (passfile=/etc/walferry/pgpass in the connection string, or
PGPASSFILE), TLS files by path (sslrootcert=..., sslcert=..., sslkey=...).

/readyz is 200 for a primary, and for a standby that streams with a lag
under --max-ready-lag (or replays the repository, with --ready-on-archive).

SIGTERM stops it within --shutdown-timeout: the hooks work standalone from
then on, a backup in flight is abandoned (no manifest: never half a backup),
the receiver uploads what it spooled. Logs are JSON in pods, text on a
terminal (--log-format auto).

   walferry sidecar --pgdata /var/lib/postgresql/data --repo s3://bucket/site-a \
       --socket /run/walferry/walferry.sock --backup-schedule '0 2 * * *' --wal-receive

   walferry sidecar --pgdata /var/lib/postgresql/data --repo s3://bucket/site-a \
       --socket /run/walferry/walferry.sock \
       --source-conn 'host=site-a.example.com user=replicator passfile=/etc/walferry/pgpass sslmode=verify-full'`,
		Flags: withCommonFlags(
			socketFlag("serve the hooks on the unix socket `PATH` (default: no socket; the hooks work standalone)"),
			aheadFlag(), prefetchFlag(), spoolDirFlag(),
			&cli.StringFlag{Name: "listen", EnvVars: []string{"WALFERRY_LISTEN"}, Value: defaultSidecarAddress,
				Usage: "serve /healthz, /readyz, /metrics, /status and /backup on `HOST:PORT` (\"\" serves nothing)"},
			&cli.StringFlag{Name: "source-conn", EnvVars: []string{"WALFERRY_SOURCE_CONN"},
				Usage: "libpq connection `STRING` of the source primary a standby leader streams from (password only through a passfile)"},
			&cli.StringFlag{Name: "follow", EnvVars: []string{"WALFERRY_FOLLOW"},
				Usage: "stream from the standby leader at `HOST:PORT` (cascading instances of a standby site); user and TLS settings come from --source-conn"},
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALFERRY_SLOT"},
				Usage: "physical replication slot `NAME` this standby uses on its upstream (created when missing)", DefaultText: "walferry_<host name>, as walferry bootstrap"},
			&cli.BoolFlag{Name: "no-slot", EnvVars: []string{"WALFERRY_NO_SLOT"}, Usage: "use no replication slot on the upstream"},
			&cli.StringFlag{Name: "application-name", EnvVars: []string{"WALFERRY_APPLICATION_NAME"},
				Usage: "the standby's application_name on its upstream (default: the host name)"},
			&cli.StringFlag{Name: "config-file", EnvVars: []string{"WALFERRY_CONFIG_FILE"},
				Usage: "postgresql.conf's `PATH` when it is not in the data directory"},
			&cli.StringSliceFlag{Name: "standby-slot", EnvVars: []string{"WALFERRY_STANDBY_SLOTS"},
				Usage: "on a primary, keep the physical slot `NAME` of a standby site (repeatable)"},
			&cli.StringFlag{Name: "max-slot-retained", EnvVars: []string{"WALFERRY_MAX_SLOT_RETAINED"}, Value: "10GB",
				Usage: "warn when a slot holds back more WAL than `SIZE`"},
			&cli.StringFlag{Name: "backup-schedule", EnvVars: []string{"WALFERRY_BACKUP_SCHEDULE"},
				Usage: "on a primary, take base backups on the cron `SCHEDULE` (\"0 2 * * *\", @daily, \"@every 6h\")"},
			&cli.IntFlag{Name: "backup-full-every", EnvVars: []string{"WALFERRY_BACKUP_FULL_EVERY"}, Value: 7,
				Usage: "every `N`th scheduled backup is full, the others incremental (1: always full)"},
			&cli.BoolFlag{Name: "backup-after-promotion", EnvVars: []string{"WALFERRY_BACKUP_AFTER_PROMOTION"},
				Usage: "take a full backup as soon as this instance becomes primary (walferry promote takes one itself: for promotions made otherwise)"},
			&cli.StringFlag{Name: "instance", EnvVars: []string{"WALFERRY_INSTANCE"},
				Usage: "this instance's `NAME` in the repository's lineage record", DefaultText: "the host name"},
			&cli.StringFlag{Name: "site", EnvVars: []string{"WALFERRY_SITE"},
				Usage: "this instance's site `NAME` in the lineage record (e.g. the Kubernetes cluster)"},
			&cli.DurationFlag{Name: "fence-timeout", EnvVars: []string{"WALFERRY_FENCE_TIMEOUT"}, Value: agent.DefaultFenceTimeout,
				Usage: "how long the stop of a fenced primary may take"},
			&cli.DurationFlag{Name: "promotion-grace", EnvVars: []string{"WALFERRY_PROMOTION_GRACE"}, Value: agent.DefaultPromotionGrace,
				Usage: "how long a primary on a timeline the lineage record does not know runs before it is fenced (walferry promote records it within seconds)"},
			&cli.BoolFlag{Name: "wal-receive", EnvVars: []string{"WALFERRY_WAL_RECEIVE"},
				Usage: "on a primary, stream its WAL into the repository (seconds behind, .partial objects)"},
			&cli.StringFlag{Name: "wal-receive-slot", EnvVars: []string{"WALFERRY_WAL_RECEIVE_SLOT"}, Value: "walferry_receiver",
				Usage: "the receiver's slot `NAME` on the primary (\"\": none)"},
			&cli.DurationFlag{Name: "partial-interval", EnvVars: []string{"WALFERRY_PARTIAL_INTERVAL"}, Value: walstream.DefaultPartialInterval,
				Usage: "how often the receiver uploads the unfinished segment as .partial"},
			&cli.DurationFlag{Name: "max-ready-lag", EnvVars: []string{"WALFERRY_MAX_READY_LAG"}, Value: agent.DefaultMaxReadyLag,
				Usage: "a streaming standby is ready while it lags less"},
			&cli.BoolFlag{Name: "ready-on-archive", EnvVars: []string{"WALFERRY_READY_ON_ARCHIVE"},
				Usage: "a standby replaying the repository is ready too (sites with no upstream)"},
			&cli.StringFlag{Name: "kubeconfig", EnvVars: []string{"WALFERRY_KUBECONFIG"},
				Usage: "keep the walferry.io/role label on this pod through the kubeconfig `FILE` (in a pod the service account is used without it)"},
			&cli.BoolFlag{Name: "no-pod-label", EnvVars: []string{"WALFERRY_NO_POD_LABEL"},
				Usage: "do not keep the walferry.io/role label on this pod"},
			&cli.DurationFlag{Name: "interval", EnvVars: []string{"WALFERRY_INTERVAL"}, Value: agent.DefaultInterval,
				Usage: "how often the instance is observed"},
			&cli.DurationFlag{Name: "shutdown-timeout", EnvVars: []string{"WALFERRY_SHUTDOWN_TIMEOUT"}, Value: 25 * time.Second,
				Usage: "on SIGTERM, how long to finish (keep it under the pod's terminationGracePeriodSeconds)"},
		),
		Action: a.sidecar,
	}
}

func (a *app) sidecar(c *cli.Context) error {
	if c.NArg() != 0 {
		return usage(fmt.Errorf("sidecar takes no arguments, got %d", c.NArg()))
	}
	s, err := a.loadWith(c, func(cfg *config.Config) { cfg.LogLevel = "info" })
	if err != nil {
		return err
	}
	if s.cfg.PGData == "" {
		return usage(errors.New("walferry sidecar serves one instance: pass --pgdata DIR or set PGDATA"))
	}
	if err := s.requireRepos(); err != nil {
		return err
	}
	for _, name := range append([]string{c.String("slot")}, c.StringSlice("standby-slot")...) {
		if name == "" {
			continue
		}
		if err := replication.ValidSlotName(name); err != nil {
			return usage(fmt.Errorf("slot %q: %w", name, err))
		}
	}
	slot := c.String("slot")
	if slot == "" && !c.Bool("no-slot") {
		host, err := os.Hostname()
		if err != nil {
			return usage(fmt.Errorf("no --slot given and the host name is unknown (%v): give --slot NAME or --no-slot", err))
		}
		slot = bootstrap.DefaultSlotName(host)
	}
	maxRetained, err := pg.ParseSizeSetting(c.String("max-slot-retained"))
	if err != nil {
		return usage(fmt.Errorf("--max-slot-retained %q: %w; e.g. 10GB or 512MB (PostgreSQL units: kB, MB, GB, TB)", c.String("max-slot-retained"), err))
	}
	appName := c.String("application-name")
	if appName == "" {
		appName, _ = os.Hostname()
	}
	var walReceive *walstream.Options
	if c.Bool("wal-receive") {
		spool := filepath.Join(s.cfg.PGData, "pg_wal", ".walferry", "receive")
		if d := s.cfg.Archive.SpoolDir; d != "" {
			spool = filepath.Join(d, "receive")
		}
		walReceive = &walstream.Options{Slot: c.String("wal-receive-slot"), SpoolDir: spool,
			PartialInterval: c.Duration("partial-interval")}
	}
	reg, err := statusserver.NewRegistry()
	if err != nil {
		return err
	}
	o := agent.Options{
		DataDir:         s.cfg.PGData,
		ConfigFile:      c.String("config-file"),
		Conn:            s.cfg.PGConn.Reveal(),
		Upstream:        c.String("source-conn"),
		Follow:          c.String("follow"),
		ApplicationName: appName,
		Slot:            slot,
		MaxSlotRetained: maxRetained,
		StandbySlots:    splitList(c.StringSlice("standby-slot")),
		Instance:        c.String("instance"),
		Site:            c.String("site"),
		FenceTimeout:    c.Duration("fence-timeout"),
		PromotionGrace:  c.Duration("promotion-grace"),
		Socket:          s.cfg.Archive.Socket,
		Push:            s.pushOptions(),
		Get:             s.getOptions(),
		Retry:           s.store.Retry,
		Backups: agent.BackupPolicy{
			Schedule:       c.String("backup-schedule"),
			FullEvery:      c.Int("backup-full-every"),
			AfterPromotion: c.Bool("backup-after-promotion"),
			Backup:         backup.Options{ArchiveTimeout: 2 * time.Minute},
		},
		WALReceive:      walReceive,
		Registry:        reg,
		MaxReadyLag:     c.Duration("max-ready-lag"),
		ReadyOnArchive:  c.Bool("ready-on-archive"),
		Limits:          status.DefaultLimits(),
		Interval:        c.Duration("interval"),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		Log:             s.log,
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if !c.Bool("no-pod-label") && (c.String("kubeconfig") != "" || podlabel.InCluster()) {
		labeler, err := podlabel.New(podlabel.Config{Kubeconfig: c.String("kubeconfig"), Logger: s.log.With("component", "podlabel")})
		if err != nil && c.String("kubeconfig") != "" {
			return usage(fmt.Errorf("--kubeconfig: %w", err))
		}
		if err != nil {
			return err
		}
		o.RoleLabel = func(ctx context.Context, role string) error { return labeler.Set(ctx, podlabel.Role(role)) }
	}
	// Listen first: a busy address fails at once, and /healthz answers
	// while the repositories are still being reached.
	if addr := c.String("listen"); addr != "" {
		ln, err := statusserver.Listen(addr)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		defer ln.Close()
		o.Listener = ln
		s.log.Info("serving HTTP", "address", ln.Addr().String(), "paths", "/healthz /readyz /metrics /status /backup")
	}
	set, err := s.openReposPatiently(c.Context, 0)
	if err != nil {
		return err
	}
	defer set.Close()
	o.Repos = set.Repos
	ag, err := agent.New(o)
	if err != nil {
		return err
	}
	return ag.Run(c.Context)
}
