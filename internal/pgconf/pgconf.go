// Package pgconf manages the PostgreSQL configuration walferry owns: one
// include file, walferry.conf, in the data directory, holding the
// settings walferry writes (restore_command and recovery targets for a
// restore; primary_conninfo, primary_slot_name, recovery_target_timeline
// for a standby), and the line of postgresql.conf that includes it.
//
// PostgreSQL reads postgresql.conf, and an included file where the
// include line stands, then postgresql.auto.conf (ALTER SYSTEM) last.
// Appended at the end of postgresql.conf, the include makes walferry's
// settings win over postgresql.conf; postgresql.auto.conf still wins over
// them, so a user's ALTER SYSTEM value for one of walferry's settings is
// reported (Overrides), never silently lost or silently removed.
// postgresql.auto.conf is the user's: pgconf only removes from it what
// earlier walferry versions wrote there (RemoveLegacy) and, when asked,
// what ALTER SYSTEM RESET would remove (ResetAuto).
//
// Every write is atomic and durable (internal/atomicfile: temporary file,
// fsync, rename, directory fsync). postgresql.conf and
// postgresql.auto.conf keep their owner and mode; walferry.conf is mode
// 0600, owned like postgresql.auto.conf. Set, Remove, EnsureInclude,
// RemoveLegacy and ResetAuto write nothing when nothing changes.
package pgconf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/walferry/walferry/internal/atomicfile"
)

// File names in the data directory.
const (
	// FileName is walferry's include file.
	FileName = "walferry.conf"
	// ConfigName is the main configuration file's usual name.
	ConfigName = "postgresql.conf"
	// AutoConfName is ALTER SYSTEM's file, read after every other.
	AutoConfName = "postgresql.auto.conf"
)

// Setting is one configuration parameter. Key is a parameter name (lower
// case when read from a file); Value is unquoted.
type Setting struct{ Key, Value string }

// String renders the setting as a configuration file line.
func (s Setting) String() string { return s.Key + " = " + Quote(s.Value) }

// Files locates one cluster's configuration files.
type Files struct {
	// DataDir is the data directory, absolute: walferry.conf and
	// postgresql.auto.conf are there.
	DataDir string
	// ConfigFile is postgresql.conf, absolute (PostgreSQL's config_file,
	// e.g. /etc/postgresql/15/main/postgresql.conf on Debian); empty
	// means DataDir/postgresql.conf.
	ConfigFile string
	// Origin says who writes walferry.conf, for its header ("walferry
	// restore of backup 20261122T101500F at 2026-11-23 08:00:00Z").
	Origin string
}

// Path returns walferry.conf's path.
func (f Files) Path() string { return filepath.Join(f.DataDir, FileName) }

// ConfigPath returns postgresql.conf's path.
func (f Files) ConfigPath() string {
	if f.ConfigFile != "" {
		return f.ConfigFile
	}
	return filepath.Join(f.DataDir, ConfigName)
}

// AutoConfPath returns postgresql.auto.conf's path.
func (f Files) AutoConfPath() string { return filepath.Join(f.DataDir, AutoConfName) }

// IncludeLine is the line postgresql.conf needs: PostgreSQL resolves a
// relative include against the including file's directory, so the path
// is relative only when postgresql.conf is in the data directory.
func (f Files) IncludeLine() string {
	if filepath.Dir(f.ConfigPath()) == filepath.Clean(f.DataDir) {
		return "include_if_exists = " + Quote(FileName)
	}
	return f.absoluteInclude()
}

func (f Files) absoluteInclude() string { return "include_if_exists = " + Quote(f.Path()) }

// IncludeComment is the line EnsureInclude writes above the include line.
const IncludeComment = "# Added by walferry: the settings walferry writes (restore_command, recovery targets, primary_conninfo) are in " + FileName + "\n"

// header starts walferry.conf.
const header = `# walferry.conf: settings written by walferry, included from postgresql.conf.
# walferry owns this file and rewrites it whole: do not edit it, an edit is
# replaced the next time walferry writes its settings. Put your own settings
# in postgresql.conf; ALTER SYSTEM (postgresql.auto.conf, read after this
# file) overrides the ones here.
`

// Read returns walferry.conf's settings in file order, nil when there is
// no walferry.conf. A key set twice (a hand edit) keeps its last value at
// its first place.
func (f Files) Read() ([]Setting, error) {
	data, err := os.ReadFile(f.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pgconf: %w", err)
	}
	var out []Setting
	for _, line := range splitLines(string(data)) {
		if k, v, ok := parseLine(line); ok {
			out = merge(out, Setting{k, v})
		}
	}
	return out, nil
}

// merge sets s in list: in place when its key is there, else at the end.
func merge(list []Setting, s Setting) []Setting {
	s.Key = strings.ToLower(s.Key)
	for i := range list {
		if list[i].Key == s.Key {
			list[i].Value = s.Value
			return list
		}
	}
	return append(list, s)
}

// Write replaces walferry.conf with settings (a key given twice keeps its
// last value), owned like postgresql.auto.conf (else like the data
// directory), mode 0600.
func (f Files) Write(settings []Setting) error {
	var list []Setting
	for _, s := range settings {
		if err := checkKey(s.Key); err != nil {
			return err
		}
		list = merge(list, s)
	}
	var b strings.Builder
	b.WriteString(header)
	if f.Origin != "" {
		b.WriteString("# Written by " + strings.ReplaceAll(f.Origin, "\n", " ") + ".\n")
	}
	for _, s := range list {
		b.WriteString(s.String() + "\n")
	}
	like, err := os.Stat(f.AutoConfPath())
	if errors.Is(err, fs.ErrNotExist) {
		like, err = os.Stat(f.DataDir)
	}
	if err != nil {
		return fmt.Errorf("pgconf: %w", err)
	}
	return replace(f.Path(), []byte(b.String()), 0o600, like)
}

// replace writes data to path atomically and durably, with mode perm and
// the owner of like.
func replace(path string, data []byte, perm os.FileMode, like fs.FileInfo) error {
	uid, gid := -1, -1
	if st, ok := like.Sys().(*syscall.Stat_t); ok {
		uid, gid = int(st.Uid), int(st.Gid)
	}
	if err := atomicfile.WriteOwned(path, data, perm, uid, gid); err != nil {
		return fmt.Errorf("pgconf: %w", err)
	}
	return nil
}

// Set sets the given settings in walferry.conf and keeps its others;
// changed is false (and nothing is written) when each already had its
// value.
func (f Files) Set(settings ...Setting) (changed bool, err error) {
	list, err := f.Read()
	if err != nil {
		return false, err
	}
	next := slices.Clone(list)
	for _, s := range settings {
		next = merge(next, s)
	}
	if slices.Equal(list, next) {
		return false, nil
	}
	return true, f.Write(next)
}

// Remove removes keys from walferry.conf and keeps its other settings;
// changed is false (and nothing is written) when none was there.
func (f Files) Remove(keys ...string) (changed bool, err error) {
	list, err := f.Read()
	if err != nil {
		return false, err
	}
	next := slices.DeleteFunc(slices.Clone(list), func(s Setting) bool { return hasKey(keys, s.Key) })
	if len(next) == len(list) {
		return false, nil
	}
	return true, f.Write(next)
}

func hasKey(keys []string, key string) bool {
	return slices.ContainsFunc(keys, func(k string) bool { return strings.EqualFold(k, key) })
}

// checkKey refuses what is not a parameter name: it would not be read
// back as written.
func checkKey(key string) error {
	if k, _, ok := parseLine(key + " = ''"); !ok || k != strings.ToLower(key) {
		return fmt.Errorf("pgconf: %q is not a configuration parameter name", key)
	}
	return nil
}

// ErrNotIncluded matches the errors of CheckInclude and EnsureInclude
// when postgresql.conf lacks the include line and walferry cannot add it.
var ErrNotIncluded = errors.New("postgresql.conf does not include walferry.conf")

// IncludeError says why postgresql.conf does not include walferry.conf
// and gives the exact line to add. It matches ErrNotIncluded.
type IncludeError struct {
	// ConfigFile is the postgresql.conf that lacks the line, or where it
	// was looked for.
	ConfigFile string
	// Missing is set when ConfigFile does not exist (Unlocated: it was
	// looked for in the data directory, its location not being given);
	// otherwise it is read-only for walferry, for the reason in Err.
	Missing, Unlocated bool
	// Line is the exact line to append to postgresql.conf.
	Line string
	Err  error
}

func (e *IncludeError) Error() string {
	switch {
	case e.Unlocated:
		return fmt.Sprintf("postgresql.conf is not in the data directory %s and its location was not given: "+
			"PostgreSQL must read walferry's settings, with this line at the end of postgresql.conf: %s", filepath.Dir(e.ConfigFile), e.Line)
	case e.Missing:
		return fmt.Sprintf("%s does not exist: PostgreSQL must read walferry's settings, with this line at the end of postgresql.conf: %s",
			e.ConfigFile, e.Line)
	}
	return fmt.Sprintf("%s is read-only (%v) and does not include %s: add this line at its end "+
		"(walferry's settings then win over the ones above it): %s", e.ConfigFile, e.Err, FileName, e.Line)
}

func (e *IncludeError) Unwrap() error        { return e.Err }
func (e *IncludeError) Is(target error) bool { return target == ErrNotIncluded }

// CheckInclude reports, without writing anything, whether EnsureInclude
// can succeed: nil when postgresql.conf includes walferry.conf or can be
// given the line, an *IncludeError when it is missing or read-only.
func (f Files) CheckInclude() error {
	_, err := f.include(false)
	return err
}

// EnsureInclude appends the include line (after a comment line) to
// postgresql.conf when it has none, atomically, keeping the file's owner
// and mode, and reports whether it did. A symlinked postgresql.conf is
// written through the link. When postgresql.conf is missing or read-only
// (a Kubernetes ConfigMap, a file without write permission, its
// directory not writable) nothing is written and the error, an
// *IncludeError, gives the line to add.
func (f Files) EnsureInclude() (added bool, err error) { return f.include(true) }

func (f Files) include(write bool) (bool, error) {
	p := f.ConfigPath()
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		if f.ConfigFile == "" { // postgresql.conf is elsewhere: an absolute include
			return false, &IncludeError{ConfigFile: p, Missing: true, Unlocated: true, Line: f.absoluteInclude()}
		}
		return false, &IncludeError{ConfigFile: p, Missing: true, Line: f.IncludeLine()}
	}
	if err != nil {
		return false, fmt.Errorf("pgconf: %w", err)
	}
	if f.included(string(data)) >= 0 {
		return false, nil
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return false, fmt.Errorf("pgconf: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return false, fmt.Errorf("pgconf: %w", err)
	}
	if err := writable(real, fi); err != nil {
		return false, &IncludeError{ConfigFile: p, Line: f.IncludeLine(), Err: err}
	}
	if !write {
		return false, nil
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	data = append(data, IncludeComment...)
	data = append(data, f.IncludeLine()+"\n"...)
	if err := replace(real, data, fi.Mode().Perm(), fi); err != nil {
		return false, err
	}
	return true, nil
}

// included returns the index of the last line of postgresql.conf's
// content that includes walferry.conf (include or include_if_exists), -1
// when none does.
func (f Files) included(content string) int {
	dir := filepath.Dir(f.ConfigPath())
	last := -1
	for i, line := range splitLines(content) {
		k, v, ok := parseLine(line)
		if !ok || k != "include" && k != "include_if_exists" || v == "" {
			continue
		}
		if !filepath.IsAbs(v) {
			v = filepath.Join(dir, v)
		}
		if samePath(v, f.Path()) {
			last = i
		}
	}
	return last
}

// samePath reports whether a and b name the same file, their directories
// compared after resolving symlinks.
func samePath(a, b string) bool {
	a, b = filepath.Clean(a), filepath.Clean(b)
	if a == b {
		return true
	}
	if filepath.Base(a) != filepath.Base(b) {
		return false
	}
	da, err1 := filepath.EvalSymlinks(filepath.Dir(a))
	db, err2 := filepath.EvalSymlinks(filepath.Dir(b))
	return err1 == nil && err2 == nil && da == db
}

// writable returns why walferry cannot replace the file at path: no write
// permission bit in its mode (whoever runs walferry, root included), no
// write access to it (a read-only mount) or to its directory (the rename).
func writable(path string, fi fs.FileInfo) error {
	if fi.Mode().Perm()&0o222 == 0 {
		return fmt.Errorf("mode %04o", fi.Mode().Perm())
	}
	if err := unix.Access(path, unix.W_OK); err != nil {
		return err
	}
	if err := unix.Access(filepath.Dir(path), unix.W_OK); err != nil {
		return fmt.Errorf("its directory %s: %w", filepath.Dir(path), err)
	}
	return nil
}
