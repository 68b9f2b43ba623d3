package backup

import (
	"fmt"
	"math"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
)

// ManifestError is a manifest that breaks the rules of the manifest format
// (docs/repository-format.md): the repository is damaged, or something
// other than walferry wrote the manifest. It matches repo.ErrWrongCluster
// when the manifest is of another cluster than the repository.
type ManifestError struct {
	ID     string
	Issues []ManifestIssue // at least one
}

// ManifestIssue is one rule a manifest breaks.
type ManifestIssue struct {
	// File is the path of the file whose record breaks the rule, Object
	// the key of the object record that does; both are empty when the
	// rule is about the backup as a whole.
	File   string
	Object string
	Text   string

	file  int   // index in Files + 1; 0 when the issue is not a file's
	class error // repo.ErrWrongCluster, or nil
}

func (i ManifestIssue) String() string {
	if i.file == 0 {
		return i.Text
	}
	name := i.File
	if name == "" {
		name = fmt.Sprintf("#%d", i.file)
	}
	return "file " + name + ": " + i.Text
}

func (e *ManifestError) Error() string {
	if len(e.Issues) == 0 {
		return fmt.Sprintf("backup %s: the manifest is damaged", e.ID)
	}
	verdict := "the manifest is damaged"
	if e.Issues[0].class != nil {
		verdict = "the repository is damaged or mixed"
	}
	msg := fmt.Sprintf("backup %s: %s: %s", e.ID, e.Issues[0], verdict)
	if n := len(e.Issues) - 1; n > 0 {
		msg += fmt.Sprintf(" (and %d more problems: walferry verify %s lists them)", n, e.ID)
	}
	return msg
}

// Unwrap lets errors.Is find repo.ErrWrongCluster.
func (e *ManifestError) Unwrap() []error {
	var out []error
	for _, i := range e.Issues {
		if i.class != nil && !slices.Contains(out, i.class) {
			out = append(out, i.class)
		}
	}
	return out
}

// Check reports whether m obeys the rules of the manifest format in a
// repository with metadata meta; it returns nil, or a *ManifestError that
// lists every rule broken (at most one per file: the first). It is the one
// place these rules are written. ReadManifest refuses a manifest that
// breaks them, so every command that reads manifests (list, show, delete,
// restore, backup-push --incremental) can rely on them; verify reports
// each broken rule as a problem and checks the rest of the backup.
//
// The rules:
//   - the backup: format_version at least 1; a backup id whose suffix is
//     its type (F full, I incremental); a full has no parent, an
//     incremental names an older backup; a backup_label; the repository's
//     system identifier and PostgreSQL major version;
//   - its WAL: a timeline, a stop LSN after the start LSN, start_wal the
//     segment of the start LSN and stop_wal the one of the byte before the
//     stop LSN, both on the backup's timeline;
//   - paths: clean, relative, inside the data directory ("." only for the
//     data directory's own mode in dirs); a file listed once, never where a
//     directory is (a listed one, the parent of another path, pg_wal) nor
//     at a tablespace's link pg_tblspc/<oid>;
//   - a file's record: a size of 0 or more; one SHA-256 (64 lower-case hex
//     digits) per 8 MiB unit; no CRC-32Cs or one per unit; extents of
//     positive length that tile [0, size) in order, at offsets an object
//     can have, in data objects of this backup or (incrementals) of older
//     backups;
//   - object records: this backup's data objects, each listed once, with
//     sizes of 0 or more;
//   - tablespaces: listed once by OID, at absolute locations.
func (m *Manifest) Check(meta repo.Metadata) error {
	size, err := meta.SegmentSize()
	if err != nil {
		return err
	}
	c := &manifestCheck{m: m}
	c.identity(meta)
	c.wal(size)
	links := c.tablespaces()
	dirs := c.dirs()
	c.files(dirs, links)
	c.objects()
	if len(c.issues) == 0 {
		return nil
	}
	return &ManifestError{ID: m.ID, Issues: c.issues}
}

// manifestCheck collects the issues of one manifest.
type manifestCheck struct {
	m      *Manifest
	issues []ManifestIssue
}

func (c *manifestCheck) addf(format string, args ...any) {
	c.issues = append(c.issues, ManifestIssue{Text: fmt.Sprintf(format, args...)})
}

// identity checks the backup's id, type, parent and cluster.
func (c *manifestCheck) identity(meta repo.Metadata) {
	m := c.m
	if m.FormatVersion < 1 {
		c.addf("format_version %d; manifests start at 1", m.FormatVersion)
	}
	if !validID(m.ID) {
		c.addf("its id %q is not a backup id", m.ID)
	}
	switch m.Type {
	case Full:
		if m.Parent != "" {
			c.addf("it names parent %q, but a full backup has no parent", m.Parent)
		}
	case Incremental:
		switch {
		case m.Parent == "":
			c.addf("it is an incremental backup but has no parent")
		case !validID(m.Parent):
			c.addf("its parent %q is not a backup id", m.Parent)
		case m.Parent >= m.ID:
			c.addf("its parent %s is not older than it", m.Parent)
		}
	default:
		c.addf("type %q is neither %q nor %q", m.Type, Full, Incremental)
	}
	if validID(m.ID) && (m.Type == Full && m.ID[15] != 'F' || m.Type == Incremental && m.ID[15] != 'I') {
		c.addf("its id %s does not end in the letter of its type (%s)", m.ID, m.Type)
	}
	if strings.TrimSpace(m.BackupLabel) == "" {
		c.addf("it has no backup_label (without it PostgreSQL would start from the wrong checkpoint)")
	}
	if m.SystemID != meta.SystemID {
		c.issues = append(c.issues, ManifestIssue{class: repo.ErrWrongCluster,
			Text: fmt.Sprintf("it is of system identifier %d, but the repository belongs to system identifier %d", m.SystemID, meta.SystemID)})
	}
	if m.PGVersionNum/10000 != meta.PGMajor {
		version := PGVersion(m.PGVersionNum)
		if version == "" {
			version = fmt.Sprintf("version number %d", m.PGVersionNum)
		}
		c.issues = append(c.issues, ManifestIssue{class: repo.ErrWrongCluster,
			Text: fmt.Sprintf("it is of PostgreSQL %s, but the repository holds PostgreSQL %d", version, meta.PGMajor)})
	}
}

// wal checks the timeline, the LSNs and the WAL names derived from them.
func (c *manifestCheck) wal(size pg.WALSegmentSize) {
	m := c.m
	if m.Timeline < 1 {
		c.addf("it is on timeline %d", m.Timeline)
		return
	}
	if m.StopLSN <= m.StartLSN {
		c.addf("its stop LSN %s is not after its start LSN %s", m.StopLSN, m.StartLSN)
		return
	}
	if want := pg.SegmentNameOf(m.Timeline, m.StartLSN, size); m.StartWAL != want {
		c.addf("its start_wal %q is not %s, the segment of its start LSN %s on timeline %d", m.StartWAL, want, m.StartLSN, m.Timeline)
	}
	if want := pg.SegmentName(m.Timeline, size.SegNoBefore(m.StopLSN), size); m.StopWAL != want {
		c.addf("its stop_wal %q is not %s, the segment that ends before its stop LSN %s on timeline %d", m.StopWAL, want, m.StopLSN, m.Timeline)
	}
}

// tablespaces checks the tablespaces and returns their links' paths.
func (c *manifestCheck) tablespaces() map[string]uint32 {
	links := map[string]uint32{}
	for _, ts := range c.m.Tablespaces {
		link := fmt.Sprintf("pg_tblspc/%d", ts.OID)
		if _, dup := links[link]; dup {
			c.addf("tablespace %d is listed twice", ts.OID)
		}
		links[link] = ts.OID
		if !filepath.IsAbs(ts.Location) {
			c.addf("tablespace %d has location %q, not an absolute path", ts.OID, ts.Location)
		}
	}
	return links
}

// dirs checks the directories' paths and returns every path that must be a
// directory: the listed ones, the parents of every path, pg_wal.
func (c *manifestCheck) dirs() map[string]bool {
	dirs := map[string]bool{"pg_wal": true, "pg_wal/archive_status": true}
	addParents := func(p string) {
		for d := path.Dir(p); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, d := range c.m.Dirs {
		if d.Path == "." {
			continue // the data directory's own mode
		}
		if msg := pathProblem(d.Path); msg != "" {
			c.addf("directory %q: %s", d.Path, msg)
			continue
		}
		dirs[d.Path] = true
		addParents(d.Path)
	}
	for _, f := range c.m.Files {
		if pathProblem(f.Path) == "" {
			addParents(f.Path)
		}
	}
	return dirs
}

// files checks every file's path and record.
func (c *manifestCheck) files(dirs map[string]bool, links map[string]uint32) {
	seen := make(map[string]bool, len(c.m.Files))
	for i := range c.m.Files {
		f := &c.m.Files[i]
		msg := pathProblem(f.Path)
		oid, isLink := links[f.Path]
		switch {
		case msg != "":
		case f.Path == ".":
			msg = "it names the data directory"
		case seen[f.Path]:
			msg = "it is listed twice"
		case dirs[f.Path]:
			msg = "it is also a directory"
		case isLink:
			msg = fmt.Sprintf("it is the link of tablespace %d", oid)
		default:
			msg = c.fileRecord(f)
		}
		seen[f.Path] = true
		if msg != "" {
			c.issues = append(c.issues, ManifestIssue{File: f.Path, Text: msg, file: i + 1})
		}
	}
}

// pathProblem says why p cannot be a path inside the data directory, or "".
func pathProblem(p string) string {
	clean := path.Clean(p)
	switch {
	case p == "":
		return "it has an empty path"
	case path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../"):
		return fmt.Sprintf("path %q is outside the data directory", p)
	case clean != p:
		return fmt.Sprintf("path %q is not clean (%q)", p, clean)
	}
	return ""
}

// fileRecord says what is wrong with a file's size, checksums and extents,
// or "".
func (c *manifestCheck) fileRecord(f *File) string {
	if f.Size < 0 {
		return fmt.Sprintf("it has size %d", f.Size)
	}
	n := f.Size / UnitSize
	if f.Size%UnitSize != 0 {
		n++
	}
	if int64(len(f.Sums)) != n {
		return fmt.Sprintf("%d unit checksums for %d bytes; want %d (one per 8 MiB)", len(f.Sums), f.Size, n)
	}
	for u, s := range f.Sums {
		if !isSHA256(s) {
			return fmt.Sprintf("the checksum of unit %d, %q, is not a SHA-256 (64 lower-case hex digits)", u, s)
		}
	}
	if len(f.CRCs) != 0 && int64(len(f.CRCs)) != n {
		return fmt.Sprintf("%d CRC-32C checks for %d bytes; want %d (one per 8 MiB) or none", len(f.CRCs), f.Size, n)
	}
	return c.extents(f)
}

func isSHA256(s string) bool {
	return len(s) == 64 && strings.Trim(s, "0123456789abcdef") == ""
}

// extents says how a file's extents fail to tile it, or "".
func (c *manifestCheck) extents(f *File) string {
	var pos int64
	for i, e := range f.Extents {
		switch {
		case e.Len <= 0:
			return fmt.Sprintf("extent %d has length %d", i, e.Len)
		case e.At < 0:
			return fmt.Sprintf("extent %d has a negative object offset %d", i, e.At)
		case e.At > math.MaxInt64-e.Len:
			return fmt.Sprintf("extent %d ends past the largest offset an object can have", i)
		case e.Off < pos:
			return fmt.Sprintf("the extents do not tile the file: extent %d starts at %d, inside the previous one (which ends at %d)", i, e.Off, pos)
		case e.Off > pos:
			return fmt.Sprintf("the extents do not tile the file: bytes %d-%d are in no extent", pos, e.Off-1)
		case e.Len > f.Size-pos:
			return fmt.Sprintf("the extents do not tile the file: extent %d (%d bytes at %d) ends past its %d bytes", i, e.Len, e.Off, f.Size)
		}
		if msg := c.extentKey(i, e.Key); msg != "" {
			return msg
		}
		pos += e.Len
	}
	if pos < f.Size {
		return fmt.Sprintf("the extents do not tile the file: bytes %d-%d of %d are in no extent", pos, f.Size-1, f.Size)
	}
	return ""
}

// extentKey says why extent i cannot point at key, or "".
func (c *manifestCheck) extentKey(i int, key string) string {
	id, ok := repo.BackupIDFromDataKey(key)
	switch {
	case !ok || !validID(id):
		return fmt.Sprintf("extent %d points at %q, which is not a backup object", i, key)
	case id > c.m.ID:
		return fmt.Sprintf("extent %d points at %s, an object of backup %s, which is newer than this one", i, key, id)
	case id != c.m.ID && c.m.Type == Full:
		return fmt.Sprintf("extent %d points at %s, an object of backup %s: a full backup's files are all in its own objects", i, key, id)
	}
	return ""
}

// objects checks the records of the objects the backup wrote.
func (c *manifestCheck) objects() {
	seen := make(map[string]bool, len(c.m.Objects))
	for _, o := range c.m.Objects {
		var msg string
		switch id, ok := repo.BackupIDFromDataKey(o.Key); {
		case !ok || id != c.m.ID:
			msg = fmt.Sprintf("object %q is not one of its own data objects (%s...)", o.Key, repo.BackupPrefix(c.m.ID))
		case seen[o.Key]:
			msg = fmt.Sprintf("object %s is listed twice", o.Key)
		case o.RawSize < 0 || o.StoredSize < 0:
			msg = fmt.Sprintf("object %s has a negative size (raw %d, stored %d)", o.Key, o.RawSize, o.StoredSize)
		}
		seen[o.Key] = true
		if msg != "" {
			c.issues = append(c.issues, ManifestIssue{Object: o.Key, Text: msg})
		}
	}
}
