package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/walferry/walferry/internal/humanize"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/progress"
)

func (a *app) backupPushCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup-push",
		Usage:     "take a base backup into the repository",
		UsageText: "walferry backup-push --repo URL... [--pgdata DIR | --remote [--server-compression lz4]] [--pg-conn STRING] [--incremental | --full] [--jobs N] [--json]",
		Description: `Takes a non-exclusive base backup of the PostgreSQL server reached with
--pg-conn (or libpq's PG* variables): pg_backup_start on a connection held
open for the whole backup, then the data directory's files are read,
checksummed, compressed (and encrypted when the repository is) and uploaded
by --jobs workers; small files are bundled into shared objects and large
ones split, so memory stays bounded and one huge table does not serialize
the backup. Tablespaces are included. pg_backup_stop ends it, and the
backup becomes visible (its manifest is written, last) only once the WAL
from its start to its end is in the repository: archive_command must
push there (walferry archive-push).

   walferry backup-push --repo s3://bucket/db --pgdata /var/lib/postgresql/15/main
   walferry backup-push --repo s3://bucket/db --incremental     # from cron, every few hours

The server must be the primary, with archive_mode on. --pgdata must be the
server's data directory as this process sees it (the default is the
server's data_directory setting): run backup-push on the database host or
in a sidecar that mounts the data volume. It must prove it is the connected
server's: its postmaster.pid names that server (data directory, port,
start time) and its control file says "in production" at the server's
latest checkpoint. A stopped copy of the same cluster (an old restore, a
standby's directory) is refused with exit 7, naming both directories: a
backup read from it would lack the server's newest data. --remote reads
no directory and is not concerned.

--incremental stores only what changed since the newest backup in the
repository: unchanged files and 8 MiB units are recognised by checksum,
and, when the cluster has data checksums or wal_log_hints, inside changed
relation files only the pages whose LSN is newer than the previous
backup's start are stored. When there is no backup yet, or the
newest is on another timeline, a full backup is taken. Full is the default.

Page checksums are verified while reading when the cluster has them; a
mismatch is reported (and listed by backup-show) but does not stop the
backup, as with pg_basebackup.

An interrupted backup leaves no manifest, so backup-list never shows it;
its objects are removed at once, or by the next backup-push. Only one
backup-push or backup-delete runs against a repository at a time (exit 8
names the holder). With several --repo, a backup is taken into each, one
after the other.

--remote takes the backup over the replication protocol instead
(PostgreSQL 15's BASE_BACKUP), for a CronJob that cannot mount the data
volume: the connection needs a user with the REPLICATION attribute and a
"replication" line in pg_hba.conf. The stream is read once and split into
the same objects, manifest and incrementals as a local backup;
--server-compression lz4 (or zstd, gzip) makes the server compress what it
sends, which saves network between sites at the server's CPU cost.

   walferry backup-push --remote --repo s3://bucket/db --pg-conn 'host=db user=replicator'

On a terminal a progress bar shows bytes, rate and ETA; --json (or JSON
logging in pods) prints one JSON summary line per backup on stdout.`,
		Flags: withCommonFlags(
			&cli.BoolFlag{Name: "incremental", EnvVars: []string{"WALFERRY_BACKUP_INCREMENTAL"},
				Usage: "store only what changed since the newest backup (full when there is none)"},
			&cli.BoolFlag{Name: "full", Usage: "take a full backup (the default; overrides WALFERRY_BACKUP_INCREMENTAL)"},
			&cli.BoolFlag{Name: "remote", EnvVars: []string{"WALFERRY_BACKUP_REMOTE"},
				Usage: "take the backup over the replication protocol (BASE_BACKUP), without access to the data directory"},
			&cli.StringFlag{Name: "server-compression", EnvVars: []string{"WALFERRY_SERVER_COMPRESSION"},
				Usage: "with --remote: have the server compress the stream (lz4, zstd, gzip or none) to save network"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, EnvVars: []string{"WALFERRY_BACKUP_JOBS"},
				Usage: "`N` files read, compressed and uploaded in parallel", DefaultText: "one per CPU, at least 2"},
			&cli.BoolFlag{Name: "spread-checkpoint", Usage: "wait for a spread checkpoint instead of an immediate one"},
			&cli.DurationFlag{Name: "archive-timeout", EnvVars: []string{"WALFERRY_ARCHIVE_TIMEOUT"}, Value: 2 * time.Minute,
				Usage: "how long to wait for the backup's WAL to reach the repository"},
			&cli.StringFlag{Name: "label", Usage: "backup label (default \"walferry <id>\")"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON summary line per backup"},
		),
		Action: a.backupPush,
	}
}

func (a *app) backupPush(c *cli.Context) error {
	if c.Bool("incremental") && c.Bool("full") && c.IsSet("incremental") {
		return usage(errors.New("--incremental and --full contradict each other: pick one"))
	}
	if c.IsSet("server-compression") && !c.Bool("remote") {
		return usage(errors.New("--server-compression applies to --remote backups only"))
	}
	switch sc := c.String("server-compression"); sc {
	case "", "none", "lz4", "zstd", "gzip":
	default:
		return usage(fmt.Errorf("--server-compression %q: want lz4, zstd, gzip or none", sc))
	}
	if c.IsSet("jobs") && c.Int("jobs") < 1 {
		return usage(fmt.Errorf("--jobs %d: want at least 1", c.Int("jobs")))
	}
	s, repos, closeStores, err := a.loadRepos(c)
	if err != nil {
		return err
	}
	defer closeStores()
	jsonOut := c.Bool("json") || a.logFormat == "json"
	for i, r := range repos {
		opts := backup.Options{
			Conn:              s.cfg.PGConn.Reveal(),
			PGData:            s.cfg.PGData,
			Incremental:       c.Bool("incremental") && !c.Bool("full"),
			Jobs:              c.Int("jobs"),
			SpreadCheckpoint:  c.Bool("spread-checkpoint"),
			ArchiveTimeout:    c.Duration("archive-timeout"),
			Label:             c.String("label"),
			Remote:            c.Bool("remote"),
			ServerCompression: c.String("server-compression"),
			Logger:            s.log.With("repo", s.cfg.Repos[i]),
		}
		var bar *progress.Bar
		if !jsonOut {
			bar = progress.New(a.stderr, "")
		}
		if bar != nil {
			opts.Progress = showBackup(bar)
		}
		m, err := backup.Push(c.Context, r, opts)
		bar.Finish()
		if err != nil {
			return err
		}
		if err := a.printBackupSummary(s.cfg.Repos[i], m, jsonOut); err != nil {
			return err
		}
	}
	return nil
}

// backupSummary is the one line a backup leaves for scripts and pods.
type backupSummary struct {
	Repo        string         `json:"repo"`
	ID          string         `json:"id"`
	Type        backup.Type    `json:"type"`
	Parent      string         `json:"parent,omitempty"`
	StartLSN    string         `json:"start_lsn"`
	StopLSN     string         `json:"stop_lsn"`
	Timeline    uint32         `json:"timeline"`
	StartWAL    string         `json:"start_wal"`
	StopWAL     string         `json:"stop_wal"`
	Files       int            `json:"files"`
	DataBytes   int64          `json:"data_bytes"`
	NewBytes    int64          `json:"new_bytes"`
	StoredBytes int64          `json:"stored_bytes"`
	Duration    backup.Seconds `json:"duration_seconds"`
	PageErrors  int            `json:"page_checksum_errors"`
}

func (a *app) printBackupSummary(url string, m *backup.Manifest, jsonOut bool) error {
	sum := backupSummary{
		Repo: url, ID: m.ID, Type: m.Type, Parent: m.Parent,
		StartLSN: m.StartLSN.String(), StopLSN: m.StopLSN.String(), Timeline: uint32(m.Timeline),
		StartWAL: m.StartWAL, StopWAL: m.StopWAL, Files: m.Stats.Files,
		DataBytes: m.Stats.DataBytes, NewBytes: m.Stats.NewBytes, StoredBytes: m.Stats.StoredBytes,
		Duration: m.Stats.Duration, PageErrors: len(m.PageChecksumErrors),
	}
	if jsonOut {
		return writeJSONLine(a.stdout, sum)
	}
	parent := ""
	if m.Parent != "" {
		parent = " on " + m.Parent
	}
	_, err := fmt.Fprintf(a.stdout, "backup %s (%s%s) complete in %s: %d files, %s, %s new, %s stored in %s; needs WAL %s..%s\n",
		m.ID, m.Type, parent, time.Duration(float64(m.Stats.Duration)*float64(time.Second)).Round(10*time.Millisecond),
		m.Stats.Files, humanize.Bytes(m.Stats.DataBytes), humanize.Bytes(m.Stats.NewBytes), humanize.Bytes(m.Stats.StoredBytes), url,
		m.StartWAL, m.StopWAL)
	if err == nil && len(m.PageChecksumErrors) > 0 {
		_, err = fmt.Fprintf(a.stdout, "warning: %d pages failed their checksum (see walferry backup-show %s)\n", len(m.PageChecksumErrors), m.ID)
	}
	return err
}

// showBackup maps a backup's progress onto bar.
func showBackup(bar *progress.Bar) func(backup.Progress) {
	return func(p backup.Progress) {
		switch p.Phase {
		case "checkpoint":
			bar.Message(p.Phase, p.ID+" waiting for the checkpoint...")
		case "copy":
			bar.Bytes(p.ID+" copy", p.BytesDone, p.BytesTotal)
		case "wait-wal":
			bar.Message(p.Phase, p.ID+" files copied; waiting for the WAL to be archived...")
		}
	}
}

// writeJSONLine writes v as one compact JSON line.
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
