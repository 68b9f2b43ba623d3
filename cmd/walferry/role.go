package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/humanize"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/k8s/role"
	"github.com/walferry/walferry/restore"
)

// roleFlags are what demote, promote and rejoin share: who this instance
// is in the lineage record and how to reach and run its server.
func roleFlags(own ...cli.Flag) []cli.Flag {
	return withCommonFlags(append(own,
		&cli.StringFlag{Name: "instance", EnvVars: []string{"WALFERRY_INSTANCE"},
			Usage: "this server's `NAME` in the lineage record", DefaultText: "the host name"},
		&cli.StringFlag{Name: "site", EnvVars: []string{"WALFERRY_SITE"},
			Usage: "this server's `SITE` in the lineage record"},
		&cli.StringFlag{Name: "pg-bin", EnvVars: []string{"PGBIN"},
			Usage: "`DIR`ectory of pg_ctl and pg_rewind (default: found in PATH)"},
		&cli.StringFlag{Name: "config-file", EnvVars: []string{"WALFERRY_CONFIG_FILE"},
			Usage: "postgresql.conf's `PATH` when it is not in the data directory"},
		&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
	)...)
}

func standbyFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "source-conn", EnvVars: []string{"WALFERRY_SOURCE_CONN"},
			Usage: "libpq connection `STRING` of the new primary (primary_conninfo; password only through a passfile)"},
		&cli.StringFlag{Name: "application-name", EnvVars: []string{"WALFERRY_APPLICATION_NAME"},
			Usage: "the standby's application_name on the new primary", DefaultText: "the instance name"},
		&cli.StringFlag{Name: "slot", EnvVars: []string{"WALFERRY_SLOT"},
			Usage: "primary_slot_name on the new primary (default: none)"},
		&cli.BoolFlag{Name: "restart", Usage: "start PostgreSQL again as a standby with pg_ctl (VMs; in a pod the container restarts it)"},
		&cli.StringFlag{Name: "pg-log", Usage: "server log `FILE` for --restart (pg_ctl -l)"},
	}
}

func (a *app) demoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "demote",
		Usage:     "planned switchover, step 1: stop this primary, archive all of its WAL, publish the switchover token, make it a standby",
		UsageText: "walferry demote --pgdata DIR --repo URL [--source-conn CONNINFO_OF_NEW_PRIMARY] [--restart]",
		Description: `Runs on the primary. Refused unless the lineage record names this instance
(--instance, --site) as the primary. Checkpoints, stops PostgreSQL with a fast
shutdown (SIGINT to the postmaster of postmaster.pid), archives every segment
left and the last one as .partial (it holds the shutdown checkpoint), then records
the next generation ("switchover") with the token: system identifier, timeline,
shutdown checkpoint and REDO LSN, the end of the checkpoint record. The server
is left a standby (standby.signal; walferry.conf with restore_command --partial,
recovery_target_timeline 'latest', primary_conninfo from --source-conn).
Then run walferry promote on the standby. See docs/switchover.md.`,
		Flags: roleFlags(append(standbyFlags(),
			&cli.DurationFlag{Name: "stop-timeout", Value: 5 * time.Minute, Usage: "how long the fast shutdown may take"})...),
		Action: a.demote,
	}
}

func (a *app) promoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "promote",
		Usage:     "promote this standby: exactly at the switchover token, or with --force after losing the primary (fences it first)",
		UsageText: "walferry promote --pgdata DIR --repo URL [--force] [--wait 2m] [--no-backup]",
		Description: `Runs on the standby. After walferry demote, waits until this standby replayed
exactly up to the token (refuses when it stays behind or is ahead), promotes
(pg_promote) and records the new timeline. Without a token (the primary is
lost) --force is required: the next generation ("failover") is recorded first,
which fences the old primary, then the standby is promoted, and the WAL the old
primary archived past the fork is reported (at risk). Of two standbys promoting
at once, exactly one wins; the other exits 8 naming the winner and stays a
standby. Afterwards the history file is archived and a backup taken.`,
		Flags: roleFlags(
			&cli.BoolFlag{Name: "force", Usage: "fail over without a switchover token (the old primary is fenced and must rejoin)"},
			&cli.DurationFlag{Name: "wait", Value: 2 * time.Minute, Usage: "how long to wait for the standby to reach the token"},
			&cli.BoolFlag{Name: "no-backup", Usage: "do not take a backup after the promotion"},
		),
		Action: a.promote,
	}
}

func (a *app) rejoinCommand() *cli.Command {
	return &cli.Command{
		Name:      "rejoin",
		Usage:     "turn an old primary into a standby of the new one: nothing to copy after a demote, pg_rewind after a failover, else a delta restore",
		UsageText: "walferry rejoin --pgdata DIR --repo URL --source-conn CONNINFO_OF_NEW_PRIMARY [--restart] [--no-rewind]",
		Description: `Runs on the old primary (stopped, or running: it is stopped first). Copies
nothing when its WAL ends where the new primary's timeline forked (a demote);
runs pg_rewind --restore-target-wal against --source-conn when it diverged (a
failover; needs wal_log_hints or data checksums); falls back to a delta restore
from the newest backup when rewinding cannot work. Reports the bytes copied
against the data directory's size.`,
		Flags: roleFlags(append(standbyFlags(),
			&cli.BoolFlag{Name: "no-rewind", Usage: "skip pg_rewind: delta restore from the newest backup"})...),
		Action: a.rejoin,
	}
}

// roleSetup is what every role command needs.
type roleSetup struct {
	s        *settings
	server   role.Server
	instance role.Instance
}

func (a *app) roleSetup(c *cli.Context, name string) (*roleSetup, error) {
	if c.NArg() != 0 {
		return nil, usage(fmt.Errorf("%s takes no arguments, got %d", name, c.NArg()))
	}
	s, err := a.loadWith(c, nil)
	if err != nil {
		return nil, err
	}
	if s.cfg.PGData == "" {
		return nil, usage(fmt.Errorf("walferry %s acts on one server: pass --pgdata DIR or set PGDATA", name))
	}
	if err := s.requireRepos(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(s.cfg.PGData)
	if err != nil {
		return nil, usage(err)
	}
	inst := role.Instance{Name: c.String("instance"), Site: c.String("site")}
	if inst.Name == "" {
		if inst.Name, err = os.Hostname(); err != nil {
			return nil, usage(fmt.Errorf("no --instance and no host name (%v): pass --instance", err))
		}
	}
	return &roleSetup{s: s, instance: inst, server: role.Server{
		DataDir: dir, ConfigFile: c.String("config-file"), Conn: s.cfg.PGConn.Reveal(),
		PGBin: c.String("pg-bin"), LogFile: c.String("pg-log"),
	}}, nil
}

// standby builds how the server follows the new primary.
func (r *roleSetup) standby(c *cli.Context, partial bool) (role.Standby, error) {
	rc := restore.RestoreCommand{Repos: r.s.cfg.Repos, Socket: r.s.cfg.Archive.Socket, Partial: partial}
	var err error
	if path := commonString(c, "config"); path != "" {
		if rc.Config, err = filepath.Abs(path); err != nil {
			return role.Standby{}, usage(err)
		}
	}
	if f := r.s.cfg.EncryptionPassphraseFile; f != "" {
		if rc.PassphraseFile, err = filepath.Abs(f); err != nil {
			return role.Standby{}, usage(err)
		}
	}
	app := c.String("application-name")
	if app == "" {
		app = r.instance.Name
	}
	if err := checkUpstream(c.String("source-conn"), c.String("slot")); err != nil {
		return role.Standby{}, err
	}
	return role.Standby{SourceConn: c.String("source-conn"), ApplicationName: app, Slot: c.String("slot"), RestoreCommand: rc}, nil
}

// checkUpstream checks, before any work, how a standby would follow its
// upstream: the connection string parses and the slot name is one
// PostgreSQL accepts (either may be empty).
func checkUpstream(conn, slot string) error {
	if conn != "" {
		if _, err := pg.ParseConnConfig(conn); err != nil {
			return usage(fmt.Errorf("--source-conn: %w", err))
		}
	}
	if slot != "" {
		if err := replication.ValidSlotName(slot); err != nil {
			return usage(fmt.Errorf("--slot: %w", err))
		}
	}
	return nil
}

func (a *app) demote(c *cli.Context) error {
	r, err := a.roleSetup(c, "demote")
	if err != nil {
		return err
	}
	st, err := r.standby(c, true)
	if err != nil {
		return err
	}
	set, err := r.s.openRepos(c.Context, nil)
	if err != nil {
		return err
	}
	defer set.Close()
	res, err := role.Demote(c.Context, role.DemoteOptions{Server: r.server, Instance: r.instance, Repos: set.Repos, Standby: st,
		Restart: c.Bool("restart"), StopTimeout: c.Duration("stop-timeout"), Log: r.s.log})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return a.printJSON(res)
	}
	_, err = fmt.Fprintf(a.stdout, "demoted: %s\ntoken: timeline %d, shutdown checkpoint %s (redo %s), ends at %s\narchived after the shutdown: %d file(s), partial %s\nnext: walferry promote on the standby\n",
		res.Generation, res.Token.Timeline, res.Token.CheckpointLSN, res.Token.RedoLSN, res.Token.EndLSN, len(res.Archived), orNone(res.Partial))
	return err
}

func (a *app) promote(c *cli.Context) error {
	r, err := a.roleSetup(c, "promote")
	if err != nil {
		return err
	}
	set, err := r.s.openRepos(c.Context, nil)
	if err != nil {
		return err
	}
	defer set.Close()
	res, err := role.Promote(c.Context, role.PromoteOptions{Server: r.server, Instance: r.instance, Repos: set.Repos,
		Force: c.Bool("force"), Wait: c.Duration("wait"), NoBackup: c.Bool("no-backup"), Log: r.s.log})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return a.printJSON(res)
	}
	for _, g := range res.Generations {
		if _, err := fmt.Fprintf(a.stdout, "recorded: %s\n", g); err != nil {
			return err
		}
	}
	if res.Token == nil {
		if _, err := fmt.Fprintf(a.stdout, "failover: the old primary's archived WAL ends at %s, %s past the new timeline's start %s (at risk)\n",
			res.ArchivedEnd, humanize.Bytes(res.AtRiskBytes), res.SwitchLSN); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(a.stdout, "promoted: timeline %d from %s in %s; backup %s\n", res.Timeline, res.SwitchLSN, res.Promoted.Round(time.Millisecond), orNone(res.Backup))
	return err
}

func (a *app) rejoin(c *cli.Context) error {
	r, err := a.roleSetup(c, "rejoin")
	if err != nil {
		return err
	}
	st, err := r.standby(c, false)
	if err != nil {
		return err
	}
	set, err := r.s.openRepos(c.Context, nil)
	if err != nil {
		return err
	}
	defer set.Close()
	res, err := role.Rejoin(c.Context, role.RejoinOptions{Server: r.server, Instance: r.instance, Repos: set.Repos, Standby: st,
		NoRewind: c.Bool("no-rewind"), Restart: c.Bool("restart"), Log: r.s.log})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return a.printJSON(res)
	}
	_, err = fmt.Fprintf(a.stdout, "rejoined by %s: %s\ncopied %s of a %s data directory\n", res.Method, res.Why,
		humanize.Bytes(res.BytesCopied), humanize.Bytes(res.DataDirBytes))
	return err
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
