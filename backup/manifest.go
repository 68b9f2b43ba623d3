// Package backup takes base backups of a PostgreSQL cluster into a
// walferry repository, lists them, applies retention and verifies them.
//
// A backup is a set of data objects plus a manifest, written last, that
// says where every byte of every file is. Data objects are streams of file
// pieces: small files are bundled many to an object, large files are split
// into several objects, so one huge table does not serialize the backup and
// a million small files do not become a million objects. An incremental
// backup stores only the pieces that changed and points at its parent's
// objects for the rest, so a manifest alone describes a whole data
// directory whatever chain it belongs to. The format is in
// docs/repository-format.md.
package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/storage"
)

// ManifestVersion is the manifest format this build writes and reads.
const ManifestVersion = 1

// UnitSize is the span of one checksum in File.Sums: every file is hashed
// in 8 MiB units at fixed offsets, whatever objects its bytes went to, so a
// delta restore compares a local file unit by unit and an incremental
// backup compares with its parent the same way.
const UnitSize = 8 << 20

// Type is a backup's kind.
type Type string

// The backup types.
const (
	Full        Type = "full"
	Incremental Type = "incremental"
)

// Manifest describes one backup completely.
type Manifest struct {
	FormatVersion int    `json:"format_version"`
	ID            string `json:"id"`
	Type          Type   `json:"type"`
	// Parent is the backup an incremental builds on (empty for a full).
	Parent string `json:"parent,omitempty"`
	// Mode is "local" (files read from the data directory) or "remote"
	// (BASE_BACKUP over the replication protocol).
	Mode  string `json:"mode"`
	Label string `json:"label"`

	StartTime time.Time     `json:"start_time"`
	StopTime  time.Time     `json:"stop_time"`
	StartLSN  pg.LSN        `json:"start_lsn"`
	StopLSN   pg.LSN        `json:"stop_lsn"`
	Timeline  pg.TimeLineID `json:"timeline"`
	// StartWAL and StopWAL name the first and last WAL segments the backup
	// needs to be consistent; both are archived before the manifest is
	// written.
	StartWAL string `json:"start_wal"`
	StopWAL  string `json:"stop_wal"`

	SystemID      uint64 `json:"system_identifier,string"`
	PGVersionNum  int    `json:"pg_version_num"`
	DataChecksums bool   `json:"data_checksums"`
	WALLogHints   bool   `json:"wal_log_hints"`
	// Owner is the OS user owning the data directory; a restore run as
	// root gives the restored files to this user when it exists.
	Owner string `json:"owner,omitempty"`

	// BackupLabel and TablespaceMap are the contents pg_backup_stop
	// returned; restore writes them into the data directory.
	BackupLabel   string       `json:"backup_label"`
	TablespaceMap string       `json:"tablespace_map,omitempty"`
	Tablespaces   []Tablespace `json:"tablespaces,omitempty"`

	Dirs    []Dir    `json:"dirs"`
	Files   []File   `json:"files"`
	Objects []Object `json:"objects"`

	// PageChecksumErrors lists pages whose checksum did not match while
	// they were read (reported, not fatal: PostgreSQL's own backups
	// behave alike).
	PageChecksumErrors []PageError `json:"page_checksum_errors,omitempty"`
	Stats              Stats       `json:"stats"`
}

// Tablespace is a user tablespace: pg_tblspc/<OID> links to Location.
type Tablespace struct {
	OID      uint32 `json:"oid"`
	Name     string `json:"name,omitempty"`
	Location string `json:"location"`
}

// Dir is a directory of the data directory (tablespace directories as
// pg_tblspc/<oid>/...), created by restore even when empty.
type Dir struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode"`
}

// File is one regular file of the backup. Path is relative to the data
// directory, with "/" separators; files of tablespace OID are under
// "pg_tblspc/<OID>/". The file's bytes are the concatenation of Extents in
// order, and they cover [0, Size) exactly.
type File struct {
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	Mode  uint32 `json:"mode"`
	MTime int64  `json:"mtime"` // Unix seconds
	// Sums are the hex SHA-256 of every UnitSize slice of the file
	// (one for a file up to 8 MiB, none for an empty file).
	Sums []string `json:"sums"`
	// CRCs are the CRC-32C (Castagnoli) of the same units. Restore checks
	// the units it writes with them: a hardware CRC costs a fraction of a
	// SHA-256, and the objects' own checks already caught any damage in
	// the repository, so this one is there to catch a wrong mapping of
	// bytes to files. Delta restore, verify and incrementals keep using
	// Sums. Absent in manifests written before 2026-11 (restore then
	// checks Sums).
	CRCs    []uint32 `json:"crcs,omitempty"`
	Extents []Extent `json:"extents"`
}

// Extent says where Len bytes of a file, starting at file offset Off,
// are stored: at raw offset At of the repository object Key (possibly an
// object of an ancestor backup).
type Extent struct {
	Off int64  `json:"o"`
	Len int64  `json:"n"`
	Key string `json:"k"`
	At  int64  `json:"a"`
}

// Object is a data object this backup wrote (an incremental's extents may
// also point at its ancestors' objects; those are listed in theirs).
type Object struct {
	Key        string `json:"key"`
	RawSize    int64  `json:"raw_size"`
	StoredSize int64  `json:"stored_size"`
	Sum        string `json:"sum"`
}

// PageError is a page whose checksum did not verify during the backup.
type PageError struct {
	Path  string `json:"path"`
	Block int64  `json:"block"`
}

// Stats summarizes a backup's sizes.
type Stats struct {
	// DataBytes is the size of the data directory as backed up;
	// NewBytes the part this backup stored itself (all of it for a full);
	// StoredBytes what its objects take in the repository.
	DataBytes   int64   `json:"data_bytes"`
	NewBytes    int64   `json:"new_bytes"`
	StoredBytes int64   `json:"stored_bytes"`
	Files       int     `json:"files"`
	Duration    Seconds `json:"duration_seconds"`
}

// Seconds is a duration that prints as fractional seconds in JSON.
type Seconds float64

// ErrNoBackup: the repository has no backup matching the request.
var ErrNoBackup = failure.New(failure.NoBackup, "no such backup")

// Latest is the name that selects the newest backup.
const Latest = "LATEST"

// newID returns a backup id: the UTC start time and F (full) or
// I (incremental), so ids sort by age.
func newID(t time.Time, typ Type) string {
	suffix := "F"
	if typ == Incremental {
		suffix = "I"
	}
	return t.UTC().Format("20060102T150405") + suffix
}

// CheckID returns nil when id has the shape of a backup id (or is LATEST
// when latest allows it), else an error naming id and the fix, classified
// as a usage mistake: it is what a user typed, checked before any I/O.
func CheckID(id string, latest bool) error {
	if validID(id) || (latest && id == Latest) {
		return nil
	}
	return badID(id, latest)
}

// badID is CheckID's error for id.
func badID(id string, latest bool) error {
	want := "like 20261122T101500F"
	if latest {
		want += ", or LATEST"
	}
	return failure.Wrap(failure.Usage, fmt.Errorf("%.80q is not a backup id (%s; see walferry backup-list)", id, want))
}

// validID reports whether id has the shape newID gives.
func validID(id string) bool {
	if len(id) != 16 || (id[15] != 'F' && id[15] != 'I') {
		return false
	}
	_, err := time.Parse("20060102T150405", id[:15])
	return err == nil
}

// ReadManifest reads backup id's manifest and checks it (Manifest.Check):
// one that breaks the manifest format's rules is refused with a
// *ManifestError.
func ReadManifest(ctx context.Context, r *repo.Repo, id string) (*Manifest, error) {
	m, err := readManifest(ctx, r, id)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// readManifest is ReadManifest, except that a manifest that breaks the
// format's rules is returned with its *ManifestError, for verify to report
// what is wrong and check the rest.
func readManifest(ctx context.Context, r *repo.Repo, id string) (*Manifest, error) {
	if !validID(id) {
		return nil, fmt.Errorf("%w: %q is not a backup id (like 20261122T101500F, or LATEST)", ErrNoBackup, id)
	}
	obj, err := r.Get(ctx, repo.BackupManifestKey(id))
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s has no backup %s (see walferry backup-list)", ErrNoBackup, r, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read the manifest of backup %s: %w", id, err)
	}
	defer obj.Close()
	body, err := io.ReadAll(obj)
	if err != nil {
		return nil, fmt.Errorf("read the manifest of backup %s: %w", id, err)
	}
	return parseManifest(body, id, r.String(), r.Metadata())
}

// parseManifest decodes the manifest of backup id, read from where, and
// checks it for a repository with metadata meta. A manifest that decodes
// but breaks the format's rules is returned with its *ManifestError.
func parseManifest(body []byte, id, where string, meta repo.Metadata) (*Manifest, error) {
	m := new(Manifest)
	if err := json.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("manifest of backup %s in %s is not valid JSON: %w", id, where, err)
	}
	if m.FormatVersion > ManifestVersion {
		return nil, fmt.Errorf("backup %s has manifest format %d; this walferry reads up to %d: upgrade walferry",
			id, m.FormatVersion, ManifestVersion)
	}
	if m.ID != id {
		return nil, fmt.Errorf("manifest %s in %s names backup %q: the repository is damaged", repo.BackupManifestKey(id), where, m.ID)
	}
	return m, m.Check(meta)
}

// WriteManifest stores m; it is the last object a backup writes, which
// makes the backup exist.
func WriteManifest(ctx context.Context, r *repo.Repo, m *Manifest) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := r.PutIfAbsent(ctx, repo.BackupManifestKey(m.ID), bytes.NewReader(body)); err != nil {
		return fmt.Errorf("write the manifest of backup %s: %w", m.ID, err)
	}
	return nil
}

// IDs lists the ids of the complete backups (those with a manifest),
// oldest first, and the ids of prefixes without a manifest (interrupted
// or in-progress backups). Prefixes whose name is not a backup id are not
// walferry's and are ignored.
func IDs(ctx context.Context, r *repo.Repo) (complete, incomplete []string, err error) {
	seen := map[string]bool{}
	var order []string
	err = r.Store().List(ctx, repo.BackupsPrefix, func(oi storage.ObjectInfo) error {
		id, isManifest, ok := repo.BackupIDFromKey(oi.Key)
		if !ok || !validID(id) {
			return nil // not walferry's: left alone, never deleted
		}
		if _, known := seen[id]; !known {
			order = append(order, id)
		}
		seen[id] = seen[id] || isManifest
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list backups in %s: %w", r, err)
	}
	sort.Strings(order)
	for _, id := range order {
		if seen[id] {
			complete = append(complete, id)
		} else {
			incomplete = append(incomplete, id)
		}
	}
	return complete, incomplete, nil
}

// List reads the manifests of every complete backup, oldest first.
func List(ctx context.Context, r *repo.Repo) ([]*Manifest, error) {
	ids, _, err := IDs(ctx, r)
	if err != nil {
		return nil, err
	}
	out := make([]*Manifest, 0, len(ids))
	for _, id := range ids {
		m, err := ReadManifest(ctx, r, id)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Resolve reads the manifest that name selects: a backup id or LATEST
// (case-insensitive).
func Resolve(ctx context.Context, r *repo.Repo, name string) (*Manifest, error) {
	id, err := resolveID(ctx, r, name)
	if err != nil {
		return nil, err
	}
	return ReadManifest(ctx, r, id)
}

// resolveID returns the id of the backup name selects; a name of another
// shape is the user's mistake (CheckID).
func resolveID(ctx context.Context, r *repo.Repo, name string) (string, error) {
	if !strings.EqualFold(name, Latest) {
		return name, CheckID(name, true)
	}
	ids, _, err := IDs(ctx, r)
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "", fmt.Errorf("%w: %s has no backup yet; take one with walferry backup-push", ErrNoBackup, r)
	}
	return ids[len(ids)-1], nil
}

// FileMap indexes a manifest's files by path.
func (m *Manifest) FileMap() map[string]*File {
	out := make(map[string]*File, len(m.Files))
	for i := range m.Files {
		out[m.Files[i].Path] = &m.Files[i]
	}
	return out
}

// ObjectKeys returns every object key the manifest's extents point at
// (this backup's and its ancestors'), sorted.
func (m *Manifest) ObjectKeys() []string {
	seen := map[string]bool{}
	for _, f := range m.Files {
		for _, e := range f.Extents {
			seen[e.Key] = true
		}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// DependsOn returns the ids of the other backups whose objects this
// backup's extents point at.
func (m *Manifest) DependsOn() []string {
	seen := map[string]bool{}
	for _, k := range m.ObjectKeys() {
		if id, _, ok := repo.BackupIDFromKey(k); ok && id != m.ID {
			seen[id] = true
		}
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}
