package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/k8s/bootstrap"
	"github.com/walferry/walferry/restore"
)

func (a *app) bootstrapCommand() *cli.Command {
	return &cli.Command{
		Name:      "bootstrap",
		Usage:     "init container: build a standby's data directory from the repository or the primary",
		UsageText: "walferry bootstrap --pgdata DIR [--repo URL]... [--from auto|repo|primary] [--backup ID] [--source-conn CONNINFO] [--slot NAME | --no-slot] [--install-bin DIR] [--socket PATH] [--reinit] [--auto-max-wal-ratio R] [--config-file PATH] [--json]",
		Description: `Builds the data directory of a standby, as a Kubernetes init container (or
by hand), and makes it a standby of the source:

   walferry bootstrap --pgdata /var/lib/postgresql/data/pgdata \
       --repo s3://bucket/db --source-conn 'host=primary.site-a user=replicator passfile=/secrets/pgpass' \
       --install-bin /walferry/bin --socket /run/walferry/walferry.sock

--from repo restores, as a standby, the newest backup of the repository
whose WAL from its start to its end is archived (each newer backup skipped
is named with its reason), or --backup ID.

--from primary copies the source with BASE_BACKUP over the replication
protocol straight into the data directory, after creating the physical
replication slot the standby will use: the source keeps every WAL segment
the standby needs however long the copy takes.

--from auto (the default) restores from the repository when it has a usable
backup and the WAL written since that backup ended (the source's current
LSN minus the backup's stop LSN) is at most --auto-max-wal-ratio (0.5) times
the database's size (the backup's): replaying a byte of WAL costs about as
much as copying a byte, and the repository spares the source. Otherwise it
copies the source; without a reachable source it uses the repository. It
prints the decision and its numbers.

Then it writes standby.signal and walferry's include file walferry.conf:

   restore_command = '/walferry/bin/walferry-hook archive-get --repo s3://bucket/db --socket /run/walferry/walferry.sock %f %p'
   recovery_target_timeline = 'latest'
   primary_conninfo = 'host=primary.site-a user=replicator passfile=/secrets/pgpass application_name=walferry_site_b_0'
   primary_slot_name = 'walferry_site_b_0'

and appends "include_if_exists = 'walferry.conf'" to postgresql.conf when
it lacks it. A read-only postgresql.conf (a ConfigMap) is not touched: when
it lacks the line, bootstrap fails before any work (exit 2) naming the exact
line to add. A password in --source-conn is refused (exit 2): put it in a
passfile (passfile=/path or PGPASSFILE, e.g. a mounted Secret); TLS files go
by path (sslrootcert=, sslcert=, sslkey=).

It is safe to run at every start of the pod:
   - a valid data directory of the same cluster is left alone (exit 0; it
     prints the control file's state; signal files are not touched: it may
     be a promoted primary);
   - a half-restored one (a bootstrap killed midway: its marker file
     walferry.bootstrap, or data files without global/pg_control) is
     finished with a delta restore that keeps what is already right; a
     half-copied one without a usable backup is cleared and copied again;
   - a data directory of another cluster (exit 5) or a non-empty directory
     that is not a data directory (exit 2) is refused; --reinit deletes its
     contents (never the directory: it may be a mount point) and bootstraps.

--install-bin DIR first copies walferry and walferry-hook (found next to
this walferry) into DIR, the volume the postgres container runs the hooks
from, atomically, mode 0755; restore_command then runs DIR/walferry-hook
with --socket (it hands the call to the sidecar's daemon), else
DIR/walferry.

The slot is --slot NAME, by default walferry_ and the host name (pod
site-b-0: walferry_site_b_0). With --from repo and --source-conn the slot is
created on the source too when it answers (a warning otherwise: the sidecar
creates it later). --no-slot uses none.

Run as root, the files written belong to the data directory's owner (a new
directory is given to postgres). --json prints the result as one JSON object.`,
		Flags: withCommonFlags(
			&cli.StringFlag{Name: "from", EnvVars: []string{"WALFERRY_BOOTSTRAP_FROM"}, Value: bootstrap.FromAuto,
				Usage: "where the data comes from: repo, primary or auto"},
			&cli.StringFlag{Name: "backup", EnvVars: []string{"WALFERRY_BOOTSTRAP_BACKUP"},
				Usage: "backup `ID` to restore (default: the newest usable one)"},
			&cli.StringFlag{Name: "source-conn", EnvVars: []string{"WALFERRY_SOURCE_CONN"},
				Usage: "libpq connection `CONNINFO` of the server to copy and stream from (password in a passfile only)"},
			&cli.StringFlag{Name: "slot", EnvVars: []string{"WALFERRY_SLOT"},
				Usage: "physical replication slot `NAME` of this standby", DefaultText: "walferry_<hostname>"},
			&cli.BoolFlag{Name: "no-slot", EnvVars: []string{"WALFERRY_NO_SLOT"}, Usage: "use no replication slot"},
			&cli.StringFlag{Name: "install-bin", EnvVars: []string{"WALFERRY_INSTALL_BIN"},
				Usage: "copy walferry and walferry-hook into this `DIR` (the hooks' shared volume)"},
			socketFlag("the sidecar's unix socket `PATH`, passed to restore_command's walferry-hook"),
			&cli.BoolFlag{Name: "reinit", EnvVars: []string{"WALFERRY_REINIT"},
				Usage: "delete the contents of a data directory of another cluster (or of anything else) and bootstrap"},
			&cli.Float64Flag{Name: "auto-max-wal-ratio", EnvVars: []string{"WALFERRY_AUTO_MAX_WAL_RATIO"}, Value: bootstrap.DefaultAutoMaxWALRatio,
				Usage: "--from auto: use the repository when WAL since its backup <= `R` x the database size"},
			&cli.StringFlag{Name: "config-file", EnvVars: []string{"WALFERRY_CONFIG_FILE"},
				Usage: "postgresql.conf when it is not in the data directory: `PATH`", DefaultText: "PGDATA/postgresql.conf"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, EnvVars: []string{"WALFERRY_RESTORE_JOBS"},
				Usage: "restore: objects downloaded at once: `N` (0: one per CPU)"},
			&cli.BoolFlag{Name: "partial", EnvVars: []string{"WALFERRY_PARTIAL"},
				Usage: "restore_command serves the newest .partial of a segment not archived yet (a site fed only by the repository, whose source runs wal-receive or walferry sidecar --wal-receive: seed 002)"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		),
		Action: a.bootstrap,
	}
}

func (a *app) bootstrap(c *cli.Context) error {
	if c.NArg() > 0 {
		return usage(fmt.Errorf("bootstrap takes no arguments, got %q", c.Args().Slice()))
	}
	s, err := a.load(c)
	if err != nil {
		return err
	}
	o := bootstrap.Options{
		DataDir:         s.cfg.PGData,
		ConfigFile:      c.String("config-file"),
		From:            c.String("from"),
		Backup:          c.String("backup"),
		SourceConn:      c.String("source-conn"),
		Slot:            c.String("slot"),
		NoSlot:          c.Bool("no-slot"),
		Reinit:          c.Bool("reinit"),
		AutoMaxWALRatio: c.Float64("auto-max-wal-ratio"),
		InstallBin:      c.String("install-bin"),
		Jobs:            c.Int("jobs"),
		RestoreCommand:  restore.RestoreCommand{Repos: s.cfg.Repos, Socket: s.cfg.Archive.Socket, Partial: c.Bool("partial")},
		Log:             s.log.With("component", "bootstrap"),
	}
	if err := checkUpstream(o.SourceConn, o.Slot); err != nil {
		return err
	}
	if o.Slot == "" && !o.NoSlot {
		host, err := os.Hostname()
		if err != nil {
			return usage(fmt.Errorf("no --slot given and the host name is unknown (%v): give --slot NAME", err))
		}
		o.Slot = bootstrap.DefaultSlotName(host)
	}
	if o.DataDir != "" {
		if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
			return usage(err)
		}
	}
	if path := commonString(c, "config"); path != "" {
		if o.RestoreCommand.Config, err = filepath.Abs(path); err != nil {
			return usage(err)
		}
	}
	if s.cfg.EncryptionPassphraseFile != "" {
		if o.RestoreCommand.PassphraseFile, err = filepath.Abs(s.cfg.EncryptionPassphraseFile); err != nil {
			return usage(err)
		}
	}
	if len(s.cfg.Repos) > 0 {
		ro, err := s.reposOptions(nil)
		if err != nil {
			return err
		}
		set, err := repos.OpenFirst(c.Context, ro, s.log)
		if err != nil {
			return err
		}
		defer set.Close()
		o.Repo = set.Repos[0]
	}
	res, err := bootstrap.Run(c.Context, o)
	if errors.Is(err, bootstrap.ErrInvalid) || errors.Is(err, restore.ErrInvalid) {
		return usage(err)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return a.printJSON(res)
	}
	a.printBootstrap(res)
	return nil
}

func (a *app) printBootstrap(res bootstrap.Result) {
	w := a.stdout
	if res.Action == "left alone" {
		fmt.Fprintf(w, "%s: data directory of cluster %d already there (%s): left alone\n", res.DataDir, res.SystemID, res.State)
	}
	if d := res.Decision; d != nil {
		fmt.Fprintf(w, "--from auto chose %s: %s\n", d.From, d.Reason)
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "  skipped backup %s: %s\n", s.ID, s.Reason)
	}
	if res.Reinit {
		fmt.Fprintf(w, "--reinit: deleted the contents of %s\n", res.DataDir)
	}
	if r := res.Restore; r != nil {
		what := "restored"
		if res.Action == "finished" {
			what = "finished the half-restored directory with a delta restore of"
		}
		fmt.Fprintf(w, "%s backup %s into %s: fetched %d files (%s), kept %d files (%s)\n", what, r.Backup, r.DataDir,
			r.FilesFetched, humanize.Bytes(r.BytesFetched), r.FilesKept, humanize.Bytes(r.Bytes-r.BytesFetched))
	}
	if cp := res.Copy; cp != nil {
		fmt.Fprintf(w, "copied the source into %s with BASE_BACKUP: %d files, %s (LSN %s to %s)\n", res.DataDir, cp.Files, humanize.Bytes(cp.Bytes), cp.StartLSN, cp.StopLSN)
	}
	if res.Slot != "" {
		state := "exists"
		if res.SlotCreated {
			state = "created"
		}
		fmt.Fprintf(w, "  replication slot %s %s on the source\n", res.Slot, state)
	}
	if res.SettingsFile != "" {
		fmt.Fprintf(w, "  standby settings in %s (include added: %v)\n", res.SettingsFile, res.IncludeAdded)
	}
	for _, p := range res.Installed {
		fmt.Fprintf(w, "  installed %s\n", p)
	}
	for _, warn := range res.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", strings.TrimSpace(warn))
	}
}
