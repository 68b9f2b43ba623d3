package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/config"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/storage/open"
	"github.com/walferry/walferry/storage/retry"
)

type buildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Go      string `json:"go"`
	Zstd    string `json:"zstd"`
}

// app holds what every command shares: where output goes and the build.
type app struct {
	stdout, stderr io.Writer
	build          buildInfo
	cli            *cli.App
	// logFormat remembers the chosen format so errors are reported in it.
	logFormat string
}

func newApp(stdout, stderr io.Writer, build buildInfo) *app {
	a := &app{stdout: stdout, stderr: stderr, build: build, logFormat: "text"}
	a.cli = &cli.App{
		Name:    "walferry",
		Usage:   "ship PostgreSQL WAL and base backups to S3, GCS, Azure or a filesystem, and restore them",
		Version: build.Version,
		Description: `walferry archives PostgreSQL WAL (as archive_command / restore_command),
takes and restores base backups, streams WAL with a replication receiver, and wires
standby clusters across Kubernetes clusters.

A repository is a bucket prefix or directory that holds one cluster lineage
(one system identifier): file:///path, s3://bucket/prefix, gs://bucket/prefix,
azure://container/prefix. Create it with "walferry repo init".

Settings come from flags, then WALFERRY_* environment variables, then the YAML
file given by --config, then defaults. Cloud credentials come from each SDK's
standard environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_CONNECTION_STRING, workload identity, ...); see README.md.

EXIT CODES
   0 success; 1 other failure; 2 bad usage or configuration, a command not in
   this build, or archive-push of a file that does not exist; 3 store or server
   unreachable (transient, retry later); 4 access denied or wrong
   credentials/passphrase; 5 no such bucket, repository not initialized or
   belonging to another cluster, or archive-push of a name already archived
   with other content; 6 corrupt object; 7 PostgreSQL unreachable or refusing,
   or its data directory unreadable or not the connected server's; 8 another
   backup-push or backup-delete holds the repository's lease; 9 fenced: the
   repository's lineage record names another primary; 130 interrupted.
   The hooks follow PostgreSQL's rules: archive-push never exits above 125
   (interrupted: 1); archive-get exits 0 when the file was written, else 1.`,
		Flags:                commonFlags(),
		Writer:               stdout,
		ErrWriter:            stderr,
		HideVersion:          true,
		EnableBashCompletion: true,
		// Exit codes are decided in main, never inside cli.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usage(err)
		},
		Commands: append([]*cli.Command{
			a.repoCommand(),
			a.archivePushCommand(),
			a.archiveGetCommand(),
			a.daemonCommand(),
			a.walReceiveCommand(),
			a.backupPushCommand(),
			a.backupListCommand(),
			a.backupShowCommand(),
			a.backupDeleteCommand(),
			a.verifyCommand(),
			a.restoreCommand(),
			a.bootstrapCommand(),
			a.sidecarCommand(),
			a.statusCommand(),
			a.demoteCommand(),
			a.promoteCommand(),
			a.rejoinCommand(),
			a.k8sCommand(),
			a.versionCommand(),
		}, plannedCommands()...),
	}
	a.cli.CommandNotFound = func(c *cli.Context, name string) {}
	setUsageErrorHandler(a.cli.Commands)
	return a
}

// setUsageErrorHandler makes flag mistakes of every command exit with the
// usage code and point at the command's help, and refuses what a command
// cannot take, before it runs: a required flag missing, a duration that is
// not positive, positional arguments given to a command that takes none
// (one without ArgsUsage), and a command group (repo, k8s) run without one
// of its commands or with an unknown one.
func setUsageErrorHandler(cmds []*cli.Command) {
	for _, cmd := range cmds {
		cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
			return usage(fmt.Errorf("%w (see: walferry %s --help)", err, commandName(c)))
		}
		switch {
		case len(cmd.Subcommands) > 0 && cmd.Action == nil:
			cmd.Action = func(c *cli.Context) error {
				var names []string
				for _, sub := range c.Command.Subcommands {
					if sub.Name != "help" {
						names = append(names, sub.Name)
					}
				}
				what := "needs a command"
				if c.NArg() > 0 {
					what = fmt.Sprintf("has no command %s", quoteArg(c.Args().First()))
				}
				name := commandName(c)
				return usage(fmt.Errorf("walferry %s %s: %s (see: walferry %s --help)", name, what, strings.Join(names, ", "), name))
			}
		case cmd.Action != nil && !cmd.SkipFlagParsing:
			action, takesArgs := cmd.Action, cmd.ArgsUsage != ""
			// Required flags are checked here, not by cli, which prints the
			// whole help and exits 1.
			var required []string
			for _, f := range cmd.Flags {
				if sf, ok := f.(*cli.StringFlag); ok && sf.Required {
					sf.Required = false
					required = append(required, sf.Name)
				}
			}
			cmd.Action = func(c *cli.Context) error {
				for _, name := range required {
					if !c.IsSet(name) {
						return usage(fmt.Errorf("walferry %s needs --%s (see: walferry %s --help)", commandName(c), name, commandName(c)))
					}
				}
				if err := checkDurations(c); err != nil {
					return err
				}
				if takesArgs {
					return action(c)
				}
				if c.NArg() > 0 {
					name := commandName(c)
					return usage(fmt.Errorf("walferry %s takes no arguments, got %s (flags start with --; see: walferry %s --help)",
						name, quoteArg(strings.Join(c.Args().Slice(), " ")), name))
				}
				return action(c)
			}
		}
		setUsageErrorHandler(cmd.Subcommands)
	}
}

// checkDurations refuses a duration flag given as zero or less: every
// one is a timeout or an interval, where 0 or a negative value would be
// taken silently for the default or for "at once".
func checkDurations(c *cli.Context) error {
	for _, f := range c.Command.Flags {
		d, ok := f.(*cli.DurationFlag)
		if !ok || !c.IsSet(d.Name) {
			continue
		}
		if v := c.Duration(d.Name); v <= 0 {
			return usage(fmt.Errorf("--%s %s: want a positive duration, e.g. %s (see: walferry %s --help)", d.Name, v, d.Value, commandName(c)))
		}
	}
	return nil
}

// commandName is c's command with the groups above it ("repo init").
func commandName(c *cli.Context) string {
	var names []string
	for _, p := range c.Lineage() {
		if p.Command != nil && p.Command.Name != "" && p.Command.Name != c.App.Name {
			names = append([]string{p.Command.Name}, names...)
		}
	}
	return strings.Join(names, " ")
}

// quoteArg quotes what a user typed for a message, cut short when it is
// long: an error stays one readable line.
func quoteArg(s string) string {
	const max = 80
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

// Run runs the command line.
func (a *app) Run(ctx context.Context, args []string) error {
	if len(args) > 1 {
		if name := args[1]; !strings.HasPrefix(name, "-") && a.cli.Command(name) == nil && name != "help" {
			return usage(fmt.Errorf("unknown command %s; run walferry --help for the list", quoteArg(name)))
		}
		if name := args[1]; (name == "help" || name == "h") && len(args) > 2 && a.cli.Command(args[2]) == nil {
			return usage(fmt.Errorf("unknown command %s; run walferry --help for the list", quoteArg(args[2])))
		}
	}
	err := a.cli.RunContext(ctx, args)
	if hook := a.hookName(args); hook != "" && err != nil {
		// PostgreSQL reads the hooks' exit statuses: see exit.go.
		err = &hookError{hook: hook, err: err}
	}
	return err
}

// reportError prints the one line a failed command leaves: plain text on a
// terminal or in PostgreSQL's log, a JSON record when logging JSON (pods).
func (a *app) reportError(err error, code int) {
	if silent(err) {
		return
	}
	if a.logFormat == "json" {
		slog.New(slog.NewJSONHandler(a.stderr, nil)).Error("command failed", "err", err.Error(), "exit_code", code)
		return
	}
	if _, werr := fmt.Fprintf(a.stderr, "walferry: error: %v\n", err); werr != nil {
		fail("%v", err)
	}
}

// commonFlags are accepted before the command and after it
// ("walferry --repo X repo init" and "walferry repo init --repo X"); the
// value after the command wins, then the one before it, then the
// environment (see commonFlag).
func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "repo", Aliases: []string{"r"}, EnvVars: []string{"WALFERRY_REPO"},
			Usage: "repository `URL` (repeatable, or comma-separated in the environment): file:///path, s3://bucket/prefix, gs://bucket/prefix, azure://container/prefix"},
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, EnvVars: []string{"WALFERRY_CONFIG"},
			Usage: "YAML configuration `FILE` (see docs/configuration.md)"},
		&cli.StringFlag{Name: "pgdata", Aliases: []string{"D"}, EnvVars: []string{"PGDATA"},
			Usage: "PostgreSQL data `DIR`ectory"},
		&cli.StringFlag{Name: "pg-conn", EnvVars: []string{"WALFERRY_PG_CONN"},
			Usage: "libpq connection `STRING` (default: libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, ...)"},
		&cli.StringFlag{Name: "compression", EnvVars: []string{"WALFERRY_COMPRESSION"},
			Usage: "compression of new objects: none, lz4[:1-9], zstd[:1-22], gzip[:1-9] (default: the repository's)"},
		&cli.StringFlag{Name: "encryption-passphrase-file", EnvVars: []string{"WALFERRY_ENCRYPTION_PASSPHRASE_FILE"},
			Usage: "`FILE` holding the repository passphrase (or set WALFERRY_ENCRYPTION_PASSPHRASE)"},
		&cli.IntFlag{Name: "concurrency", EnvVars: []string{"WALFERRY_CONCURRENCY"},
			Value: config.Defaults().Storage.Concurrency, Usage: "simultaneous requests per repository"},
		&cli.StringFlag{Name: "log-format", EnvVars: []string{"WALFERRY_LOG_FORMAT"},
			Value: config.Defaults().LogFormat, Usage: "auto (JSON in Kubernetes, text elsewhere), text or json"},
		&cli.StringFlag{Name: "log-level", EnvVars: []string{"WALFERRY_LOG_LEVEL"},
			Value: config.Defaults().LogLevel, Usage: "debug, info, warn or error"},
	}
}

// withCommonFlags adds the common flags to a command's own. A command's
// copies do not read the environment (the top level's do, and its help
// names the variables): a command's flag is set only when given after
// the command, which is how commonFlag tells the three sources apart.
func withCommonFlags(own ...cli.Flag) []cli.Flag {
	for _, f := range commonFlags() {
		switch f := f.(type) {
		case *cli.StringFlag:
			f.Usage, f.EnvVars = withEnvUsage(f.Usage, f.EnvVars), nil
		case *cli.StringSliceFlag:
			f.Usage, f.EnvVars = withEnvUsage(f.Usage, f.EnvVars), nil
		case *cli.IntFlag:
			f.Usage, f.EnvVars = withEnvUsage(f.Usage, f.EnvVars), nil
		}
		own = append(own, f)
	}
	return own
}

func withEnvUsage(usage string, env []string) string {
	for _, e := range env {
		usage += " [$" + e + "]"
	}
	return usage
}

// commonFlag returns the context holding the value of the common flag
// name that applies, and false when none was given: the command's own
// (given after the command), else the top level's (given before it, or
// from the environment).
func commonFlag(c *cli.Context, name string) (*cli.Context, bool) {
	if c.IsSet(name) {
		return c, true
	}
	lineage := c.Lineage()
	for _, p := range lineage[1:] {
		if p.IsSet(name) {
			return p, true
		}
	}
	return nil, false
}

// commonString is the value of the common flag name ("" when not given).
func commonString(c *cli.Context, name string) string {
	if fc, ok := commonFlag(c, name); ok {
		return fc.String(name)
	}
	return ""
}

// settings is what a command's action gets: validated configuration, a
// logger and the store options derived from them.
type settings struct {
	cfg   config.Config
	log   *slog.Logger
	store open.Options
}

// load layers defaults, the YAML file, then environment and flags (urfave
// applies the environment to flags; a flag given on the command line wins),
// and validates the result before any work.
func (a *app) load(c *cli.Context) (*settings, error) {
	return a.loadWith(c, nil)
}

// loadWith is load with a command's own defaults applied over the common
// ones (before the file, the environment and the flags).
func (a *app) loadWith(c *cli.Context, defaults func(*config.Config)) (*settings, error) {
	cfg := config.Defaults()
	if defaults != nil {
		defaults(&cfg)
	}
	if path := commonString(c, "config"); path != "" {
		if err := cfg.LoadFile(path); err != nil {
			return nil, err
		}
	}
	if fc, ok := commonFlag(c, "repo"); ok {
		cfg.Repos = splitList(fc.StringSlice("repo"))
	}
	if fc, ok := commonFlag(c, "pgdata"); ok {
		cfg.PGData = fc.String("pgdata")
	}
	if fc, ok := commonFlag(c, "pg-conn"); ok {
		cfg.PGConn = config.Secret(fc.String("pg-conn"))
	}
	if fc, ok := commonFlag(c, "compression"); ok {
		cfg.Compression = fc.String("compression")
	}
	if p := os.Getenv("WALFERRY_ENCRYPTION_PASSPHRASE"); p != "" {
		cfg.EncryptionPassphrase = config.Secret(p)
	}
	if fc, ok := commonFlag(c, "encryption-passphrase-file"); ok {
		cfg.EncryptionPassphraseFile = fc.String("encryption-passphrase-file")
	}
	if fc, ok := commonFlag(c, "concurrency"); ok {
		cfg.Storage.Concurrency = fc.Int("concurrency")
	}
	if fc, ok := commonFlag(c, "log-format"); ok {
		cfg.LogFormat = fc.String("log-format")
	}
	if fc, ok := commonFlag(c, "log-level"); ok {
		cfg.LogLevel = fc.String("log-level")
	}
	if c.IsSet("ahead") {
		cfg.Archive.PushAhead = c.Int("ahead")
	}
	if c.IsSet("prefetch") {
		cfg.Archive.Prefetch = c.Int("prefetch")
	}
	if c.IsSet("spool-dir") {
		cfg.Archive.SpoolDir = c.String("spool-dir")
	}
	if c.IsSet("socket") {
		cfg.Archive.Socket = c.String("socket")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a.logFormat = resolveLogFormat(cfg.LogFormat)
	level, _ := config.ParseLogLevel(cfg.LogLevel)
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(a.stderr, hopts)
	if a.logFormat == "json" {
		h = slog.NewJSONHandler(a.stderr, hopts)
	}
	log := slog.New(h)
	return &settings{
		cfg: cfg,
		log: log,
		store: open.Options{
			Concurrency: cfg.Storage.Concurrency,
			PartSize:    cfg.Storage.PartSize,
			Retry:       retry.Policy{MaxAttempts: cfg.Storage.RetryAttempts, MaxElapsed: cfg.Storage.RetryMaxElapsed},
			Logger:      log,
		},
	}, nil
}

// requireRepos fails with a usage error when no repository is configured.
func (s *settings) requireRepos() error {
	if len(s.cfg.Repos) == 0 {
		return repos.ErrNoRepository
	}
	return nil
}

// reposOptions is how the configured repositories are opened; cl, when
// set, is the local cluster they must belong to.
func (s *settings) reposOptions(cl *repo.Cluster) (repos.Options, error) {
	pass, err := s.cfg.Passphrase()
	if err != nil {
		return repos.Options{}, err
	}
	return repos.Options{URLs: s.cfg.Repos, Store: s.store, Passphrase: pass, Compression: s.cfg.Compression, Cluster: cl}, nil
}

// openRepos opens every configured repository (see repos.Open).
func (s *settings) openRepos(ctx context.Context, cl *repo.Cluster) (*repos.Set, error) {
	o, err := s.reposOptions(cl)
	if err != nil {
		return nil, err
	}
	return repos.Open(ctx, o)
}

// loadRepos loads the settings and opens every configured repository (at
// least one is required); the caller closes them with the returned
// function.
func (a *app) loadRepos(c *cli.Context) (*settings, []*repo.Repo, func(), error) {
	s, err := a.load(c)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := s.requireRepos(); err != nil {
		return nil, nil, nil, err
	}
	set, err := s.openRepos(c.Context, nil)
	if err != nil {
		return nil, nil, nil, err
	}
	return s, set.Repos, func() { set.Close() }, nil
}

// openReposPatiently is openRepos for a long-running receiver: a store
// that cannot be reached at start is retried with backoff (1 s to 1 min)
// forever, or maxAttempts times (repos.OpenPatiently).
func (s *settings) openReposPatiently(ctx context.Context, maxAttempts int) (*repos.Set, error) {
	o, err := s.reposOptions(nil)
	if err != nil {
		return nil, err
	}
	p := retry.Policy{MaxAttempts: -1, InitialBackoff: time.Second, MaxBackoff: time.Minute, MaxElapsed: -1}
	if maxAttempts > 0 {
		p.MaxAttempts = maxAttempts
	}
	return repos.OpenPatiently(ctx, o, p, s.log.With("component", "repos"))
}

// resolveLogFormat picks JSON inside Kubernetes pods and text elsewhere.
func resolveLogFormat(f string) string {
	if f != "auto" {
		return f
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return "json"
	}
	return "text"
}

// splitList accepts repeated flags and comma-separated values alike.
func splitList(in []string) []string {
	var out []string
	for _, v := range in {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
