package backup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/walferry/walferry/internal/pg"
)

// What a base backup leaves out, as pg_basebackup does (basebackup.c's
// excludeDirContents and excludeFiles): directories whose contents are
// rebuilt or meaningless on another server are kept empty.
var excludeDirContents = map[string]bool{
	"pg_wal":       true, // WAL comes from the archive
	"pg_replslot":  true,
	"pg_dynshmem":  true,
	"pg_notify":    true,
	"pg_serial":    true,
	"pg_snapshots": true,
	"pg_stat_tmp":  true,
	"pg_subtrans":  true,
}

// excludeTopFiles are files of the data directory's top level never backed
// up: the running server's, an old exclusive backup's, and the signal
// files restore writes itself.
var excludeTopFiles = map[string]bool{
	"postmaster.pid":            true,
	"postmaster.opts":           true,
	"backup_label":              true,
	"backup_label.old":          true,
	"tablespace_map":            true,
	"tablespace_map.old":        true,
	"postgresql.auto.conf.tmp":  true,
	"current_logfiles.tmp":      true,
	"standby.signal":            true,
	"recovery.signal":           true,
	"walferry.restore.progress": true,
}

// relFileName matches relation files: <relfilenode>[_fork][.segment].
var relFileName = regexp.MustCompile(`^([0-9]+)(_(fsm|vm|init))?(\.([0-9]+))?$`)

// entry is a file found in the data directory.
type entry struct {
	rel   string // manifest path, "/"-separated
	abs   string // where to read it
	size  int64
	mode  fs.FileMode
	mtime int64
	// relation is set for relation data files (page-structured); firstBlock
	// is the block number of the file's first page within its relation.
	relation   bool
	firstBlock uint32
	// lsnStamped is set for the main and init forks, whose pages carry
	// the LSN of their last WAL-logged change; the free space map is not
	// WAL-logged and visibility map bits are cleared without stamping the
	// map's page, so their pages' LSNs say nothing.
	lsnStamped bool
}

// scan is the result of walking a data directory.
type scan struct {
	dirs        []Dir
	files       []entry
	tablespaces []Tablespace
}

// walkDataDir lists what a backup of dataDir contains. pgMajor selects the
// tablespace subdirectory (PG_<major>_<catversion>) that belongs to this
// server; other version directories in a tablespace are not ours.
func walkDataDir(dataDir string, pgMajor int) (*scan, error) {
	s := &scan{}
	if err := s.walk(dataDir, "", true); err != nil {
		return nil, err
	}
	tsDir := filepath.Join(dataDir, "pg_tblspc")
	links, err := os.ReadDir(tsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", tsDir, err)
	}
	versionPrefix := fmt.Sprintf("PG_%d_", pgMajor)
	for _, l := range links {
		oid, err := strconv.ParseUint(l.Name(), 10, 32)
		if err != nil {
			continue
		}
		linkPath := filepath.Join(tsDir, l.Name())
		target, err := os.Readlink(linkPath)
		if err != nil {
			// PostgreSQL 15 can keep in-place tablespaces as directories
			// (allow_in_place_tablespaces, a developer option); walk them
			// as ordinary directories.
			if err := s.walk(linkPath, "pg_tblspc/"+l.Name(), false); err != nil {
				return nil, err
			}
			continue
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(tsDir, target)
		}
		s.tablespaces = append(s.tablespaces, Tablespace{OID: uint32(oid), Location: target})
		entries, err := os.ReadDir(target)
		if err != nil {
			return nil, fmt.Errorf("tablespace %d: read %s: %w", oid, target, err)
		}
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), versionPrefix) {
				rel := "pg_tblspc/" + l.Name() + "/" + e.Name()
				if err := s.walk(filepath.Join(target, e.Name()), rel, false); err != nil {
					return nil, err
				}
			}
		}
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].rel < s.files[j].rel })
	return s, nil
}

// walk adds dir (manifest path rel) and everything below it.
func (s *scan) walk(dir, rel string, top bool) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	if rel != "" {
		s.dirs = append(s.dirs, Dir{Path: rel, Mode: uint32(info.Mode().Perm())})
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) && rel != "" {
		return nil // dropped while we walked (a database, a temp dir)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	unlogged := unloggedRelations(entries)
	for _, e := range entries {
		name := e.Name()
		childRel := name
		if rel != "" {
			childRel = rel + "/" + name
		}
		abs := filepath.Join(dir, name)
		if strings.HasPrefix(name, "pgsql_tmp") || strings.HasPrefix(name, "pg_internal.init") {
			continue
		}
		if top && excludeTopFiles[name] {
			continue
		}
		if top && name == "pg_tblspc" {
			// The links are recorded as tablespaces; their contents are
			// walked by walkDataDir.
			if st, err := os.Stat(abs); err == nil {
				s.dirs = append(s.dirs, Dir{Path: name, Mode: uint32(st.Mode().Perm())})
			}
			continue
		}
		st, err := os.Stat(abs) // follows symlinks (pg_wal may be one)
		if errors.Is(err, fs.ErrNotExist) {
			continue // vanished meanwhile
		}
		if err != nil {
			return fmt.Errorf("stat %s: %w", abs, err)
		}
		switch {
		case st.IsDir():
			if top && excludeDirContents[name] {
				s.dirs = append(s.dirs, Dir{Path: childRel, Mode: uint32(st.Mode().Perm())})
				continue
			}
			if err := s.walk(abs, childRel, false); err != nil {
				return err
			}
		case st.Mode().IsRegular():
			m := relFileName.FindStringSubmatch(name)
			if m != nil && unlogged[m[1]] && m[3] != "init" {
				continue // unlogged relations are reset from their init fork
			}
			en := entry{rel: childRel, abs: abs, size: st.Size(), mode: st.Mode().Perm(), mtime: st.ModTime().Unix()}
			if m != nil && inDatabaseDir(childRel) {
				en.relation = true
				en.lsnStamped = m[3] == "" || m[3] == "init"
				if m[5] != "" {
					seg, _ := strconv.ParseUint(m[5], 10, 32)
					en.firstBlock = uint32(seg) * pg.RelSegmentBlocks
				}
			}
			s.files = append(s.files, en)
		}
	}
	return nil
}

// unloggedRelations returns the relfilenodes of a directory that have an
// init fork: their other forks are not backed up.
func unloggedRelations(entries []os.DirEntry) map[string]bool {
	var out map[string]bool
	for _, e := range entries {
		if m := relFileName.FindStringSubmatch(e.Name()); m != nil && m[3] == "init" {
			if out == nil {
				out = map[string]bool{}
			}
			out[m[1]] = true
		}
	}
	return out
}

// inDatabaseDir reports whether a manifest path is in a directory that
// holds relation files: global/, base/<db>/ or pg_tblspc/<oid>/<ver>/<db>/.
func inDatabaseDir(rel string) bool {
	dir := path.Dir(rel)
	parts := strings.Split(dir, "/")
	switch {
	case dir == "global":
		return true
	case len(parts) == 2 && parts[0] == "base":
		return true
	case len(parts) == 4 && parts[0] == "pg_tblspc":
		return true
	}
	return false
}
