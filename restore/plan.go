package restore

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/walferry/walferry/backup"
)

// Files of the data directory a restore treats specially.
const (
	controlFile = "global/pg_control"
	// controlTemp holds pg_control until every other file is verified:
	// without global/pg_control PostgreSQL refuses to start, so a
	// half-restored directory cannot be started by mistake.
	controlTemp   = "global/pg_control.walferry-incomplete"
	backupLabel   = "backup_label"
	tablespaceMap = "tablespace_map"
	autoConf      = "postgresql.auto.conf"
	recoverySig   = "recovery.signal"
	standbySig    = "standby.signal"
	postmasterPID = "postmaster.pid"
	tblspcDir     = "pg_tblspc"
)

// skipped are top-level files a restore never takes from a backup:
// backup-push excludes them, but a server must not start with a stale
// pid file, and the restore writes the label, the map and the signal
// itself.
var skipped = map[string]bool{
	postmasterPID: true, "postmaster.opts": true, backupLabel: true, tablespaceMap: true,
	recoverySig: true, standbySig: true,
}

// tablespace is a tablespace and where this restore puts it.
type tablespace struct {
	backup.Tablespace
	oid      string // decimal
	location string // absolute, after --tablespace-map
	remapped bool
}

// item is one file of the backup and its fate in this restore.
type item struct {
	f     *backup.File
	final string // absolute path once restored
	path  string // absolute path written (pg_control: controlTemp)
	// local describes what a delta restore found at path.
	localSize int64
	existed   bool // a regular file was there
	// bad[i] says unit i must come from the repository; nil means every
	// unit (a new file).
	bad []bool
	// streamed[i] hashes unit i as its bytes are written, when they come
	// in order; allocated by fetch.
	streamed []unitHash
	// pending counts the bytes fetch still has to write; the file is
	// settled (see restorer.settle) in the background, while other
	// objects are fetched, when it reaches zero, and synced is then set.
	pending atomic.Int64
	synced  atomic.Bool
	// settleErr is why a syncer could not settle the file; read once the
	// syncers are stopped.
	settleErr error
	// ready is closed once the file is prepared (created at its size);
	// fetch writes into it only then.
	ready chan struct{}
}

// units returns how many UnitSize units a file of size bytes has.
func units(size int64) int { return int((size + backup.UnitSize - 1) / backup.UnitSize) }

// unitSpan returns unit i's byte range in a file of size bytes.
func unitSpan(i int, size int64) (off, end int64) {
	off = int64(i) * backup.UnitSize
	return off, min(off+backup.UnitSize, size)
}

// fetched reports whether any byte of it comes from the repository.
func (it *item) fetched() bool {
	if !it.existed {
		return true
	}
	for _, b := range it.bad {
		if b {
			return true
		}
	}
	return false
}

// needs reports whether unit i must be written.
func (it *item) needs(i int) bool { return it.bad == nil || it.bad[i] }

// spans returns the byte ranges of the file to write, merged.
func (it *item) spans() [][2]int64 {
	n := units(it.f.Size)
	var out [][2]int64
	for i := 0; i < n; i++ {
		if !it.needs(i) {
			continue
		}
		off, end := unitSpan(i, it.f.Size)
		if len(out) > 0 && out[len(out)-1][1] == off {
			out[len(out)-1][1] = end
		} else {
			out = append(out, [2]int64{off, end})
		}
	}
	return out
}

// plan is a checked manifest mapped onto the target directory.
type plan struct {
	items []*item
	byRel map[string]*item
	// dirs are the directories the backup has (its Dirs and every parent
	// of a file), relative, with their modes (0 when unknown).
	dirs map[string]uint32
	// spaces by OID; links are their pg_tblspc/<oid> paths.
	spaces []*tablespace
	links  map[string]*tablespace
	// mapFile is the tablespace_map to write, rewritten for relocations.
	mapFile string
	// rootMode is the data directory's mode in the backup (0 when unknown).
	rootMode uint32
}

// newPlan maps m onto o.DataDir and resolves the tablespace map. m comes
// from backup.ReadManifest, which checked it (backup.Manifest.Check):
// paths are clean and inside the data directory, no file is listed twice
// or where a directory or a tablespace link is, extents tile their files,
// checksums cover them, tablespace locations are absolute, and there is
// a backup_label.
func newPlan(m *backup.Manifest, o Options) (*plan, error) {
	p := &plan{byRel: map[string]*item{}, dirs: map[string]uint32{}, links: map[string]*tablespace{}}
	if err := p.placeTablespaces(m, o); err != nil {
		return nil, err
	}
	addParents := func(rel string) {
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			if _, ok := p.dirs[d]; ok {
				break
			}
			p.dirs[d] = 0
		}
	}
	for _, d := range m.Dirs {
		if d.Path == "." {
			p.rootMode = d.Mode
			continue
		}
		p.dirs[d.Path] = d.Mode
		addParents(d.Path)
	}
	// pg_tblspc/<oid>/... goes through the tablespace's link; an <oid>
	// that is not a tablespace is an in-place tablespace (PostgreSQL 15's
	// allow_in_place_tablespaces), an ordinary directory.
	for i := range m.Files {
		f := &m.Files[i]
		rel := f.Path
		if skipped[rel] {
			o.Log.Warn("the backup holds a file a restore never takes; skipped", "file", rel)
			continue
		}
		it := &item{f: f, final: filepath.Join(o.DataDir, filepath.FromSlash(rel))}
		it.path = it.final
		if rel == controlFile {
			it.path = filepath.Join(o.DataDir, filepath.FromSlash(controlTemp))
		}
		p.items = append(p.items, it)
		p.byRel[rel] = it
		addParents(rel)
	}
	// PostgreSQL refuses to start without pg_wal; backups leave it empty.
	for _, d := range []string{"pg_wal", "pg_wal/archive_status"} {
		if _, ok := p.dirs[d]; !ok {
			p.dirs[d] = 0
		}
	}
	return p, nil
}

// placeTablespaces decides where each tablespace goes (its location, or
// where --tablespace-map relocates it) and rewrites the tablespace_map.
func (p *plan) placeTablespaces(m *backup.Manifest, o Options) error {
	remap, _ := parseTablespaceMap(o.TablespaceMap) // checked by Validate
	used := map[string]bool{}
	for _, ts := range m.Tablespaces {
		t := &tablespace{Tablespace: ts, oid: strconv.FormatUint(uint64(ts.OID), 10), location: ts.Location}
		for _, key := range []string{t.oid, ts.Name} {
			if dir, ok := remap[key]; ok && key != "" {
				t.location, t.remapped = dir, true
				used[key] = true
			}
		}
		t.location = filepath.Clean(t.location)
		if inside(o.DataDir, t.location) {
			return invalidf("tablespace %s (%s) would be restored to %s, inside the data directory %s: relocate it with --tablespace-map %s=DIR",
				t.oid, ts.Name, t.location, o.DataDir, t.oid)
		}
		for _, other := range p.spaces {
			if other.location == t.location || inside(other.location, t.location) || inside(t.location, other.location) {
				return invalidf("tablespaces %s and %s would both be restored to %s: relocate one with --tablespace-map OID=DIR", other.oid, t.oid, t.location)
			}
		}
		p.spaces = append(p.spaces, t)
		p.links[tblspcDir+"/"+t.oid] = t
	}
	for key := range remap {
		if !used[key] {
			var known []string
			for _, t := range p.spaces {
				known = append(known, t.oid+" ("+t.Name+")")
			}
			if len(known) == 0 {
				known = []string{"none"}
			}
			return invalidf("--tablespace-map %s: backup %s has no tablespace with that OID or name; its tablespaces: %s",
				key, m.ID, strings.Join(known, ", "))
		}
	}
	if m.TablespaceMap != "" {
		lines, err := parseTablespaceMapFile(m.TablespaceMap)
		if err != nil {
			return fmt.Errorf("backup %s: %w", m.ID, err)
		}
		for i := range lines {
			if t := p.links[tblspcDir+"/"+lines[i].oid]; t != nil {
				lines[i].path = t.location
			}
		}
		p.mapFile = formatTablespaceMap(lines)
	}
	return nil
}

// parseTablespaceMap parses --tablespace-map values: OID=DIR or NAME=DIR,
// DIR absolute. Errors match ErrInvalid.
func parseTablespaceMap(entries []string) (map[string]string, error) {
	out := map[string]string{}
	dirs := map[string]string{}
	for _, e := range entries {
		key, dir, ok := strings.Cut(e, "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" || dir == "" {
			return nil, invalidf("--tablespace-map %q: want OID=DIR or NAME=DIR, e.g. 16385=/srv/pg/ts1", e)
		}
		if !filepath.IsAbs(dir) {
			return nil, invalidf("--tablespace-map %q: %s is not an absolute path", e, dir)
		}
		dir = filepath.Clean(dir)
		if _, dup := out[key]; dup {
			return nil, invalidf("--tablespace-map %s is given twice", key)
		}
		if other, dup := dirs[dir]; dup {
			return nil, invalidf("--tablespace-map %s and %s both go to %s", other, key, dir)
		}
		out[key], dirs[dir] = dir, key
	}
	return out, nil
}

// inside reports whether p is dir or below it.
func inside(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// sortedDirs returns the plan's directories, parents first.
func (p *plan) sortedDirs() []string {
	out := make([]string, 0, len(p.dirs))
	for d := range p.dirs {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := strings.Count(out[i], "/"), strings.Count(out[j], "/")
		if di != dj {
			return di < dj
		}
		return out[i] < out[j]
	})
	return out
}

// dirMode returns the mode to give directory rel: the backup's, else
// 0700 (0750 when the data directory allows group access).
func (p *plan) dirMode(rel string) os.FileMode {
	def := os.FileMode(0o700)
	if p.rootMode&0o070 != 0 {
		def = 0o750
	}
	if rel == "." {
		return fileMode(p.rootMode, def)
	}
	return fileMode(p.dirs[rel], def)
}

// fileMode returns a manifest mode's permission bits, or def when unset.
func fileMode(mode uint32, def os.FileMode) os.FileMode {
	if perm := os.FileMode(mode) & os.ModePerm; perm != 0 {
		return perm
	}
	return def
}
