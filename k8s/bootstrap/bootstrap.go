// Package bootstrap builds a standby's data directory: the init container
// "walferry bootstrap". It restores the newest usable backup from the
// repository, or copies the source with BASE_BACKUP after creating the
// replication slot the standby will use, then writes standby.signal and
// walferry's include file (restore_command, recovery_target_timeline,
// primary_conninfo, primary_slot_name).
//
// It is idempotent, the way an init container must be: a valid data
// directory of the same cluster is left alone (signal files untouched: it
// may be a promoted primary by now); a half-done one (the marker
// MarkerName, or data files without global/pg_control) is finished with a
// delta restore, or copied again when the repository cannot help; a data
// directory of another cluster or a directory of something else is refused
// unless Reinit, which deletes its contents first.
package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/repos"
	"github.com/walferry/walferry/restore"
)

// ErrInvalid matches every error of Options.Validate.
var ErrInvalid = failure.New(failure.Usage, "invalid bootstrap request")

// Options describe one bootstrap.
type Options struct {
	// DataDir is the standby's data directory (absolute). It may be a
	// mount point: bootstrap never removes the directory itself.
	DataDir string
	// ConfigFile is postgresql.conf when it is not in DataDir (a
	// ConfigMap mount); empty means DataDir/postgresql.conf.
	ConfigFile string
	// From is FromAuto (""), FromRepo or FromPrimary.
	From string
	// Backup is the backup to restore; empty means the newest usable one.
	Backup string
	// Repo is the repository; nil when none is configured (then only
	// FromPrimary works and the standby gets no restore_command).
	Repo *repo.Repo
	// SourceConn is the libpq connection string of the server to copy and
	// stream from; empty means none. Its password must be in a passfile.
	SourceConn string
	// Slot is the physical replication slot the standby uses; NoSlot
	// turns slots off.
	Slot   string
	NoSlot bool
	// ApplicationName is primary_conninfo's application_name; empty means
	// the slot name (or "walferry" without one).
	ApplicationName string
	// Reinit deletes the contents of a data directory of another cluster,
	// or of a directory that is not a data directory, instead of refusing.
	Reinit bool
	// AutoMaxWALRatio is FromAuto's threshold (DefaultAutoMaxWALRatio when 0).
	AutoMaxWALRatio float64
	// InstallBin, when set, gets copies of walferry and walferry-hook
	// (from ExecutableDir), and restore_command runs them from there.
	InstallBin string
	// Executable is the running walferry; empty means os.Executable.
	Executable string
	// RestoreCommand is how the standby reaches the repository; its
	// Executable is set by Run (InstallBin's binaries or Executable).
	RestoreCommand restore.RestoreCommand
	// Jobs is restore.Options.Jobs.
	Jobs int
	// Log receives progress; nil discards it.
	Log *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Validate checks the options without I/O beyond the environment.
func (o *Options) Validate() error {
	invalid := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if o.DataDir == "" || !filepath.IsAbs(o.DataDir) {
		return invalid("--pgdata %q: give the standby's data directory as an absolute path", o.DataDir)
	}
	switch o.From {
	case "":
		o.From = FromAuto
	case FromAuto, FromRepo, FromPrimary:
	default:
		return invalid("--from %q: want repo, primary or auto", o.From)
	}
	if o.From == FromRepo && o.Repo == nil {
		return invalid("--from repo needs a repository: give --repo URL (WALFERRY_REPO)")
	}
	if o.From == FromPrimary && o.SourceConn == "" {
		return invalid("--from primary needs the source: give --source-conn CONNINFO (WALFERRY_SOURCE_CONN)")
	}
	if o.From == FromAuto && o.Repo == nil && o.SourceConn == "" {
		return invalid("nothing to bootstrap from: give --repo URL, --source-conn CONNINFO, or both")
	}
	if o.Backup != "" && o.Repo == nil {
		return invalid("--backup %s needs a repository: give --repo URL", o.Backup)
	}
	if o.Backup != "" {
		if err := backup.CheckID(o.Backup, true); err != nil {
			return fmt.Errorf("--backup: %w", err)
		}
	}
	if !o.NoSlot && o.SourceConn != "" {
		if o.Slot == "" {
			return invalid("no slot name: give --slot NAME or --no-slot")
		}
		if err := replication.ValidSlotName(o.Slot); err != nil {
			return invalid("--slot: %v", err)
		}
	}
	if o.AutoMaxWALRatio == 0 {
		o.AutoMaxWALRatio = DefaultAutoMaxWALRatio
	}
	if o.AutoMaxWALRatio < 0 {
		return invalid("--auto-max-wal-ratio %g: want a positive number", o.AutoMaxWALRatio)
	}
	if o.InstallBin != "" && !filepath.IsAbs(o.InstallBin) {
		return invalid("--install-bin %q: give an absolute path (the shared volume's mount point)", o.InstallBin)
	}
	if o.SourceConn != "" {
		if _, err := pg.StandbyConnInfo(o.SourceConn, ""); err != nil {
			return err
		}
	}
	return nil
}

// Result reports what a bootstrap did.
type Result struct {
	DataDir string `json:"data_dir"`
	// Action is "left alone", "restored", "copied", "finished" (a
	// half-restored directory completed) or "recopied" (it was cleared
	// and copied again).
	Action string `json:"action"`
	// From is where the data came from: repo or primary.
	From     string    `json:"from,omitempty"`
	Decision *Decision `json:"decision,omitempty"`
	Backup   string    `json:"backup,omitempty"`
	// Skipped lists the backups newer than the one chosen and why.
	Skipped []SkippedBackup `json:"skipped,omitempty"`
	// Restore is the restore's report (files and bytes fetched vs kept).
	Restore *restore.Result `json:"restore,omitempty"`
	Copy    *CopyResult     `json:"copy,omitempty"`
	// Reinit says the directory's contents were deleted first.
	Reinit bool `json:"reinit,omitempty"`
	// SystemID and State describe the data directory left alone.
	SystemID uint64 `json:"system_identifier,string,omitempty"`
	State    string `json:"state,omitempty"`

	Slot        string `json:"slot,omitempty"`
	SlotCreated bool   `json:"slot_created,omitempty"`
	// Settings are what walferry.conf holds (primary_conninfo without
	// secrets: it has none).
	Settings     map[string]string `json:"settings,omitempty"`
	SettingsFile string            `json:"settings_file,omitempty"`
	IncludeAdded bool              `json:"include_added,omitempty"`
	Installed    []string          `json:"installed,omitempty"`
	Warnings     []string          `json:"warnings,omitempty"`
	Duration     backup.Seconds    `json:"duration_seconds"`
}

// SkippedBackup is a backup not chosen, with the reason.
type SkippedBackup struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// CopyResult reports a BASE_BACKUP copy.
type CopyResult struct {
	StartLSN pg.LSN `json:"start_lsn"`
	StopLSN  pg.LSN `json:"stop_lsn"`
	Bytes    int64  `json:"bytes"`
	Files    int    `json:"files"`
}

// Run bootstraps o.DataDir.
func Run(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	b := &bootstrapper{o: o, log: o.Log, res: Result{DataDir: o.DataDir}}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.o.Now == nil {
		b.o.Now = time.Now
	}
	if b.o.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return Result{}, fmt.Errorf("bootstrap: find the running walferry: %w", err)
		}
		b.o.Executable = exe
	}
	err := b.run(ctx)
	b.res.Duration = backup.Seconds(time.Since(start).Seconds())
	return b.res, err
}

type bootstrapper struct {
	o   Options
	log *slog.Logger
	res Result
	// source is the source's IDENTIFY_SYSTEM once asked; sourceErr why not.
	source    *replication.System
	sourceErr error
}

func (b *bootstrapper) run(ctx context.Context) error {
	if b.o.InstallBin != "" {
		if err := b.install(); err != nil {
			return err
		}
	}
	// A read-only postgresql.conf without the include line fails before
	// anything is fetched (seed 003: a ConfigMap).
	files := b.files()
	if b.o.ConfigFile != "" || fileExists(files.ConfigPath()) {
		if err := files.CheckInclude(); err != nil {
			return failure.Wrap(failure.Usage, fmt.Errorf("bootstrap: %w", err))
		}
	}
	st, err := classify(b.o.DataDir)
	if err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	switch st.Kind {
	case dirValid:
		done, err := b.checkValid(ctx, st)
		if done || err != nil {
			return err
		}
	case dirJunk:
		if !b.o.Reinit {
			return failure.New(failure.Usage, fmt.Sprintf(
				"bootstrap: %s is not empty and not a PostgreSQL data directory (it holds %s); empty it, point --pgdata elsewhere, or pass --reinit to delete its contents",
				b.o.DataDir, listNames(st.Entries)))
		}
		if err := b.reinit(); err != nil {
			return err
		}
	case dirHalf:
		return b.finish(ctx, st)
	}
	return b.fresh(ctx)
}

// checkValid handles a data directory that can start: same cluster ->
// left alone (done); another -> refused, or cleared with Reinit.
func (b *bootstrapper) checkValid(ctx context.Context, st dirState) (done bool, err error) {
	cd := st.Control
	var want uint64
	var where string
	if b.o.Repo != nil {
		want, where = repos.ClusterOf(b.o.Repo).SystemID, "repository "+b.o.Repo.String()
	} else if sys, err := b.identify(ctx); err == nil {
		want, where = sys.SystemID, "source "+pg.ConnHostPort(b.o.SourceConn)
	} else {
		b.res.Warnings = append(b.res.Warnings, fmt.Sprintf("could not compare the data directory with the source: %v", err))
	}
	if want == 0 || want == cd.SystemIdentifier {
		b.res.Action, b.res.SystemID, b.res.State = "left alone", cd.SystemIdentifier, cd.State.String()
		b.log.Info("data directory of this cluster already there: left alone",
			"data_dir", b.o.DataDir, "system_identifier", cd.SystemIdentifier, "state", cd.State.String())
		return true, nil
	}
	if !b.o.Reinit {
		return false, failure.New(failure.WrongCluster, fmt.Sprintf(
			"bootstrap: %s holds the data directory of cluster %d, but the %s belongs to cluster %d; point --pgdata elsewhere, or pass --reinit to delete its contents and bootstrap again",
			b.o.DataDir, cd.SystemIdentifier, where, want))
	}
	return false, b.reinit()
}

func (b *bootstrapper) reinit() error {
	b.log.Warn("--reinit: deleting the data directory's contents", "data_dir", b.o.DataDir)
	if err := clearDir(b.o.DataDir); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	b.res.Reinit = true
	return nil
}

// fresh fills an empty data directory.
func (b *bootstrapper) fresh(ctx context.Context) error {
	from := b.o.From
	var cand *candidate
	if from != FromPrimary {
		var err error
		if cand, err = b.pickBackup(ctx); err != nil {
			return err
		}
		if from == FromRepo && cand == nil {
			return failure.New(failure.NoBackup, fmt.Sprintf(
				"bootstrap: no usable backup in %s (%s); take one with walferry backup-push, or use --from primary",
				b.o.Repo, skippedSummary(b.res.Skipped)))
		}
	}
	if from == FromAuto {
		var src *replication.System
		if b.o.SourceConn != "" {
			if sys, err := b.identify(ctx); err == nil {
				src = &sys
			} else {
				b.res.Warnings = append(b.res.Warnings, fmt.Sprintf("source unreachable, not considered: %v", err))
			}
		}
		d, err := decide(cand, src, b.o.AutoMaxWALRatio)
		if err != nil {
			return err
		}
		b.res.Decision = &d
		from = d.From
		b.log.Info("--from auto", "from", d.From, "reason", d.Reason, "backup", d.Backup,
			"database_bytes", d.DatabaseBytes, "wal_since_bytes", d.WALSinceBytes)
	}
	if err := b.prepareDir(); err != nil {
		return err
	}
	b.res.From = from
	if from == FromRepo {
		b.res.Action = "restored"
		return b.fromRepo(ctx, cand.ID, false)
	}
	b.res.Action = "copied"
	return b.fromPrimary(ctx)
}

// finish completes a half-restored directory: a delta restore when the
// repository has a usable backup (BASE_BACKUP cannot resume), else the
// contents are cleared and the source copied again.
func (b *bootstrapper) finish(ctx context.Context, st dirState) error {
	was := "an interrupted restore or copy"
	if st.Marker != nil && st.Marker.From != "" {
		was = fmt.Sprintf("an interrupted bootstrap --from %s started at %s", st.Marker.From, st.Marker.StartedAt.Format(time.RFC3339))
	}
	if b.o.Repo != nil && b.o.From != FromPrimary {
		id := ""
		if st.Marker != nil && st.Marker.From == FromRepo && b.o.Backup == "" {
			id = st.Marker.Backup
		}
		cand, err := b.pickBackupOr(ctx, id)
		if err != nil {
			return err
		}
		if cand != nil {
			b.log.Info("finishing a half-restored data directory with a delta restore", "data_dir", b.o.DataDir, "was", was, "backup", cand.ID)
			b.res.Action, b.res.From = "finished", FromRepo
			return b.fromRepo(ctx, cand.ID, true)
		}
	}
	if b.o.SourceConn == "" {
		return failure.New(failure.NoBackup, fmt.Sprintf(
			"bootstrap: %s is half-restored (%s) and the repository has no usable backup to finish it with; give --source-conn to copy the source again, or take a backup",
			b.o.DataDir, was))
	}
	b.log.Warn("half-copied data directory: BASE_BACKUP cannot resume, clearing it and copying again", "data_dir", b.o.DataDir, "was", was)
	b.res.Warnings = append(b.res.Warnings, fmt.Sprintf("%s was half-done (%s) and no usable backup could finish it: its contents were deleted and the source copied again", b.o.DataDir, was))
	if err := clearDir(b.o.DataDir); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	b.res.Action, b.res.From = "recopied", FromPrimary
	return b.fromPrimary(ctx)
}

// prepareDir makes a missing data directory (0700), given to the
// postgres user when root makes it.
func (b *bootstrapper) prepareDir() error {
	if _, err := os.Stat(b.o.DataDir); err == nil {
		return nil
	}
	if err := os.MkdirAll(b.o.DataDir, 0o700); err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("create data directory: %w", err))
	}
	if os.Geteuid() == 0 {
		if u, err := user.Lookup("postgres"); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			if err := os.Chown(b.o.DataDir, uid, gid); err != nil {
				return failure.Wrap(failure.Postgres, err)
			}
		}
	}
	return nil
}

// fromRepo restores backup id as a standby (delta: over what is there),
// then adds the streaming settings.
func (b *bootstrapper) fromRepo(ctx context.Context, id string, delta bool) error {
	b.res.Backup = id
	own := dirOwner(b.o.DataDir)
	if err := writeMarker(b.o.DataDir, marker{From: FromRepo, Backup: id, StartedAt: b.o.Now().UTC()}, own); err != nil {
		return err
	}
	b.ensureSlot(ctx) // WAL is kept from now on, when the source answers
	ro := restore.Options{
		Backup: id, DataDir: b.o.DataDir, Delta: delta, Standby: true, Jobs: b.o.Jobs,
		Keep:           []string{MarkerName},
		RestoreCommand: b.restoreCommand(),
		ConfigFile:     b.o.ConfigFile,
		Target:         restore.Target{Timeline: "latest"},
		Log:            b.log.With("component", "restore"),
		Now:            b.o.Now,
	}
	rr, err := restore.Run(ctx, b.o.Repo, ro)
	if err != nil {
		return fmt.Errorf("bootstrap: restore backup %s: %w", id, err)
	}
	b.res.Restore = &rr
	b.res.IncludeAdded = rr.IncludeAdded
	b.res.Warnings = append(b.res.Warnings, rr.Warnings...)
	return b.writeSettings(false)
}

// fromPrimary copies the source with BASE_BACKUP, its slot created
// first so the WAL the copy needs afterwards is kept however long it takes.
func (b *bootstrapper) fromPrimary(ctx context.Context) error {
	conn, err := replication.ConnectString(ctx, b.o.SourceConn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := conn.Identify(ctx)
	if err != nil {
		return err
	}
	if b.o.Repo != nil {
		if want := repos.ClusterOf(b.o.Repo).SystemID; want != sys.SystemID {
			return failure.New(failure.WrongCluster, fmt.Sprintf(
				"bootstrap: the source %s is cluster %d but the repository %s belongs to cluster %d; fix --source-conn or --repo",
				pg.ConnHostPort(b.o.SourceConn), sys.SystemID, b.o.Repo, want))
		}
	}
	if !b.o.NoSlot {
		slot, created, err := conn.CreatePhysicalSlot(ctx, b.o.Slot)
		if err != nil {
			return fmt.Errorf("bootstrap: create replication slot %s on %s: %w", b.o.Slot, pg.ConnHostPort(b.o.SourceConn), err)
		}
		b.res.Slot, b.res.SlotCreated = slot.Name, created
		b.log.Info("replication slot ready", "slot", slot.Name, "created", created, "restart_lsn", slot.RestartLSN)
	}
	own := dirOwner(b.o.DataDir)
	sink, err := replication.NewDirSink(b.o.DataDir, replication.DirOptions{})
	if err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("bootstrap: %w", err))
	}
	if err := writeMarker(b.o.DataDir, marker{From: FromPrimary, StartedAt: b.o.Now().UTC()}, own); err != nil {
		return err
	}
	counter := &countingSink{Sink: sink}
	b.log.Info("copying the source with BASE_BACKUP", "source", pg.ConnHostPort(b.o.SourceConn), "data_dir", b.o.DataDir)
	if err := conn.BaseBackup(ctx, replication.BaseBackupOptions{Label: "walferry bootstrap", Fast: true, WAL: true}, counter); err != nil {
		// The marker stays: the next run finishes or recopies.
		return fmt.Errorf("bootstrap: copy %s: %w", pg.ConnHostPort(b.o.SourceConn), err)
	}
	b.res.Copy = &CopyResult{StartLSN: counter.start, StopLSN: counter.stop, Bytes: counter.bytes, Files: counter.files}
	if err := chownTree(b.o.DataDir, own); err != nil {
		return failure.Wrap(failure.Postgres, err)
	}
	for _, n := range []string{"recovery.signal", "postmaster.pid", "postmaster.opts"} {
		_ = os.Remove(filepath.Join(b.o.DataDir, n))
	}
	if err := writeOwnedEmpty(filepath.Join(b.o.DataDir, "standby.signal"), own); err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("write standby.signal: %w", err))
	}
	return b.writeSettings(true)
}

// writeSettings writes walferry.conf's standby settings (all of them when
// whole; else added to what restore wrote), the include line, and removes
// the marker: the last step.
func (b *bootstrapper) writeSettings(whole bool) error {
	files := b.files()
	var settings []pgconf.Setting
	if whole && b.o.Repo != nil {
		settings = append(settings, pgconf.Setting{Key: "restore_command", Value: b.restoreCommand().Line()})
	}
	settings = append(settings, pgconf.Setting{Key: "recovery_target_timeline", Value: "latest"})
	if b.o.SourceConn != "" {
		app := b.o.ApplicationName
		if app == "" {
			app = b.o.Slot
		}
		if app == "" || b.o.NoSlot && b.o.ApplicationName == "" {
			app = pg.DefaultApplicationName
		}
		ci, err := pg.StandbyConnInfo(b.o.SourceConn, app)
		if err != nil {
			return err
		}
		settings = append(settings, pgconf.Setting{Key: "primary_conninfo", Value: ci})
		if !b.o.NoSlot {
			settings = append(settings, pgconf.Setting{Key: "primary_slot_name", Value: b.o.Slot})
		}
	}
	var err error
	if whole {
		err = files.Write(settings)
	} else {
		_, err = files.Set(settings...)
	}
	if err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("bootstrap: write %s: %w", files.Path(), err))
	}
	added, err := files.EnsureInclude()
	if err != nil {
		return failure.Wrap(failure.Usage, fmt.Errorf("bootstrap: %w", err))
	}
	b.res.IncludeAdded = b.res.IncludeAdded || added
	b.res.SettingsFile = files.Path()
	all, err := files.Read()
	if err == nil {
		b.res.Settings = map[string]string{}
		for _, s := range all {
			b.res.Settings[s.Key] = s.Value
		}
	}
	return removeMarker(b.o.DataDir)
}

func (b *bootstrapper) files() pgconf.Files {
	return pgconf.Files{DataDir: b.o.DataDir, ConfigFile: b.o.ConfigFile,
		Origin: "walferry bootstrap at " + b.o.Now().UTC().Format("2006-01-02 15:04:05Z")}
}

// restoreCommand is the standby's restore_command: the installed hook
// (through the sidecar's socket) or walferry.
func (b *bootstrapper) restoreCommand() restore.RestoreCommand {
	rc := b.o.RestoreCommand
	switch {
	case b.o.InstallBin != "" && rc.Socket != "":
		rc.Executable = filepath.Join(b.o.InstallBin, HookName)
	case b.o.InstallBin != "":
		rc.Executable = filepath.Join(b.o.InstallBin, WalferryName)
	default:
		rc.Executable = b.o.Executable
	}
	return rc
}

// identify asks the source who it is, once.
func (b *bootstrapper) identify(ctx context.Context) (replication.System, error) {
	if b.source != nil || b.sourceErr != nil {
		if b.source != nil {
			return *b.source, nil
		}
		return replication.System{}, b.sourceErr
	}
	if b.o.SourceConn == "" {
		b.sourceErr = errors.New("no --source-conn")
		return replication.System{}, b.sourceErr
	}
	conn, err := replication.ConnectString(ctx, b.o.SourceConn)
	if err != nil {
		b.sourceErr = err
		return replication.System{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	sys, err := conn.Identify(ctx)
	if err != nil {
		b.sourceErr = err
		return replication.System{}, err
	}
	b.source = &sys
	return sys, nil
}

// ensureSlot creates the standby's slot on the source when it answers (a
// restore from the repository); a warning otherwise: the sidecar creates
// it once the source is reachable.
func (b *bootstrapper) ensureSlot(ctx context.Context) {
	if b.o.NoSlot || b.o.SourceConn == "" {
		return
	}
	warn := func(err error) {
		b.res.Warnings = append(b.res.Warnings, fmt.Sprintf("replication slot %s not created on %s (%v): the sidecar creates it once the source answers; WAL written meanwhile must come from the repository",
			b.o.Slot, pg.ConnHostPort(b.o.SourceConn), err))
	}
	conn, err := replication.ConnectString(ctx, b.o.SourceConn)
	if err != nil {
		warn(err)
		return
	}
	defer conn.Close(context.WithoutCancel(ctx))
	slot, created, err := conn.CreatePhysicalSlot(ctx, b.o.Slot)
	if err != nil {
		warn(err)
		return
	}
	b.res.Slot, b.res.SlotCreated = slot.Name, created
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func listNames(names []string) string {
	const max = 10
	s := ""
	for i, n := range names {
		if i == max {
			s += fmt.Sprintf(", and %d more", len(names)-max)
			break
		}
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return s
}
