package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
)

// restorer is one restore in progress.
type restorer struct {
	r    *repo.Repo
	m    *backup.Manifest
	o    Options
	p    *plan
	jobs int
	log  *slog.Logger

	existed bool   // the data directory was there before
	owner   *owner // who gets the files (root runs only)
	started bool   // something was written

	includeAdded bool     // postgresql.conf was given the include line
	autoRemoved  []string // settings removed from postgresql.auto.conf
	warnings     []string // settings that override walferry.conf

	filesKept, filesFetched, filesRemoved, dirsRemoved int
	bytesFetched, bytesRead                            atomic.Int64
	objectsRead                                        atomic.Int64

	// syncs settles the files fetch completes, in the background.
	syncs *syncPool
}

// owner is the OS account restored files are given to.
type owner struct {
	uid, gid int
	name     string
}

// check refuses what must not be restored into, before anything is
// written: errors match ErrInvalid.
func (rs *restorer) check() error {
	dir := rs.o.DataDir
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("--pgdata %s: %w", dir, err)
	case !fi.IsDir():
		return invalidf("--pgdata %s is not a directory", dir)
	default:
		rs.existed = true
		if _, err := os.Lstat(filepath.Join(dir, postmasterPID)); err == nil {
			return invalidf("%s has a postmaster.pid: a server may be running on it; stop it first (pg_ctl -D %s stop -m fast), or remove the file if no server runs", dir, dir)
		}
		empty, err := isEmpty(dir, rs.o.Keep...)
		if err != nil {
			return err
		}
		if !empty && !rs.o.Delta {
			return invalidf("%s is not empty: restore into an empty or missing directory, or pass --delta to rebuild it in place (matching files are kept, the rest is fetched or removed)", dir)
		}
		if !empty && !looksLikeDataDir(dir) {
			return invalidf("refusing --delta on %s: it does not look like a PostgreSQL data directory (no PG_VERSION, global/ or base/), and a delta restore deletes what the backup does not have", dir)
		}
	}
	for _, t := range rs.p.spaces {
		fi, err := os.Stat(t.location)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("tablespace %s: %w", t.oid, err)
		}
		if !fi.IsDir() {
			return invalidf("tablespace %s (%s) goes to %s, which is not a directory: relocate it with --tablespace-map %s=DIR", t.oid, t.Name, t.location, t.oid)
		}
		if empty, err := isEmpty(t.location); err != nil {
			return err
		} else if !empty && !rs.o.Delta {
			return invalidf("tablespace %s (%s) goes to %s, which is not empty: empty it, relocate the tablespace with --tablespace-map %s=DIR, or pass --delta",
				t.oid, t.Name, t.location, t.oid)
		}
	}
	rs.owner, err = chooseOwner(fi, rs.existed, rs.m.Owner)
	if err != nil {
		return err
	}
	return rs.checkConfig()
}

// checkConfig refuses a restore whose postgresql.conf would be in the data
// directory but is not in the backup (the Debian layout keeps it in
// /etc/postgresql) while its location was not given: nothing would
// include walferry.conf.
func (rs *restorer) checkConfig() error {
	rel := rs.o.configInDataDir()
	if rel == "" || rs.p.byRel[rel] != nil {
		return nil
	}
	conf := rs.o.conf()
	conf.ConfigFile = ""
	var ie *pgconf.IncludeError
	if err := conf.CheckInclude(); !errors.As(err, &ie) || !ie.Missing {
		ie = &pgconf.IncludeError{Line: "include_if_exists = " + pgconf.Quote(conf.Path())}
	}
	if rs.o.ConfigFile != "" {
		return invalidf("--config-file %s is in the data directory, but backup %s has no %s: give the postgresql.conf the restored server reads; it must include walferry's settings with this line: %s",
			rs.o.ConfigFile, rs.m.ID, rel, ie.Line)
	}
	return invalidf("backup %s has no %s (its server keeps it elsewhere, as Debian's /etc/postgresql/15/main does), and --config-file was not given: "+
		"pass --config-file PATH (env WALFERRY_CONFIG_FILE), the postgresql.conf the restored server reads; "+
		"walferry appends this line to it when it lacks it and is writable: %s", rs.m.ID, rel, ie.Line)
}

// chooseOwner decides who owns the restored files when running as root:
// the owner of the existing data directory unless that is root, else the
// backup's owner when that user exists here, else nobody (files stay
// root's).
func chooseOwner(fi os.FileInfo, existed bool, name string) (*owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if existed {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
			o := &owner{uid: int(st.Uid), gid: int(st.Gid), name: strconv.Itoa(int(st.Uid))}
			if u, err := user.LookupId(o.name); err == nil {
				o.name = u.Username
			}
			return o, nil
		}
	}
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, nil // not on this machine: files stay root's
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %s has a non-numeric uid/gid %s/%s", name, u.Uid, u.Gid)
	}
	return &owner{uid: uid, gid: gid, name: name}, nil
}

// chown gives path (not following a final symlink) to the owner.
func (rs *restorer) chown(p string) error {
	if rs.owner == nil {
		return nil
	}
	if err := os.Lchown(p, rs.owner.uid, rs.owner.gid); err != nil {
		return fmt.Errorf("give %s to %s: %w", p, rs.owner.name, err)
	}
	return nil
}

// isEmpty reports whether dir holds nothing but the names in keep.
func isEmpty(dir string, keep ...string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(16)
		for _, n := range names {
			if !slices.Contains(keep, n) {
				return false, nil
			}
		}
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

func looksLikeDataDir(dir string) bool {
	for _, name := range []string{"PG_VERSION", "global", "base", filepath.FromSlash(controlTemp)} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// abs returns the local path of a data directory path.
func (rs *restorer) abs(rel string) string {
	return filepath.Join(rs.o.DataDir, filepath.FromSlash(rel))
}

// run does the restore; check has passed.
func (rs *restorer) run(ctx context.Context) error {
	rs.started = true
	if err := rs.makeRoot(); err != nil {
		return err
	}
	if rs.o.Delta {
		if err := rs.setControlAside(); err != nil {
			return err
		}
	}
	if err := rs.makeTablespaces(); err != nil {
		return err
	}
	if rs.o.Delta {
		if err := rs.prune(rs.o.DataDir, "."); err != nil {
			return err
		}
		rs.log.Info("removed what the backup does not have", "files", rs.filesRemoved, "dirs", rs.dirsRemoved)
	}
	if err := rs.makeDirs(); err != nil {
		return err
	}
	if rs.o.Delta {
		if err := rs.compare(ctx); err != nil {
			return err
		}
	}
	for _, step := range []struct {
		name string
		run  func(context.Context) error
	}{{"fetch", rs.fetch}, {"verify and sync", rs.verify}} {
		began := time.Now()
		if err := step.run(ctx); err != nil {
			return err
		}
		rs.log.Debug("restore step done", "step", step.name, "seconds", time.Since(began).Seconds())
	}
	return rs.finish()
}

// makeRoot creates the data directory (parents searchable by everyone,
// the directory itself 0700) or sets its mode.
func (rs *restorer) makeRoot() error {
	dir := rs.o.DataDir
	if !rs.existed {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(dir), err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("create the data directory: %w", err)
		}
	}
	if err := os.Chmod(dir, rs.p.dirMode(".")); err != nil {
		return err
	}
	return rs.chown(dir)
}

// setControlAside moves an existing pg_control to its temporary name
// before a delta restore changes anything, so the directory cannot be
// started until the restore completes; the old copy is compared like any
// other file.
func (rs *restorer) setControlAside() error {
	it := rs.p.byRel[controlFile]
	if it == nil {
		return nil
	}
	if _, err := os.Lstat(it.final); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.RemoveAll(it.path); err != nil {
		return err
	}
	if err := os.Rename(it.final, it.path); err != nil {
		return fmt.Errorf("set pg_control aside: %w", err)
	}
	return nil
}

// makeTablespaces creates each tablespace's directory and its
// pg_tblspc/<oid> link.
func (rs *restorer) makeTablespaces() error {
	if len(rs.p.spaces) == 0 {
		return nil
	}
	links := rs.abs(tblspcDir)
	if err := os.MkdirAll(links, 0o700); err != nil {
		return err
	}
	for _, t := range rs.p.spaces {
		if _, err := os.Stat(t.location); errors.Is(err, fs.ErrNotExist) {
			if err := os.MkdirAll(filepath.Dir(t.location), 0o755); err != nil {
				return fmt.Errorf("tablespace %s: %w", t.oid, err)
			}
			if err := os.Mkdir(t.location, 0o700); err != nil {
				return fmt.Errorf("tablespace %s: %w", t.oid, err)
			}
		}
		if err := os.Chmod(t.location, rs.p.dirMode(tblspcDir+"/"+t.oid)); err != nil {
			return err
		}
		if err := rs.chown(t.location); err != nil {
			return err
		}
		link := filepath.Join(links, t.oid)
		if target, err := os.Readlink(link); err == nil && filepath.Clean(target) == t.location {
			continue
		}
		if err := os.RemoveAll(link); err != nil {
			return err
		}
		if err := os.Symlink(t.location, link); err != nil {
			return fmt.Errorf("tablespace %s: %w", t.oid, err)
		}
		if err := rs.chown(link); err != nil {
			return err
		}
		rs.log.Info("tablespace", "oid", t.oid, "name", t.Name, "location", t.location, "relocated", t.remapped)
	}
	return nil
}

// prune removes, below dir (data directory path rel), everything the
// backup does not have, and entries whose type is wrong (a directory
// where a file belongs, a symlink where a directory belongs). Only
// pg_wal may stay a symlink to a directory. At the top of a tablespace
// only the directories the backup has are looked into: others belong to
// other PostgreSQL versions.
func (rs *restorer) prune(dir, rel string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	_, tsTop := rs.p.links[rel]
	for _, e := range entries {
		r := path.Join(rel, e.Name())
		abs := filepath.Join(dir, e.Name())
		isLink := e.Type()&fs.ModeSymlink != 0
		switch {
		case r == controlTemp, r == "lost+found": // lost+found: the data directory is a mount point
			continue
		case rel == "" && slices.Contains(rs.o.Keep, e.Name()):
			continue
		case rs.p.links[r] != nil:
			if err := rs.prune(abs, r); err != nil { // the link made by makeTablespaces
				return err
			}
			continue
		case rs.p.byRel[r] != nil:
			if e.Type().IsRegular() {
				continue
			}
		default:
			if _, ok := rs.p.dirs[r]; ok {
				if e.IsDir() || isLink && r == "pg_wal" && isDir(abs) {
					if err := rs.prune(abs, r); err != nil {
						return err
					}
					continue
				}
			} else if tsTop {
				rs.log.Info("left alone in a tablespace directory", "path", abs)
				continue
			}
		}
		if err := rs.remove(abs); err != nil {
			return err
		}
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// remove deletes p (never following symlinks) and counts what went.
func (rs *restorer) remove(p string) error {
	err := filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rs.dirsRemoved++
		} else {
			rs.filesRemoved++
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return nil
}

// makeDirs creates the backup's directories with their modes, parents
// first.
func (rs *restorer) makeDirs() error {
	for _, rel := range rs.p.sortedDirs() {
		if rs.p.links[rel] != nil {
			continue
		}
		abs := rs.abs(rel)
		fi, err := os.Lstat(abs)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(abs, 0o700); err != nil {
				return fmt.Errorf("create %s: %w", abs, err)
			}
		case err != nil:
			return err
		case fi.IsDir(), fi.Mode()&fs.ModeSymlink != 0 && rel == "pg_wal" && isDir(abs):
		default:
			if err := rs.remove(abs); err != nil {
				return err
			}
			if err := os.Mkdir(abs, 0o700); err != nil {
				return fmt.Errorf("create %s: %w", abs, err)
			}
		}
		if err := os.Chmod(abs, rs.p.dirMode(rel)); err != nil {
			return err
		}
		if err := rs.chown(abs); err != nil {
			return err
		}
	}
	return nil
}

// finish writes what makes the directory a startable backup, pg_control
// and backup_label last.
func (rs *restorer) finish() error {
	if rs.p.mapFile != "" {
		if err := rs.writeFile(tablespaceMap, []byte(rs.p.mapFile)); err != nil {
			return err
		}
	}
	if err := rs.writeSettings(); err != nil {
		return err
	}
	if err := rs.writeFile(rs.signal(), nil); err != nil {
		return err
	}
	if it := rs.p.byRel[controlFile]; it != nil {
		if err := os.Rename(it.path, it.final); err != nil {
			return fmt.Errorf("put pg_control in place: %w", err)
		}
	}
	if err := rs.syncDirs(); err != nil {
		return err
	}
	return rs.writeFile(backupLabel, []byte(rs.m.BackupLabel))
}

func (rs *restorer) signal() string {
	if rs.o.Standby {
		return standbySig
	}
	return recoverySig
}

// writeSettings writes the recovery settings into walferry.conf and makes
// postgresql.conf include it. From postgresql.auto.conf it removes only an
// earlier walferry's block and the AlterSystemReset settings; a value
// there that overrides walferry.conf is a warning, or, for
// restore_command, a refusal: recovery would fetch WAL with another
// command.
func (rs *restorer) writeSettings() error {
	conf := rs.o.conf()
	conf.Origin = fmt.Sprintf("walferry restore of backup %s at %s", rs.m.ID, rs.o.Now().UTC().Format("2006-01-02 15:04:05Z07:00"))
	settings := rs.o.recoverySettings()
	legacy, err := conf.RemoveLegacy()
	if err != nil {
		return err
	}
	if len(legacy) > 0 {
		rs.log.Info("removed an earlier walferry's recovery settings from postgresql.auto.conf", "settings", len(legacy))
	}
	reset, err := conf.ResetAuto(rs.o.AlterSystemReset...)
	if err != nil {
		return err
	}
	for _, s := range append(legacy, reset...) {
		rs.autoRemoved = append(rs.autoRemoved, s.String())
	}
	overrides, err := conf.Overrides(settings, recoveryKeys...)
	if err != nil {
		return err
	}
	for _, ov := range overrides {
		if ov.Key == "restore_command" {
			fix := ov.Fix()
			if ov.File == conf.AutoConfPath() {
				fix = fmt.Sprintf("restore again with --delta --alter-system-reset restore_command, which removes the line as %s would and keeps the restored files, "+
					"or reset it on the server backup %s was taken from", ov.Fix(), rs.m.ID)
			}
			return fmt.Errorf("%s line %d sets %s, read after %s: recovery would fetch WAL with it instead of walferry's restore_command; %s",
				ov.File, ov.Line, ov.Setting, pgconf.FileName, fix)
		}
		w := ov.String()
		if ov.File == conf.AutoConfPath() {
			w += " (before the server starts: restore again with --delta --alter-system-reset " + ov.Key + ")"
		}
		rs.warnings = append(rs.warnings, w)
		rs.log.Warn("a setting overrides walferry.conf", "file", ov.File, "line", ov.Line, "key", ov.Key, "fix", ov.Fix())
	}
	if err := conf.Write(settings); err != nil {
		return err
	}
	rs.includeAdded, err = conf.EnsureInclude()
	return err
}

// writeFile writes a file of the data directory atomically (temporary
// file, fsync, rename, directory fsync), mode 0600, owned like the rest.
func (rs *restorer) writeFile(rel string, data []byte) error {
	uid, gid := -1, -1
	if rs.owner != nil {
		uid, gid = rs.owner.uid, rs.owner.gid
	}
	if err := atomicfile.WriteOwned(rs.abs(rel), data, 0o600, uid, gid); err != nil {
		return fmt.Errorf("write %s: %w", rs.abs(rel), err)
	}
	return nil
}

// syncDirs makes every directory entry the restore created durable.
func (rs *restorer) syncDirs() error {
	dirs := []string{rs.o.DataDir}
	for rel := range rs.p.dirs {
		dirs = append(dirs, rs.abs(rel))
	}
	for _, t := range rs.p.spaces {
		dirs = append(dirs, t.location, filepath.Dir(t.location))
	}
	if !rs.existed {
		dirs = append(dirs, filepath.Dir(rs.o.DataDir))
	}
	for _, d := range dirs {
		if err := atomicfile.Sync(d); err != nil {
			return err
		}
	}
	return nil
}

// abandon leaves a failed restore's directory unstartable: no
// backup_label, no signal files, pg_control under its temporary name.
func (rs *restorer) abandon() {
	if !rs.started {
		return
	}
	for _, rel := range []string{backupLabel, tablespaceMap, recoverySig, standbySig} {
		// Looked for first: on a read-only filesystem removing a file
		// that is not there fails with EROFS, not ENOENT, and the warning
		// would name files the restore never wrote.
		p := rs.abs(rel)
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			rs.log.Warn("could not remove after a failed restore", "path", p, "err", err)
		}
	}
	final, temp := rs.abs(controlFile), rs.abs(controlTemp)
	if _, err := os.Lstat(final); err == nil {
		if err := os.Rename(final, temp); err != nil {
			rs.log.Warn("could not set pg_control aside after a failed restore", "path", final, "err", err)
		}
	}
}

// result reports the counters.
func (rs *restorer) result(start time.Time) Result {
	res := Result{
		Backup: rs.m.ID, DataDir: rs.o.DataDir, Delta: rs.o.Delta, Standby: rs.o.Standby,
		Files: len(rs.p.items), FilesKept: rs.filesKept, FilesFetched: rs.filesFetched,
		FilesRemoved: rs.filesRemoved, DirsRemoved: rs.dirsRemoved,
		BytesFetched: rs.bytesFetched.Load(), BytesRead: rs.bytesRead.Load(), ObjectsRead: int(rs.objectsRead.Load()),
		Signal: rs.signal(), RecoveryTarget: rs.o.Target.describe(),
		SettingsFile: rs.o.conf().Path(), ConfigFile: rs.o.conf().ConfigPath(), IncludeAdded: rs.includeAdded,
		AutoConfRemoved: rs.autoRemoved, Warnings: rs.warnings,
		Duration: backup.Seconds(time.Since(start).Seconds()),
	}
	for _, it := range rs.p.items {
		res.Bytes += it.f.Size
	}
	if len(rs.p.spaces) > 0 {
		res.Tablespaces = map[string]string{}
		for _, t := range rs.p.spaces {
			res.Tablespaces[t.oid] = t.location
		}
	}
	if rs.owner != nil {
		res.Owner = rs.owner.name
	}
	return res
}
