package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/walferry/walferry/internal/atomicfile"
)

// tempSuffix marks a file DirSink is writing; it is renamed to its own
// name once complete.
const tempSuffix = ".walferry-tmp"

// DirSink writes a base backup into a data directory, as pg_basebackup's
// plain format does: PostgreSQL started on it recovers from the backup's
// start to its end (from the WAL the backup included,
// BaseBackupOptions.WAL, or through restore_command) and then runs.
//
// Its contract:
//   - The data directory and every tablespace directory must be missing
//     or empty; missing ones are created (0700), with their parents, and
//     an existing one keeps its mode (PostgreSQL wants 0700 or 0750).
//   - Directories and files get the backup's permission bits, files their
//     modification time; everything is owned by the calling process's user
//     (run it as the server's OS user).
//   - Tablespaces go where DirOptions.Tablespaces maps their server
//     location (else to that same location), linked from
//     pg_tblspc/<oid>. tablespace_map is the server's, unless a
//     tablespace moved: then it names the new places (PostgreSQL remakes
//     the links from it at start), and differs from the server's
//     backup_manifest, which pg_verifybackup reports.
//   - Each file is written under a temporary name beside its own
//     (<name>.walferry-tmp) and renamed once complete: a failure never
//     leaves a file partly written under its own name.
//   - End makes every file and directory durable (fsync), then writes
//     tablespace_map and backup_label (atomicfile.WriteFile, Durable), and
//     only then puts global/pg_control in place. Until End returns, the
//     directory lacks global/pg_control, so PostgreSQL refuses to start on
//     it: an interrupted copy is never mistaken for a cluster, even after
//     a crash.
//   - Nothing is removed on failure: the caller calls Remove, which
//     deletes what the sink wrote (and the directories it created).
type DirSink struct {
	dir         string
	tablespaces map[string]string // server location -> directory here
	created     []string          // top directories this sink made, for Remove
	used        []string          // pre-existing empty directories it filled
	spc         map[string]string // tablespace OID -> directory here
	spcOrder    []string          // OIDs in Start's order
	moved       bool              // a tablespace is not where the server has it
	synced      map[string]bool   // directories whose entries changed
	files       []string          // written files, to fsync at End
	control     string            // global/pg_control's temporary file
}

var _ ManifestSink = (*DirSink)(nil)

// DirOptions configure a DirSink.
type DirOptions struct {
	// Tablespaces maps a tablespace's location on the server to the
	// directory it goes to here (pg_basebackup's -T OLD=NEW). Unmapped
	// tablespaces keep their location.
	Tablespaces map[string]string
}

// NewDirSink returns a sink writing into dir, which must be missing or
// empty; it creates it (0700).
func NewDirSink(dir string, o DirOptions) (*DirSink, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	s := &DirSink{dir: abs, tablespaces: o.Tablespaces, spc: map[string]string{}, synced: map[string]bool{}}
	if err := s.claim(abs); err != nil {
		return nil, err
	}
	return s, nil
}

// claim makes dir, or checks that it is an empty directory.
func (s *DirSink) claim(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		top := dir
		for parent := filepath.Dir(top); parent != top; parent = filepath.Dir(top) {
			if _, err := os.Lstat(parent); err == nil {
				break
			}
			top = parent
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		s.created = append(s.created, top)
		s.synced[filepath.Dir(top)] = true
		for d := dir; d != filepath.Dir(top); d = filepath.Dir(d) {
			s.synced[d] = true
		}
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("%s is not empty (%s, ...): a base backup goes into a missing or empty directory: %w", dir, entries[0].Name(), fs.ErrExist)
	}
	s.used = append(s.used, dir)
	return nil
}

// Begin creates the tablespace directories and their links.
func (s *DirSink) Begin(ctx context.Context, st Start) error {
	if len(st.Tablespaces) == 0 {
		return nil
	}
	links := filepath.Join(s.dir, "pg_tblspc")
	if err := os.Mkdir(links, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", links, err)
	}
	s.synced[s.dir], s.synced[links] = true, true
	for _, ts := range st.Tablespaces {
		loc := ts.Location
		if to, ok := s.tablespaces[loc]; ok {
			loc = to
		}
		if !filepath.IsAbs(loc) {
			return fmt.Errorf("tablespace %d goes to %q: want an absolute directory", ts.OID, loc)
		}
		if err := s.claim(loc); err != nil {
			return fmt.Errorf("tablespace %d: %w", ts.OID, err)
		}
		oid := strconv.FormatUint(uint64(ts.OID), 10)
		if err := os.Symlink(loc, filepath.Join(links, oid)); err != nil {
			return fmt.Errorf("link tablespace %d: %w", ts.OID, err)
		}
		s.spc[oid] = loc
		s.moved = s.moved || loc != ts.Location
		s.spcOrder = append(s.spcOrder, oid)
		s.synced[loc] = true
	}
	return nil
}

// path returns where a member goes: a tablespace's members into its
// directory, the others into the data directory.
func (s *DirSink) path(name string) (string, error) {
	if rest, ok := strings.CutPrefix(name, "pg_tblspc/"); ok {
		oid, sub, _ := strings.Cut(rest, "/")
		if loc, ok := s.spc[oid]; ok && sub != "" {
			return filepath.Join(loc, filepath.FromSlash(sub)), nil
		}
	}
	if !fs.ValidPath(name) {
		return "", fmt.Errorf("member %q: not a path inside the data directory", name)
	}
	return filepath.Join(s.dir, filepath.FromSlash(name)), nil
}

// Dir creates a directory (or sets the mode of one that exists).
func (s *DirSink) Dir(ctx context.Context, e Entry) error {
	p, err := s.path(e.Name)
	if err != nil {
		return err
	}
	if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if err := os.Chmod(p, e.Mode.Perm()); err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	s.synced[filepath.Dir(p)], s.synced[p] = true, true
	return nil
}

// Symlink creates a link; pg_tblspc's links are Begin's.
func (s *DirSink) Symlink(ctx context.Context, e Entry) error {
	if oid, ok := strings.CutPrefix(e.Name, "pg_tblspc/"); ok && s.spc[oid] != "" {
		return nil
	}
	p, err := s.path(e.Name)
	if err != nil {
		return err
	}
	if err := os.Symlink(e.Target, p); err != nil {
		return fmt.Errorf("link %s: %w", p, err)
	}
	s.synced[filepath.Dir(p)] = true
	return nil
}

// File writes a file under a temporary name and renames it into place;
// global/pg_control waits under its temporary name for End.
func (s *DirSink) File(ctx context.Context, e Entry, r io.Reader) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.path(e.Name)
	if err != nil {
		return err
	}
	tmp := p + tempSuffix
	if err := writeFile(tmp, e, r); err != nil {
		return err
	}
	s.files = append(s.files, tmp)
	if e.Name == "global/pg_control" {
		s.control = tmp
		return nil
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	s.files[len(s.files)-1] = p
	s.synced[filepath.Dir(p)] = true
	return nil
}

// Manifest writes backup_manifest like any file.
func (s *DirSink) Manifest(ctx context.Context, r io.Reader) error {
	return s.File(ctx, Entry{Name: "backup_manifest", Mode: 0o600, Size: -1}, r)
}

// writeFile writes r to a new file p with e's mode and time; a size
// other than e.Size (unless negative) is an error. On error p is removed.
func writeFile(p string, e Entry, r io.Reader) (err error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write %s: %w", p, cerr)
		}
		if err != nil {
			os.Remove(p)
		}
	}()
	n, err := io.Copy(f, r)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if e.Size >= 0 && n != e.Size {
		return fmt.Errorf("write %s: %d of %d bytes", p, n, e.Size)
	}
	if err := f.Chmod(e.Mode.Perm()); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if !e.ModTime.IsZero() {
		if err := os.Chtimes(p, e.ModTime, e.ModTime); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// End makes the copy durable and startable: files and directories
// synced, tablespace_map and backup_label written, global/pg_control put
// in place last.
func (s *DirSink) End(ctx context.Context, st Stop) error {
	if s.control == "" {
		return fmt.Errorf("%s: the backup had no global/pg_control", s.dir)
	}
	for _, p := range s.files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := atomicfile.Sync(p); err != nil {
			return err
		}
	}
	if err := s.syncDirs(); err != nil {
		return err
	}
	spcmap := st.TablespaceMap
	if s.moved {
		var b strings.Builder
		for _, oid := range s.spcOrder {
			b.WriteString(oid + " " + escapeMapPath(s.spc[oid]) + "\n")
		}
		spcmap = b.String()
	}
	for _, f := range []struct{ name, content string }{{"tablespace_map", spcmap}, {"backup_label", st.BackupLabel}} {
		if f.content != "" {
			if err := atomicfile.WriteFile(filepath.Join(s.dir, f.name), strings.NewReader(f.content), 0o600, atomicfile.Durable); err != nil {
				return err
			}
		}
	}
	if err := atomicfile.Sync(s.dir); err != nil {
		return err
	}
	control := strings.TrimSuffix(s.control, tempSuffix)
	if err := os.Rename(s.control, control); err != nil {
		return fmt.Errorf("write %s: %w", control, err)
	}
	s.control = ""
	return atomicfile.Sync(filepath.Dir(control))
}

// syncDirs fsyncs every directory whose entries changed.
func (s *DirSink) syncDirs() error {
	for d := range s.synced {
		if err := atomicfile.Sync(d); err != nil {
			return err
		}
	}
	return nil
}

// escapeMapPath escapes a location for tablespace_map as PostgreSQL does
// (a backslash before newline, carriage return and backslash).
func escapeMapPath(p string) string {
	var b strings.Builder
	for _, c := range p {
		if c == '\n' || c == '\r' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Remove deletes what the sink wrote: the directories it created, and the
// contents of the empty ones it was given. For a failed copy.
func (s *DirSink) Remove() error {
	var errs []error
	for _, d := range s.created {
		errs = append(errs, os.RemoveAll(d))
	}
	for _, d := range s.used {
		entries, err := os.ReadDir(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range entries {
			errs = append(errs, os.RemoveAll(filepath.Join(d, e.Name())))
		}
	}
	return errors.Join(errs...)
}
