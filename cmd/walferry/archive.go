package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/archive"
	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/internal/statusserver"
)

// The flags of the hooks and the daemon. Their values land in
// config.Archive (see settings.load).
func aheadFlag() cli.Flag {
	return &cli.IntFlag{Name: "ahead", EnvVars: []string{"WALFERRY_PUSH_AHEAD"}, Value: config.Defaults().Archive.PushAhead,
		Usage: "further .ready segments to push in parallel: `N`, 0 for none, -1 for twice the CPUs (2..16)"}
}

func prefetchFlag() cli.Flag {
	return &cli.IntFlag{Name: "prefetch", EnvVars: []string{"WALFERRY_PREFETCH"}, Value: config.Defaults().Archive.Prefetch,
		Usage: "following segments to fetch in parallel into the spool: `N`, 0 for none, -1 for twice the CPUs (2..16)"}
}

func spoolDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "spool-dir", EnvVars: []string{"WALFERRY_SPOOL_DIR"},
		Usage: "working `DIR`: DIR/prefetch (on pg_wal's filesystem) and DIR/pushed (default: pg_wal/.walferry)"}
}

func socketFlag(usage string) cli.Flag {
	return &cli.StringFlag{Name: "socket", EnvVars: []string{"WALFERRY_SOCKET"}, Usage: usage}
}

func partialFlag() cli.Flag {
	return &cli.BoolFlag{Name: "partial", EnvVars: []string{"WALFERRY_ARCHIVE_PARTIAL"},
		Usage: "serve a segment that is not archived from its .partial (wal-receive's unfinished segment), zero-padded: disaster recovery only"}
}

const hookSocketUsage = "hand the call to walferry daemon on this unix socket `PATH`; work standalone when it does not answer"

func (a *app) archivePushCommand() *cli.Command {
	return &cli.Command{
		Name:      "archive-push",
		ArgsUsage: "<path>",
		Aliases:   []string{"wal-push"},
		Usage:     "archive one WAL file (archive_command)",
		UsageText: "walferry archive-push [--repo URL]... [--ahead N] [--socket PATH] <path>",
		Description: `PostgreSQL runs it as its archive_command, in the data directory:

   archive_mode = on
   archive_command = 'walferry archive-push %p'

with the repository in the server's environment (WALFERRY_REPO=s3://bucket/db)
or in a configuration file (WALFERRY_CONFIG=/etc/walferry.yaml) readable by
the server's OS user.

It exits 0 only once the file is durable in every --repo. Otherwise it prints
one line and exits non-zero; PostgreSQL keeps the file and calls again.
Pushing a file that is already archived with the same content succeeds at
once (PostgreSQL repeats calls after a crash). A different file already
archived under the same name is refused with exit 5, naming both checksums,
and nothing is overwritten: that is a split-brain or a wrong repository.
zstd and gzip objects store no SHA-256 (their stream checks the content), so
for them the archived copy is downloaded and compared byte for byte; a damaged
copy fails with exit 6 (delete it from the repository so the push stores the
file again).

The cluster is identified by the control file of --pgdata (PGDATA), or else of
the working directory, and every repository must belong to it (exit 5
otherwise). Timelines, .history, .backup and .partial files are handled.

Each repository's lineage record (repo init, walferry promote) must permit
the file: WAL of a timeline the record does not know (a copy promoted by
restore --target-action promote that kept this archive_command) or past the
point a newer generation fenced this server (an old primary) is refused with
exit 9, naming the generation and the fix, and nothing is written. The record
is read once per call (one listing, one small object); the daemon re-reads it
at most every 5 seconds, and always before refusing.

Look-ahead: while pushing the requested file it uploads the next --ahead .ready
files of pg_wal/archive_status in parallel (compressing at most as many at
once as there are CPUs; the others wait, their uploads overlap), and records
each one that became durable everywhere in <spool-dir>/pushed, so PostgreSQL's
next calls return at once. A record is written only after the upload is
durable and removed once PostgreSQL's call consumed it.

With --socket (WALFERRY_SOCKET) the call is handed to "walferry daemon" serving
that socket: no start-up, warm connections, look-ahead in the background.
When the daemon does not answer (not running, socket missing, connection lost)
the command does the work itself, so a dead daemon never stops archiving.

It never exits above 125, which would make PostgreSQL restart its archiver:
an interrupted call (SIGINT, SIGTERM, SIGQUIT) exits 1.`,
		Flags:  withCommonFlags(aheadFlag(), spoolDirFlag(), socketFlag(hookSocketUsage)),
		Action: a.archivePush,
	}
}

func (a *app) archiveGetCommand() *cli.Command {
	return &cli.Command{
		Name:      "archive-get",
		ArgsUsage: "<name> <dest>",
		Aliases:   []string{"wal-fetch"},
		Usage:     "fetch one WAL file (restore_command)",
		UsageText: "walferry archive-get [--repo URL]... [--prefetch N] [--socket PATH] [--partial] <name> <dest>",
		Description: `PostgreSQL runs it as its restore_command, in the data directory, during
recovery and on standbys:

   restore_command = 'walferry archive-get %f %p'

with the repository in the server's environment (WALFERRY_REPO) or in a
configuration file (WALFERRY_CONFIG) readable by the server's OS user.

It writes <dest> whole and atomically (a temporary file renamed into place),
after verifying the file's checksum, and exits 0. When the file is in no
repository it exits 1 at once and prints nothing: that is how recovery learns
where the archive ends. Every other failure exits 1 too, with one line
(transient store errors are retried for a bounded time first). It never exits
above 125 and never dies by a signal, which would abort recovery: SIGINT,
SIGTERM and SIGQUIT remove the temporary file and exit 1.

Prefetch: when recovery asks (dest pg_wal/RECOVERYXLOG, or pg_wal/<name> as
pg_rewind --restore-target-wal asks), the next --prefetch segments are fetched
in parallel into <spool-dir>/prefetch, verified, and served from there with a
rename; keep the spool on pg_wal's filesystem. Overlapping calls never race on
a spool file.

By hand: outside a data directory and without --pgdata / PGDATA,
"walferry archive-get <name> <file>" fetches that one file, checked against the
repository's own cluster identity, and writes nothing else.

With --socket (WALFERRY_SOCKET) the call is handed to "walferry daemon" serving
that socket, whose prefetch runs in the background; when the daemon does not
answer, the command does the work itself.

--partial (WALFERRY_ARCHIVE_PARTIAL, archive.partial): a segment that is in no
repository is served from <name>.partial, the unfinished segment
"walferry wal-receive" uploads every --partial-interval, zero-padded to the
segment size; PostgreSQL reads the zeros as the end of WAL, so recovery ends
at the last streamed byte instead of the last complete segment. A complete
segment always wins, and partials are never prefetched. Only for disaster
recovery once the primary is gone ("walferry restore --use-partial" writes
it): a recovery that ends in a partial promotes there, while a live primary's
partial keeps growing.`,
		Flags:  withCommonFlags(prefetchFlag(), spoolDirFlag(), socketFlag(hookSocketUsage), partialFlag()),
		Action: a.archiveGet,
	}
}

func (a *app) daemonCommand() *cli.Command {
	return &cli.Command{
		Name:      "daemon",
		Usage:     "serve archive-push and archive-get on a unix socket (the hooks' server)",
		UsageText: "walferry daemon --socket PATH --pgdata DIR --repo URL... [--ahead N] [--prefetch N] [--spool-dir DIR] [--metrics-address HOST:PORT]",
		Description: `Serves the hooks of one cluster over a unix socket. Hooks configured with the
same --socket (WALFERRY_SOCKET) hand their work to it:

   archive_command = 'walferry archive-push --socket /run/walferry/walferry.sock %p'
   restore_command = 'walferry archive-get --socket /run/walferry/walferry.sock %f %p'

The daemon keeps its store connections warm, checks the repositories once at
start, pushes ahead and prefetches in the background, and serves many
concurrent calls. A hook call then costs a process start and one round trip.
Give the hooks the repository too (WALFERRY_REPO or WALFERRY_CONFIG): when the
daemon is down they work standalone.

The socket is created with mode 0600 (run the daemon as the server's OS user);
a socket left by a daemon that died is replaced; a second daemon on the same
socket is refused. Requests from another cluster or another data directory are
refused (exit 5 in the hook).

SIGTERM or SIGINT shut it down gracefully: it stops accepting (hooks work
standalone from then on), finishes the calls in flight, then waits for the
background uploads, all within --shutdown-timeout. Logs are JSON in
Kubernetes pods (--log-format auto) and at level info by default.

--metrics-address HOST:PORT serves Prometheus /metrics (requests answered,
the last segment archived and its time, the last failure, spool depth; see
docs/metrics.md) and /healthz (200 while the socket is served).

"walferry sidecar" runs this server next to its other duties (one process per
instance, see walferry sidecar --help).`,
		Flags: withCommonFlags(
			socketFlag("unix socket `PATH` to serve (required)"),
			aheadFlag(), prefetchFlag(), spoolDirFlag(),
			&cli.DurationFlag{Name: "shutdown-timeout", EnvVars: []string{"WALFERRY_SHUTDOWN_TIMEOUT"}, Value: archive.DefaultShutdownTimeout,
				Usage: "on SIGTERM, how long to finish requests in flight and background uploads"},
			&cli.StringFlag{Name: "metrics-address", EnvVars: []string{"WALFERRY_METRICS_ADDRESS"},
				Usage: "serve Prometheus /metrics and /healthz on `HOST:PORT`, e.g. 127.0.0.1:9188 (default: no server)"},
		),
		Action: a.daemon,
	}
}

// hookTarget is what a hook call runs for: the data directory and the
// cluster identity read from its control file.
type hookTarget struct {
	dataDir string
	cluster repo.Cluster
}

// hookTarget resolves the data directory (--pgdata / PGDATA, else the
// working directory: PostgreSQL runs its hooks in the data directory) and
// reads the cluster's identity from its control file.
func (s *settings) hookTarget(ctx context.Context) (hookTarget, error) {
	dir := s.cfg.PGData
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return hookTarget{}, &postgresError{fmt.Errorf("no --pgdata and no working directory: %w", err)}
		}
		dir = wd
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return hookTarget{}, &postgresError{err}
	}
	s.cfg.PGData = dir
	cl, err := clusterIdentity(ctx, s)
	if err != nil {
		return hookTarget{}, err
	}
	return hookTarget{dataDir: dir, cluster: cl}, nil
}

// runHook hands one hook call to the daemon when a socket is configured,
// and does the work in this process (standalone) when none is, or when the
// daemon does not answer: a dead daemon never stops archiving or recovery.
// standalone gets the repositories, opened and checked against t's
// cluster, and closed when it returns; when reading, those that can be
// reached (see openArchive).
func (s *settings) runHook(ctx context.Context, t hookTarget, reading bool, viaDaemon func(*archive.Client) error, standalone func(archive.Config) error) error {
	if sock := s.cfg.Archive.Socket; sock != "" {
		err := viaDaemon(&archive.Client{Socket: sock, DataDir: t.dataDir, Cluster: t.cluster})
		if !errors.Is(err, archive.ErrDaemonUnavailable) {
			return err
		}
		s.log.Info("daemon unreachable, working standalone", "socket", sock, "err", err)
	}
	cfg, closeStores, err := s.openArchive(ctx, t.cluster, reading)
	if err != nil {
		return err
	}
	defer closeStores()
	return standalone(cfg)
}

// pushOptions and getOptions map the settings onto the engines' options;
// the engines' defaults put their files in pg_wal/.walferry.
func (s *settings) pushOptions() archive.PushOptions {
	o := archive.PushOptions{Ahead: s.cfg.Archive.PushAhead}
	if d := s.cfg.Archive.SpoolDir; d != "" {
		o.StateDir = filepath.Join(d, "pushed")
	}
	return o
}

func (s *settings) getOptions() archive.GetOptions {
	o := archive.GetOptions{Prefetch: s.cfg.Archive.Prefetch}
	if d := s.cfg.Archive.SpoolDir; d != "" {
		o.SpoolDir = filepath.Join(d, "prefetch")
	}
	return o
}

func (a *app) archivePush(c *cli.Context) error {
	if c.NArg() != 1 {
		return usage(fmt.Errorf("archive-push takes one argument, the WAL file's path (%%p), got %d: archive_command = 'walferry archive-push %%p'", c.NArg()))
	}
	path := c.Args().First()
	if err := archive.CheckName(filepath.Base(path)); err != nil {
		return usage(fmt.Errorf("archive-push %s: %w", quoteArg(path), err))
	}
	s, err := a.load(c)
	if err != nil {
		return err
	}
	t, err := s.hookTarget(c.Context)
	if err != nil {
		return err
	}
	return s.runHook(c.Context, t, false,
		func(d *archive.Client) error { return d.Push(c.Context, path) },
		func(cfg archive.Config) error { return s.push(c.Context, cfg, path) })
}

// push archives the file at path with a Pusher of its own.
func (s *settings) push(ctx context.Context, cfg archive.Config, path string) error {
	p, err := archive.NewPusher(cfg, s.pushOptions())
	if err != nil {
		return err
	}
	err = p.Push(ctx, path)
	// The requested file's fate is decided; Close only waits for the
	// look-ahead uploads, whose failures the next calls retry.
	if cerr := p.Close(ctx); cerr != nil && err == nil {
		s.log.Warn("look-ahead uploads did not finish; PostgreSQL's next calls push those files", "err", cerr)
	}
	return err
}

func (a *app) archiveGet(c *cli.Context) error {
	if c.NArg() != 2 {
		return usage(fmt.Errorf("archive-get takes two arguments, the WAL file's name (%%f) and the destination (%%p), got %d: restore_command = 'walferry archive-get %%f %%p'", c.NArg()))
	}
	name, dest := c.Args().Get(0), c.Args().Get(1)
	if err := archive.CheckName(name); err != nil {
		return usage(fmt.Errorf("archive-get %s: %w", quoteArg(name), err))
	}
	if dest == "" {
		return usage(fmt.Errorf("archive-get %s: empty destination: restore_command = 'walferry archive-get %%f %%p'", name))
	}
	s, err := a.load(c)
	if err != nil {
		return err
	}
	partial := s.cfg.Archive.Partial
	if c.IsSet("partial") {
		partial = c.Bool("partial")
	}
	explicitDataDir := s.cfg.PGData != ""
	t, err := s.hookTarget(c.Context)
	var pe *postgresError
	if err != nil && !explicitDataDir && errors.As(err, &pe) {
		// A one-off fetch by hand, outside any data directory: nothing to
		// protect from another cluster's WAL, so the repository says which
		// cluster it is; no daemon and no prefetch (that is recovery's).
		return s.manualGet(c.Context, name, dest, partial)
	}
	if err != nil {
		return err
	}
	return s.runHook(c.Context, t, true,
		func(d *archive.Client) error {
			if partial {
				return d.GetPartial(c.Context, name, dest)
			}
			return d.Get(c.Context, name, dest)
		},
		func(cfg archive.Config) error { return s.get(c.Context, cfg, s.getOptions(), name, dest, partial) })
}

// manualGet fetches one file for a user outside a data directory, checked
// against the first repository's own identity, without prefetch.
func (s *settings) manualGet(ctx context.Context, name, dest string, partial bool) error {
	ro, err := s.reposOptions(nil)
	if err != nil {
		return err
	}
	set, unreachable, err := repos.OpenAvailable(ctx, ro, s.log)
	if err != nil {
		return err
	}
	defer set.Close()
	cfg, err := s.archiveConfig(set, repos.ClusterOf(set.Repos[0]))
	if err != nil {
		return err
	}
	cfg.Unreachable = unreachable
	o := s.getOptions()
	o.Prefetch = 0
	return s.get(ctx, cfg, o, name, dest, partial)
}

// get fetches the WAL file name into dest (its .partial when partial
// allows) with a Getter of its own.
func (s *settings) get(ctx context.Context, cfg archive.Config, o archive.GetOptions, name, dest string, partial bool) error {
	g, err := archive.NewGetter(cfg, o)
	if err != nil {
		return err
	}
	if partial {
		err = g.GetPartial(ctx, name, dest)
	} else {
		err = g.Get(ctx, name, dest)
	}
	if cerr := g.Close(ctx); cerr != nil && err == nil {
		s.log.Warn("prefetch did not finish", "err", cerr)
	}
	return err
}

func (a *app) daemon(c *cli.Context) error {
	s, err := a.loadWith(c, func(cfg *config.Config) { cfg.LogLevel = "info" })
	if err != nil {
		return err
	}
	if s.cfg.Archive.Socket == "" {
		return usage(errors.New("walferry daemon needs --socket PATH (or WALFERRY_SOCKET), e.g. /run/walferry/walferry.sock"))
	}
	if s.cfg.PGData == "" {
		return usage(errors.New("walferry daemon serves one data directory: pass --pgdata DIR or set PGDATA"))
	}
	if err := s.requireRepos(); err != nil {
		return err
	}
	t, err := s.hookTarget(c.Context)
	if err != nil {
		return err
	}
	ln, err := archive.Listen(s.cfg.Archive.Socket)
	if err != nil {
		return err
	}
	cfg, closeStores, err := s.openArchive(c.Context, t.cluster, false)
	if err != nil {
		ln.Close()
		return err
	}
	defer closeStores()
	var reg *prometheus.Registry
	health := &archive.DaemonHealth{}
	if addr := c.String("metrics-address"); addr != "" {
		mln, err := statusserver.Listen(addr)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--metrics-address: %w", err)
		}
		if reg, err = statusserver.NewRegistry(); err != nil {
			mln.Close()
			ln.Close()
			return err
		}
		s.log.Info("serving metrics", "address", mln.Addr().String(), "paths", "/metrics /healthz")
		stop := statusserver.Serve(mln, reg, health, nil, s.log)
		defer stop()
	}
	d, err := archive.NewDaemon(cfg, archive.DaemonOptions{
		DataDir:         t.dataDir,
		Push:            s.pushOptions(),
		Get:             s.getOptions(),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		Registry:        reg,
		Health:          health,
	})
	if err != nil {
		ln.Close()
		return err
	}
	return d.Serve(c.Context, ln)
}

// openArchive opens every repository, checks that each belongs to cl, and
// returns the engines' configuration and a function closing the stores.
// For reading (archive-get) it opens those that can be reached
// (repos.OpenAvailable): the others are in the configuration's
// Unreachable.
func (s *settings) openArchive(ctx context.Context, cl repo.Cluster, reading bool) (archive.Config, func(), error) {
	o, err := s.reposOptions(&cl)
	if err != nil {
		return archive.Config{}, nil, err
	}
	var set *repos.Set
	var unreachable []error
	if reading {
		set, unreachable, err = repos.OpenAvailable(ctx, o, s.log)
	} else {
		set, err = repos.Open(ctx, o)
	}
	if err != nil {
		return archive.Config{}, nil, err
	}
	cfg, err := s.archiveConfig(set, cl)
	if err != nil {
		set.Close()
		return archive.Config{}, nil, err
	}
	cfg.Unreachable = unreachable
	return cfg, func() { set.Close() }, nil
}

// archiveConfig is the engines' configuration for repositories of cl.
func (s *settings) archiveConfig(set *repos.Set, cl repo.Cluster) (archive.Config, error) {
	size, err := pg.NewWALSegmentSize(cl.WALSegmentSize)
	if err != nil {
		return archive.Config{}, &postgresError{fmt.Errorf("%s: %w", cl.Source, err)}
	}
	return archive.Config{Repos: set.Repos, Cluster: cl, SegmentSize: size, Log: s.log.With("component", "archive"), Retry: s.store.Retry}, nil
}
