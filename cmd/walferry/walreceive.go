package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/statusserver"
	"github.com/walferry/walferry/walstream"
)

// synchronousPartialInterval is --partial-interval's default with
// --synchronous: commits wait for the partial upload that covers them.
const synchronousPartialInterval = time.Second

func (a *app) walReceiveCommand() *cli.Command {
	return &cli.Command{
		Name:      "wal-receive",
		Usage:     "stream WAL into the repository over the replication protocol",
		UsageText: "walferry wal-receive --repo URL... [--pg-conn STRING] [--slot NAME] [--synchronous] [--partial-interval D] [--receive-timeout D] [--spool-dir DIR] [--metrics-address HOST:PORT]",
		Description: `Connects to PostgreSQL with the physical replication protocol (the connection
comes from --pg-conn or libpq's PG* variables; replication=true is added) and
stores the WAL it receives in every --repo, until SIGTERM or SIGINT.

   walferry wal-receive --repo s3://bucket/db --pg-conn 'host=db user=replicator' --slot walferry

The server must belong to the repository (same system identifier, major
version and segment size), allow replication connections for the user in
pg_hba.conf, and have a free max_wal_senders entry.

Completed segments are stored exactly as archive-push stores them, so
archive-get, restore and verify treat them alike; a segment archive-push
already stored with the same content is fine, different content stops the
receiver (exit 5) and overwrites nothing. The unfinished segment is uploaded
as <segment>.partial every --partial-interval when it grew, and at shutdown.

Streaming starts after the newest complete segment of the server's timeline
that every repository holds, or else of the newest of its ancestor timelines
they hold (a promotion while no receiver ran leaves no gap), else at the
slot's restart point, else at the start of the server's current segment. With --slot the physical slot is
created when missing (RESERVE_WAL), and the server keeps every byte until
it is durable in the repositories: the flush position reported is what the
repositories hold. Timeline switches are followed (the new timeline's
history file is stored too; the old timeline's last segment as .partial).

Received WAL is written to a segment file in --spool-dir, never held in
memory; completed segments wait there while a store is unreachable. One
receiver per spool directory (it is locked; a second receiver exits 2). With a slot the spool may be lost: the server
sends again what the repositories do not hold.

--synchronous: to make commits wait until their WAL is durable in object
storage, name the receiver in the primary's synchronous_standby_names:

   synchronous_standby_names = 'walferry'

The receiver connects with application_name=walferry unless the connection
string or PGAPPNAME names another. A commit then waits for the next partial
upload covering it, so --partial-interval (1s by default with --synchronous)
bounds the commit latency added.

A server that sends nothing for --receive-timeout (1m, as PostgreSQL's
wal_receiver_timeout; asked for a reply at half of it) is taken for lost,
like a connection that closed: a link that hangs without closing does not
hold the receiver. The same timeout bounds connecting and each exchange
before streaming starts.

It reconnects with exponential backoff (1s to 1m) after every failure,
forever, or --max-attempts consecutive failures; a repository that cannot
be reached when it starts is waited for the same way. SIGTERM or SIGINT shut it
down cleanly: spooled segments and the last partial are uploaded (within
--shutdown-timeout), a final status is sent, and it exits 0.

Every minute, when anything moved, it logs a "progress" line: the received,
flushed (durable in every repository) and uploaded positions, the server's
WAL end, and the lag in bytes and time.

--metrics-address HOST:PORT (e.g. 127.0.0.1:9187; port 0 picks a free one,
logged at start-up) serves over HTTP, until the receiver has shut down:

   /metrics   Prometheus metrics: walferry_walstream_received_lsn, _flushed_lsn,
              _uploaded_lsn, _server_lsn, _lag_bytes, _lag_seconds, _timeline,
              _connected, _segments_uploaded_total, _partial_uploads_total,
              _upload_errors_total, _reconnects_total, _upload_seconds, plus the
              Go runtime's go_* and the process's process_* (docs/metrics.md)
   /healthz   200 "ok" while streaming and the last upload succeeded, else
              503 and one line saying why

An address that cannot be listened on exits 2 before anything connects.`,
		Flags: withCommonFlags(
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALFERRY_SLOT"},
				Usage: "physical replication slot `NAME` to use, created when missing (lower-case letters, digits, _)"},
			&cli.BoolFlag{Name: "synchronous", EnvVars: []string{"WALFERRY_SYNCHRONOUS"},
				Usage: "run as a synchronous standby named walferry (see the description)"},
			&cli.DurationFlag{Name: "partial-interval", EnvVars: []string{"WALFERRY_PARTIAL_INTERVAL"}, Value: walstream.DefaultPartialInterval,
				Usage: "upload the unfinished segment as .partial this often when it grew (1s by default with --synchronous)"},
			&cli.StringFlag{Name: "spool-dir", EnvVars: []string{"WALFERRY_RECEIVE_SPOOL_DIR"},
				Usage: "working `DIR` for received segments (default: <tmp>/walferry-wal-receive-<system identifier>)"},
			&cli.IntFlag{Name: "max-attempts", EnvVars: []string{"WALFERRY_MAX_ATTEMPTS"},
				Usage: "give up after `N` consecutive failed connection attempts; 0 retries forever"},
			&cli.DurationFlag{Name: "receive-timeout", EnvVars: []string{"WALFERRY_RECEIVE_TIMEOUT"}, Value: walstream.DefaultReceiveTimeout,
				Usage: "reconnect when the server sends nothing for this long (asked for a reply at half of it); also bounds connecting"},
			&cli.DurationFlag{Name: "shutdown-timeout", EnvVars: []string{"WALFERRY_SHUTDOWN_TIMEOUT"}, Value: walstream.DefaultShutdownTimeout,
				Usage: "on SIGTERM, how long to finish uploading spooled segments and the last partial"},
			&cli.StringFlag{Name: "metrics-address", EnvVars: []string{"WALFERRY_METRICS_ADDRESS"},
				Usage: "serve Prometheus /metrics and /healthz on `HOST:PORT`, e.g. 127.0.0.1:9187 (default: no server)"},
		),
		Action: a.walReceive,
	}
}

func (a *app) walReceive(c *cli.Context) error {
	if c.NArg() != 0 {
		return usage(fmt.Errorf("wal-receive takes no arguments, got %d", c.NArg()))
	}
	s, err := a.loadWith(c, func(cfg *config.Config) { cfg.LogLevel = "info" })
	if err != nil {
		return err
	}
	if err := s.requireRepos(); err != nil {
		return err
	}
	slot := c.String("slot")
	if slot != "" {
		if err := replication.ValidSlotName(slot); err != nil {
			return usage(fmt.Errorf("--slot: %w", err))
		}
	}
	if c.Int("max-attempts") < 0 {
		return usage(errors.New("--max-attempts must be 0 (forever) or more"))
	}
	interval := c.Duration("partial-interval")
	if c.Bool("synchronous") && !c.IsSet("partial-interval") {
		interval = synchronousPartialInterval
	}
	if interval <= 0 {
		return usage(errors.New("--partial-interval must be positive, e.g. 10s"))
	}
	if c.Duration("receive-timeout") <= 0 {
		return usage(errors.New("--receive-timeout must be positive, e.g. 1m"))
	}
	connCfg, err := pg.ParseConnConfig(s.cfg.PGConn.Reveal())
	if err != nil {
		return usage(err)
	}
	var reg *prometheus.Registry
	health := &walstream.Health{}
	if addr := c.String("metrics-address"); addr != "" {
		ln, err := statusserver.Listen(addr)
		if err != nil {
			return fmt.Errorf("--metrics-address: %w", err)
		}
		if reg, err = statusserver.NewRegistry(); err != nil {
			ln.Close()
			return err
		}
		s.log.Info("serving metrics", "address", ln.Addr().String(), "paths", "/metrics /healthz")
		stop := statusserver.Serve(ln, reg, health, nil, s.log)
		defer stop()
	}
	set, err := s.openReposPatiently(c.Context, c.Int("max-attempts"))
	if err != nil {
		return err
	}
	defer set.Close()
	repos := set.Repos
	size, err := repos[0].Metadata().SegmentSize()
	if err != nil {
		return err
	}
	spool := c.String("spool-dir")
	if spool == "" {
		spool = filepath.Join(os.TempDir(), "walferry-wal-receive-"+strconv.FormatUint(repos[0].Metadata().SystemID, 10))
	}
	if c.Bool("synchronous") {
		s.log.Info("synchronous mode: list this receiver in the primary's synchronous_standby_names",
			"application_name", connCfg.RuntimeParams["application_name"], "partial_interval", interval)
	}
	err = walstream.Run(c.Context, walstream.Options{
		Repos:           repos,
		SegmentSize:     size,
		Conn:            &connCfg.Config,
		Slot:            slot,
		SpoolDir:        spool,
		PartialInterval: interval,
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		ReceiveTimeout:  c.Duration("receive-timeout"),
		MaxAttempts:     c.Int("max-attempts"),
		Log:             s.log,
		Registry:        reg,
		Health:          health,
	})
	if errors.Is(err, walstream.ErrSpoolBusy) {
		return usage(err)
	}
	if err != nil {
		// Conflicts and a wrong cluster keep their own exit codes (they
		// are classified first); giving up on the server is exit 7.
		return &postgresError{err}
	}
	return nil
}
