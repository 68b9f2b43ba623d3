// Package restore rebuilds a PostgreSQL data directory from a walferry
// backup and prepares it for recovery: full restores into an empty
// directory, delta restores that keep what already matches (the fast way
// to turn an old primary back into a copy of the backup), relocated
// tablespaces, and the recovery settings (restore_command, a recovery
// target, recovery.signal or standby.signal) of PostgreSQL 12 and later.
// The settings go into walferry's include file, walferry.conf in the data
// directory (see internal/pgconf), which postgresql.conf must include:
// the restore adds the line, or refuses before downloading anything when
// it cannot (a read-only postgresql.conf, one it cannot find).
//
// A restore reads only the backup's manifest and the objects its extents
// point at (this backup's and, for an incremental, its ancestors'). Each
// object is downloaded once, streamed through the verifying decoder from
// its start, and its pieces are written into place with pwrite; memory is
// bounded by Jobs times a small buffer whatever the size of the objects.
// Every 8 MiB unit of a restored file is checked against the manifest:
// while it is written when its bytes come in order, else read back. Each
// file is made durable (fsync, after its mode, owner and time are set)
// as soon as it is whole, while the next objects are decoded.
//
// Nothing is silently half-restored: global/pg_control is written under a
// temporary name and renamed into place only once every file is verified,
// and backup_label is written last. A restore that fails removes
// pg_control, backup_label and the signal files, so PostgreSQL refuses to
// start on the directory until a restore (a delta one reuses what is
// there) completes.
package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
)

// Options describe one restore.
type Options struct {
	// Backup is the id of the backup to restore, or backup.Latest. With
	// Latest and a time or LSN target, the newest backup that ended
	// before the target is chosen.
	Backup string
	// DataDir is the data directory to fill. It is made (mode 0700) when
	// missing; otherwise it must be empty, unless Delta is set.
	DataDir string
	// Delta reuses a non-empty DataDir: local files are compared with the
	// backup unit by unit and only what differs is fetched; local files
	// and directories the backup does not have are removed. The directory
	// must look like a PostgreSQL data directory (or be empty).
	Delta bool
	// Keep names files at the top of DataDir that belong to the caller
	// (k8s/bootstrap's progress marker): the restore neither counts them
	// when it checks that DataDir is empty nor removes them in a delta.
	Keep []string
	// Standby writes standby.signal instead of recovery.signal.
	Standby bool
	// Jobs is how many objects are downloaded, and how many units hashed,
	// at once; 0 means runtime.NumCPU(). It is at least 2.
	Jobs int
	// TablespaceMap relocates tablespaces: each entry is OID=DIR or
	// NAME=DIR with DIR absolute. Other tablespaces go back to their
	// recorded location.
	TablespaceMap []string
	// Target says where recovery stops; the zero value replays the whole
	// archive (PostgreSQL's default).
	Target Target
	// RestoreCommand says how the restored server fetches WAL.
	RestoreCommand RestoreCommand
	// ConfigFile is the server's postgresql.conf when it is not in the
	// data directory (PostgreSQL's config_file, e.g.
	// /etc/postgresql/15/main/postgresql.conf on Debian); empty means
	// DataDir/postgresql.conf, as restored from the backup. It must
	// include walferry.conf: the restore appends the include line when
	// missing.
	ConfigFile string
	// AlterSystemReset lists settings to remove from the restored
	// postgresql.auto.conf, as ALTER SYSTEM RESET would on a running
	// server: an ALTER SYSTEM restore_command from the backup's source
	// makes the restore fail until it is reset.
	AlterSystemReset []string
	// Log receives progress milestones; nil discards them.
	Log *slog.Logger
	// Progress, when set, is called with the current phase's progress at
	// most every 200 ms while a phase runs and once when it ends.
	Progress func(Progress)
	// Now gives the time written into walferry.conf's header; nil is time.Now.
	Now func() time.Time
}

// RestoreCommand is how the restored server reaches the repository: its
// restore_command runs Executable archive-get with these settings.
// Credentials are not written anywhere: the server's environment must
// provide them (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*,
// WALFERRY_ENCRYPTION_PASSPHRASE), or the configuration file.
type RestoreCommand struct {
	// Executable is the absolute path of the walferry binary; empty means
	// the running program (os.Executable).
	Executable string
	// Repos are the repository URLs, each passed as --repo.
	Repos []string
	// Config is the configuration file, passed as --config when set.
	Config string
	// PassphraseFile is passed as --encryption-passphrase-file when set.
	PassphraseFile string
	// Partial passes --partial: a segment that is not archived is served
	// from its .partial (the unfinished segment wal-receive uploads),
	// zero-padded, so recovery ends at the last streamed byte. For
	// disaster recovery of a repository fed by wal-receive once the
	// primary is gone; a live primary's partial keeps growing.
	Partial bool
	// Socket passes --socket: archive-get hands the call to walferry
	// daemon (the sidecar) on this unix socket when it answers. With
	// walferry-hook as Executable the call then costs a fraction of a
	// walferry start.
	Socket string
}

// Result reports what a restore did.
type Result struct {
	Backup  string `json:"backup"`
	DataDir string `json:"data_dir"`
	Delta   bool   `json:"delta"`
	Standby bool   `json:"standby"`
	// Files is how many files the backup has; FilesKept were already
	// right (delta), FilesFetched were written from the repository.
	Files        int `json:"files"`
	FilesKept    int `json:"files_kept"`
	FilesFetched int `json:"files_fetched"`
	// FilesRemoved and DirsRemoved count what a delta restore deleted.
	FilesRemoved int `json:"files_removed"`
	DirsRemoved  int `json:"dirs_removed"`
	// Bytes is the size of the restored files; BytesFetched the part
	// written from the repository; BytesRead the raw bytes decoded from
	// ObjectsRead objects (including the parts no file needed).
	Bytes        int64 `json:"bytes"`
	BytesFetched int64 `json:"bytes_fetched"`
	BytesRead    int64 `json:"bytes_read"`
	ObjectsRead  int   `json:"objects_read"`
	// Tablespaces maps each tablespace OID to where it was restored.
	Tablespaces map[string]string `json:"tablespaces,omitempty"`
	// Signal is the file that starts recovery: recovery.signal or standby.signal.
	Signal string `json:"signal"`
	// RecoveryTarget describes the target ("recovery_target_lsn = '0/3000028'"), empty for none.
	RecoveryTarget string `json:"recovery_target,omitempty"`
	// SettingsFile is walferry.conf, which holds the recovery settings;
	// ConfigFile is the postgresql.conf that includes it, IncludeAdded
	// says the restore appended the include line.
	SettingsFile string `json:"settings_file"`
	ConfigFile   string `json:"config_file"`
	IncludeAdded bool   `json:"include_added"`
	// AutoConfRemoved lists the settings removed from postgresql.auto.conf:
	// an earlier walferry's recovery settings block, and the
	// AlterSystemReset ones.
	AutoConfRemoved []string `json:"auto_conf_removed,omitempty"`
	// Warnings are settings read after walferry.conf (ALTER SYSTEM) that
	// override the recovery settings, and timelines in the repository that
	// its lineage record does not own, each with its fix.
	Warnings []string `json:"warnings,omitempty"`
	// Owner is the OS user the files were given to (root runs only).
	Owner    string         `json:"owner,omitempty"`
	Duration backup.Seconds `json:"duration_seconds"`
}

// Progress is a snapshot of one phase of a restore.
type Progress struct {
	// Phase is "compare" (hashing local files, delta only), "fetch"
	// (downloading and writing) or "verify" (reading the files back).
	Phase string
	// Done and Total count bytes.
	Done, Total int64
	// Elapsed is the time since the phase started.
	Elapsed time.Duration
}

// ErrInvalid marks a request refused before anything was written: a bad
// option, a non-empty target directory without Delta, a running server,
// a recovery target the backup cannot reach. Fixing the command line
// fixes it.
var ErrInvalid = failure.New(failure.Usage, "invalid restore request")

// ErrIncomplete marks a restore that failed after it started writing:
// the directory cannot start a server until a restore completes.
var ErrIncomplete = errors.New("restore incomplete")

// marked is an error that matches a sentinel without printing it.
type marked struct {
	err  error
	mark error
}

func (e *marked) Error() string        { return e.err.Error() }
func (e *marked) Unwrap() error        { return e.err }
func (e *marked) Is(target error) bool { return target == e.mark }

// invalidError is a refused request: it matches ErrInvalid and is
// classified as a usage mistake, without printing ErrInvalid's text.
type invalidError struct{ err error }

func (e *invalidError) Error() string             { return e.err.Error() }
func (e *invalidError) Unwrap() error             { return e.err }
func (e *invalidError) Is(target error) bool      { return target == ErrInvalid }
func (e *invalidError) FailureKind() failure.Kind { return failure.Usage }

func invalidf(format string, args ...any) error {
	return &invalidError{err: fmt.Errorf(format, args...)}
}

// incomplete wraps the cause of a failed restore with what it means for
// the directory.
func incomplete(err error) error {
	return &marked{err: fmt.Errorf("%w; restore incomplete: the directory is not usable; run the restore again (with --delta to reuse what is there)", err),
		mark: ErrIncomplete}
}

// minJobs is the least parallelism a restore runs with.
const minJobs = 2

// Validate checks the options that need no repository: the data
// directory, the parallelism, the tablespace map's syntax, the recovery
// target, and that an existing postgresql.conf includes walferry.conf or
// can be given the line (it only reads files). Every error matches
// ErrInvalid; a postgresql.conf that cannot include walferry.conf also
// matches pgconf.ErrNotIncluded. Run calls it first.
func (o *Options) Validate() error {
	if o.DataDir == "" {
		return invalidf("which data directory? pass --pgdata DIR (or set PGDATA)")
	}
	abs, err := filepath.Abs(o.DataDir)
	if err != nil {
		return invalidf("--pgdata %s: %v", o.DataDir, err)
	}
	o.DataDir = abs
	if o.Backup == "" {
		return invalidf("which backup? give its id (see walferry backup-list) or LATEST")
	}
	if o.Jobs < 0 {
		return invalidf("--jobs %d: give a positive number, or 0 for one per CPU", o.Jobs)
	}
	if _, err := parseTablespaceMap(o.TablespaceMap); err != nil {
		return err
	}
	if _, err := o.Target.settings(); err != nil {
		return err
	}
	for _, k := range o.AlterSystemReset {
		if !slices.Contains(recoveryKeys, strings.ToLower(k)) {
			return invalidf("--alter-system-reset %s: only the recovery settings a restore writes can be reset (%s)", k, strings.Join(recoveryKeys, ", "))
		}
	}
	return o.checkConfig()
}

// conf returns the configuration files of the restored cluster; after
// Validate.
func (o *Options) conf() pgconf.Files {
	return pgconf.Files{DataDir: o.DataDir, ConfigFile: o.ConfigFile}
}

// checkConfig makes ConfigFile absolute and refuses, before anything is
// fetched, a postgresql.conf that exists and can neither be given the
// include line nor has it. One the backup will bring is checked with
// the manifest (restorer.check).
func (o *Options) checkConfig() error {
	if o.ConfigFile != "" {
		abs, err := filepath.Abs(o.ConfigFile)
		if err != nil {
			return invalidf("--config-file %s: %v", o.ConfigFile, err)
		}
		o.ConfigFile = abs
		if abs == filepath.Join(o.DataDir, pgconf.ConfigName) {
			o.ConfigFile = "" // the data directory's own
		}
	}
	err := o.conf().CheckInclude()
	var ie *pgconf.IncludeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ie) && ie.Missing && o.configInDataDir() != "":
		return nil // the backup brings it, or restorer.check refuses
	case errors.As(err, &ie) && ie.Missing:
		return invalidf("--config-file %s does not exist: give the postgresql.conf the restored server reads (its config_file); walferry makes it include %s with this line: %s",
			o.ConfigFile, pgconf.FileName, ie.Line)
	case errors.As(err, &ie):
		return &invalidError{err: err}
	}
	return err
}

// configInDataDir returns the postgresql.conf's path relative to the data
// directory, in the manifest's form, or "" when it is outside.
func (o *Options) configInDataDir() string {
	rel, err := filepath.Rel(o.DataDir, o.conf().ConfigPath())
	if err != nil || !filepath.IsLocal(rel) {
		return ""
	}
	return filepath.ToSlash(rel)
}

func (o *Options) jobs() int {
	n := o.Jobs
	if n == 0 {
		n = runtime.NumCPU()
	}
	return max(n, minJobs)
}

// Run restores the backup o.Backup names from r into o.DataDir and writes
// the recovery settings. A manifest that breaks the format's rules
// (backup.Manifest.Check) is refused before anything is written, with a
// *backup.ManifestError. On failure after writing started, the error
// matches ErrIncomplete and the directory cannot start a server; a
// corrupt object or a restored file that does not match its checksums
// fails with an error matching codec.ErrCorrupt that names the object or
// the file.
func Run(ctx context.Context, r *repo.Repo, o Options) (Result, error) {
	start := time.Now()
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RestoreCommand.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return Result{}, fmt.Errorf("find the walferry binary for restore_command: %w", err)
		}
		o.RestoreCommand.Executable = exe
	}
	m, err := selectBackup(ctx, r, o.Backup, o.Target)
	if err != nil {
		return Result{}, err
	}
	if err := checkTimeReachable(ctx, r, o); err != nil {
		return Result{}, err
	}
	p, err := newPlan(m, o)
	if err != nil {
		return Result{}, err
	}
	rs := &restorer{r: r, m: m, o: o, p: p, jobs: o.jobs(), log: o.Log.With("backup", m.ID)}
	if err := rs.check(); err != nil {
		return Result{}, err
	}
	rs.log.Info("restore started", "data_dir", o.DataDir, "delta", o.Delta, "files", len(m.Files), "jobs", rs.jobs)
	if err := rs.run(ctx); err != nil {
		rs.abandon()
		return rs.result(start), incomplete(err)
	}
	res := rs.result(start)
	res.Warnings = append(res.Warnings, unownedWarnings(ctx, r, o.Log)...)
	rs.log.Info("restore done", "files", res.Files, "files_fetched", res.FilesFetched, "files_kept", res.FilesKept,
		"bytes", res.BytesFetched, "objects", res.ObjectsRead, "seconds", float64(res.Duration))
	return res, nil
}

// unownedWarnings names the timelines archived in r that its lineage
// record does not own (backup.UnownedTimelines), each with its fix, and
// logs them: recovery to the latest timeline would follow them. Failing
// to look is logged, not fatal: the restore itself is done.
func unownedWarnings(ctx context.Context, r *repo.Repo, log *slog.Logger) []string {
	unowned, err := backup.UnownedTimelines(ctx, r)
	if err != nil {
		log.Warn("cannot check the repository's timelines against its lineage record", "err", err)
		return nil
	}
	var out []string
	for _, u := range unowned {
		log.Warn("a timeline in the repository is not the lineage record's", "timeline", uint32(u.Timeline), "problem", u.Message)
		out = append(out, u.Message)
	}
	return out
}

// selectBackup reads the manifest name selects. With LATEST and a time or
// LSN target it takes the newest backup that ends before the target (a
// backup can only reach targets after its end); with an id it checks that.
func selectBackup(ctx context.Context, r *repo.Repo, name string, t Target) (*backup.Manifest, error) {
	if !strings.EqualFold(name, backup.Latest) || !t.comparable() {
		m, err := backup.Resolve(ctx, r, name)
		if err != nil {
			return nil, err
		}
		if err := t.reachableFrom(m); err != nil {
			return nil, err
		}
		return m, nil
	}
	ids, _, err := backup.IDs(ctx, r)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return backup.Resolve(ctx, r, name) // its "no backup yet" error
	}
	var oldest *backup.Manifest
	for i := len(ids) - 1; i >= 0; i-- {
		m, err := backup.ReadManifest(ctx, r, ids[i])
		if err != nil {
			return nil, err
		}
		if t.reachableFrom(m) == nil {
			return m, nil
		}
		oldest = m
	}
	return nil, fmt.Errorf("%w: %s has no backup that ends before the recovery target (%s); the oldest, %s, ends at %s (LSN %s): "+
		"recovery cannot stop before the end of the backup it starts from",
		backup.ErrNoBackup, r, t.describe(), oldest.ID, oldest.StopTime.UTC().Format(time.RFC3339), oldest.StopLSN)
}
