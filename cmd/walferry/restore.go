package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/progress"
	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/restore"
)

func (a *app) restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		ArgsUsage: "<id|LATEST>",
		Usage:     "restore a backup into a data directory, optionally to a point in time",
		UsageText: "walferry restore <id|LATEST> --pgdata DIR --repo URL... [--delta] [--standby] [--jobs N] [--tablespace-map OID=DIR]... [--target-time T | --target-lsn L | --target-xid X | --target-name N | --target-immediate] [--target-action promote|pause|shutdown] [--target-exclusive] [--target-timeline TL] [--use-partial] [--config-file PATH] [--alter-system-reset KEY]... [--json]",
		Description: `Rebuilds a PostgreSQL data directory from a backup in the repository and
prepares it for recovery: start PostgreSQL on it and it fetches the WAL it
needs from the repository with walferry archive-get, replays it, and then
promotes (or stays a standby with --standby).

   # the newest backup, replaying the whole archive
   walferry restore LATEST --pgdata /var/lib/postgresql/15/main --repo s3://bucket/db

   # point in time: the newest backup that ended before 10:15 UTC, replayed up to it
   walferry restore LATEST --pgdata /srv/pg/main --repo s3://bucket/db \
       --target-time '2026-11-22 10:15:00+00' --target-action promote

   # rebuild an old primary in place as a standby, fetching only what differs
   walferry restore LATEST --pgdata /var/lib/postgresql/15/main --repo s3://bucket/db \
       --delta --standby

   # a chosen backup, its tablespace "fast" moved to a new disk
   walferry restore 20261122T101500F --pgdata /srv/pg/main --repo s3://bucket/db \
       --tablespace-map fast=/mnt/nvme/fast

Backups are named by id (see walferry backup-list) or LATEST. Without --delta
the data directory must be empty or missing (it is created, mode 0700), and a
directory with a postmaster.pid is always refused: stop the server first.

Every object the backup needs (its own and, for an incremental, its
ancestors') is downloaded once, --jobs at a time, streamed through the
verifying decoder and written into place; memory stays at --jobs times a
small buffer. Every restored file is then read back and compared with the
manifest's SHA-256 of each 8 MiB unit. A corrupt object or a mismatch fails
the restore (exit 6), naming the object or the file.

Nothing is half-restored silently: global/pg_control is put in place only
after every file is verified, and backup_label is written last. When a
restore fails or is interrupted it removes pg_control, backup_label and the
signal files, so PostgreSQL refuses to start on the directory; run the
restore again, with --delta to reuse what is already there.

--delta rebuilds a non-empty data directory (an old primary, a failed
restore): each local file is compared with the backup 8 MiB unit by unit,
only the units that differ or are missing are fetched (objects holding none
of them are not downloaded), files are cut to size, and files and
directories the backup does not have are removed, pg_wal's segments
included. The directory must look like a PostgreSQL data directory.

Tablespaces are restored to their recorded locations through
pg_tblspc/<oid> links, or elsewhere with --tablespace-map OID=DIR or
NAME=DIR (repeatable); tablespace_map is rewritten to match. A tablespace's
directory must be empty or missing (without --delta).

Recovery settings (PostgreSQL 12 and later): recovery.signal, or
standby.signal with --standby, and walferry's own include file, walferry.conf
in the data directory, rewritten whole by every restore:

   restore_command = '/usr/local/bin/walferry archive-get --repo s3://bucket/db %f %p'
   recovery_target_time = '2026-11-22 10:15:00+00'

restore_command names this walferry binary and the same --repo and --config.
postgresql.conf must include walferry.conf: when it lacks the line, the
restore appends it (atomically, keeping the file's owner and mode):

   include_if_exists = 'walferry.conf'

When postgresql.conf is not in the data directory (Debian keeps it in
/etc/postgresql/15/main), pass --config-file PATH; the line then names
walferry.conf by its absolute path. A read-only postgresql.conf (a
Kubernetes ConfigMap) that lacks the line, a missing --config-file, or a
backup without postgresql.conf and no --config-file are refused (exit 2)
before any backup data is downloaded or anything written, the error ending
with the exact line to add.

postgresql.auto.conf (ALTER SYSTEM) is the user's and is read after
walferry.conf: the restore only removes from it the block earlier walferry
versions wrote there ("# Added by walferry restore ..." to "# End of walferry
restore settings"). A recovery_target* value there is reported as a warning
(fix: ALTER SYSTEM RESET KEY); a restore_command there, which recovery would
run instead of walferry's, fails the restore after the download. Restore
again with --delta --alter-system-reset restore_command: it removes the line
as ALTER SYSTEM RESET would and fetches nothing else.

Credentials
are not written anywhere: give the server's environment what this command
had (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*,
WALFERRY_ENCRYPTION_PASSPHRASE), or use a --config file readable by the
server's OS user.

Recovery targets (at most one): --target-time ('2026-11-22 10:15:00+00',
'2026-11-22 10:15:00 Europe/Paris' or RFC 3339; a time without a zone is
refused, since PostgreSQL would read it in the restored server's timezone;
a time after the newest WAL in the repository, by more than 5 minutes of
allowance for clock skew, is refused with that WAL's time, since recovery
could not reach it), --target-lsn, --target-xid, --target-name (a restore point), or
--target-immediate (stop as soon as the backup is consistent). With LATEST
and a time or LSN target the newest backup that ended before the target is
chosen; a backup that ended after the target is refused. --target-action
says what happens at the target (PostgreSQL's default: pause),
--target-exclusive stops just before it, --target-timeline follows another
timeline than the newest (latest, current or a number).

--use-partial adds --partial to restore_command: a segment that is not
archived is served from its .partial, the unfinished segment
"walferry wal-receive" uploads every --partial-interval, zero-padded. For
disaster recovery from a repository fed by wal-receive once the primary is
gone: recovery then reaches the last streamed second instead of the last
complete segment. Leave it off while the primary is alive: its partial is
still growing, and a recovery that ends in it promotes there.

Run as root, the restored files are given to the owner of an existing
--pgdata (unless root), else to the backup's recorded owner when that user
exists (usually postgres). On a terminal a progress line shows bytes, rate
and time left; --json prints the result as one JSON object.

The backup is read from the first --repo that can be opened.`,
		Flags: withCommonFlags(
			&cli.BoolFlag{Name: "delta", Usage: "rebuild a non-empty data directory in place, fetching only what differs and removing what the backup does not have"},
			&cli.BoolFlag{Name: "standby", Usage: "write standby.signal (a standby replaying the archive) instead of recovery.signal"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, EnvVars: []string{"WALFERRY_RESTORE_JOBS"},
				Usage: "objects downloaded and files checked at once: `N` (0: one per CPU)", DefaultText: "one per CPU, at least 2"},
			&cli.StringSliceFlag{Name: "tablespace-map", EnvVars: []string{"WALFERRY_RESTORE_TABLESPACE_MAP"},
				Usage: "restore a tablespace elsewhere: `OID=DIR` or NAME=DIR (repeatable)"},
			&cli.StringFlag{Name: "target-time", Usage: "stop recovery at this `TIME` ('2026-11-22 10:15:00+00')"},
			&cli.StringFlag{Name: "target-lsn", Usage: "stop recovery at this `LSN` (0/3000028)"},
			&cli.StringFlag{Name: "target-xid", Usage: "stop recovery at the commit of this transaction `ID`"},
			&cli.StringFlag{Name: "target-name", Usage: "stop recovery at this restore point `NAME` (pg_create_restore_point)"},
			&cli.BoolFlag{Name: "target-immediate", Usage: "stop recovery as soon as the backup is consistent"},
			&cli.StringFlag{Name: "target-action", Usage: "at the target: promote, pause or shutdown (PostgreSQL's default: pause)"},
			&cli.BoolFlag{Name: "target-exclusive", Usage: "stop just before the target instead of just after it"},
			&cli.StringFlag{Name: "target-timeline", Usage: "recovery_target_timeline: latest (PostgreSQL's default), current or a `NUMBER`"},
			&cli.BoolFlag{Name: "use-partial", Usage: "restore_command also serves wal-receive's unfinished segment (.partial): disaster recovery up to the last streamed second"},
			&cli.StringFlag{Name: "config-file", EnvVars: []string{"WALFERRY_CONFIG_FILE"},
				Usage: "the restored server's postgresql.conf when it is not in the data directory (e.g. /etc/postgresql/15/main/postgresql.conf): `PATH`; it must include walferry.conf", DefaultText: "PGDATA/postgresql.conf"},
			&cli.StringSliceFlag{Name: "alter-system-reset", Usage: "remove recovery setting `KEY` (restore_command, recovery_target*) from postgresql.auto.conf, as ALTER SYSTEM RESET would (repeatable)"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		),
		Action: a.restore,
	}
}

func (a *app) restore(c *cli.Context) error {
	args, err := adminArgs(c) // flags may follow the backup id
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usage(fmt.Errorf("restore takes one argument, the backup id (see walferry backup-list) or LATEST, got %d: walferry restore LATEST --pgdata DIR", len(args)))
	}
	s, err := a.load(c)
	if err != nil {
		return err
	}
	if err := s.requireRepos(); err != nil {
		return err
	}
	o := restore.Options{
		Backup:        args[0],
		DataDir:       s.cfg.PGData,
		Delta:         c.Bool("delta"),
		Standby:       c.Bool("standby"),
		Jobs:          c.Int("jobs"),
		TablespaceMap: splitList(c.StringSlice("tablespace-map")),
		Target: restore.Target{
			Time: c.String("target-time"), LSN: c.String("target-lsn"), XID: c.String("target-xid"),
			Name: c.String("target-name"), Immediate: c.Bool("target-immediate"), Action: c.String("target-action"),
			Exclusive: c.Bool("target-exclusive"), Timeline: c.String("target-timeline"),
		},
		RestoreCommand:   restore.RestoreCommand{Repos: s.cfg.Repos, Partial: c.Bool("use-partial")},
		ConfigFile:       c.String("config-file"),
		AlterSystemReset: splitList(c.StringSlice("alter-system-reset")),
		Log:              s.log.With("component", "restore"),
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
	if err := o.Validate(); err != nil {
		return usage(err)
	}
	ro, err := s.reposOptions(nil)
	if err != nil {
		return err
	}
	set, err := repos.OpenFirst(c.Context, ro, s.log)
	if err != nil {
		return err
	}
	defer set.Close()
	r := set.Repos[0]

	bar := progress.New(a.stderr, "restore")
	if bar != nil {
		o.Progress = func(p restore.Progress) { bar.Bytes(p.Phase, p.Done, p.Total) }
	}
	res, err := restore.Run(c.Context, r, o)
	bar.Finish()
	if errors.Is(err, restore.ErrInvalid) {
		return usage(err)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return a.printJSON(res)
	}
	a.printRestore(res)
	return nil
}

func (a *app) printRestore(res restore.Result) {
	fmt.Fprintf(a.stdout, "restored backup %s into %s: %d files, %s, in %s\n",
		res.Backup, res.DataDir, res.Files, humanize.Bytes(res.Bytes), time.Duration(float64(res.Duration)*float64(time.Second)).Round(time.Millisecond))
	fmt.Fprintf(a.stdout, "  fetched %d files (%s) from %d objects", res.FilesFetched, humanize.Bytes(res.BytesFetched), res.ObjectsRead)
	if res.Delta {
		fmt.Fprintf(a.stdout, "; kept %d files; removed %d files and %d directories", res.FilesKept, res.FilesRemoved, res.DirsRemoved)
	}
	fmt.Fprintln(a.stdout)
	for oid, dir := range res.Tablespaces {
		fmt.Fprintf(a.stdout, "  tablespace %s in %s\n", oid, dir)
	}
	if res.Owner != "" {
		fmt.Fprintf(a.stdout, "  owned by %s\n", res.Owner)
	}
	what := "replays the archive, then promotes"
	if res.Standby {
		what = "runs as a standby replaying the archive"
	}
	if res.RecoveryTarget != "" {
		what = "replays the archive up to " + res.RecoveryTarget
	}
	include := "includes it"
	if res.IncludeAdded {
		include = "now includes it"
	}
	fmt.Fprintf(a.stdout, "  recovery settings in %s; %s %s\n", res.SettingsFile, res.ConfigFile, include)
	for _, s := range res.AutoConfRemoved {
		fmt.Fprintf(a.stdout, "  removed from postgresql.auto.conf: %s\n", s)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(a.stdout, "  warning: %s\n", w)
	}
	fmt.Fprintf(a.stdout, "  %s written; start PostgreSQL on it (pg_ctl -D %s start): it %s\n", res.Signal, res.DataDir, what)
}
