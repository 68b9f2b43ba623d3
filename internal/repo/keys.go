package repo

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/walferry/walferry/internal/pg"
)

// The key layout. Only this package knows it; docs/repository-format.md
// describes it for humans.
const (
	// MetadataKey names the repository metadata object, written once by
	// repo init and read by every command.
	MetadataKey = "walferry.repository"
	// WALPrefix holds every archived WAL file.
	WALPrefix = "wal/"
	// HistoryPrefix holds timeline history files (wal/history/00000002.history).
	HistoryPrefix = WALPrefix + "history/"
	// BackupsPrefix holds base backups, one sub-prefix per backup.
	BackupsPrefix = "backups/"
	// probePrefix holds the short-lived objects repo check writes.
	probePrefix = "check/"
)

// WALKey returns the key of an archived WAL file: segments, .partial and
// .backup files under wal/<timeline+log id>/ (16 hex digits, at most 256
// to 4096 names each depending on segment size, so listings stay short),
// history files under wal/history/. The name is validated for the
// repository's segment size.
func WALKey(name string, segSize pg.WALSegmentSize) (string, error) {
	f, err := pg.ParseWALFileName(name, segSize)
	if err != nil {
		return "", fmt.Errorf("WAL file name %q: %w", name, err)
	}
	if f.Kind == pg.KindHistory {
		return HistoryPrefix + name, nil
	}
	return WALPrefix + name[:16] + "/" + name, nil
}

// WALNameFromKey is the inverse of WALKey: it returns the file name a key
// stores, or false for keys outside the WAL area and for keys WALKey
// would not have made (another tool's objects, or a listing that names
// "wal/x/../../evil"): a name comes back only when the key is exactly its
// name's key, so no caller acts on a name the repository's layout does
// not give it.
func WALNameFromKey(key string) (string, bool) {
	if !strings.HasPrefix(key, WALPrefix) {
		return "", false
	}
	name := path.Base(key)
	switch {
	case strings.HasSuffix(name, ".history"):
		if key != HistoryPrefix+name || !upperHex(strings.TrimSuffix(name, ".history")) {
			return "", false
		}
	case len(name) < 24 || !upperHex(name[:24]) || key != WALPrefix+name[:16]+"/"+name:
		return "", false
	}
	return name, true
}

// ParseWALKey parses the WAL file a listed key stores: false for keys
// WALNameFromKey refuses and for names that are not WAL files of this
// segment size. Every listing of the WAL area reads keys through it.
func ParseWALKey(key string, segSize pg.WALSegmentSize) (pg.WALFile, bool) {
	name, ok := WALNameFromKey(key)
	if !ok {
		return pg.WALFile{}, false
	}
	f, err := pg.ParseWALFileName(name, segSize)
	return f, err == nil
}

// upperHex reports whether s is a non-empty run of 0-9 and A-F, the
// digits of PostgreSQL's WAL file names.
func upperHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return s != ""
}

// Backup keys. A backup lives under backups/<id>/; it exists only once
// backups/<id>/manifest exists, and the manifest is written last.
const (
	// manifestName is the last element of a backup's manifest key.
	manifestName = "manifest"
	// LockPrefix holds the leases of operations that must not overlap
	// (backup-push and backup-delete share "lock/backup").
	LockPrefix = "lock/"
)

// BackupPrefix returns the prefix every object of backup id lives under.
func BackupPrefix(id string) string { return BackupsPrefix + id + "/" }

// BackupManifestKey returns the key of backup id's manifest.
func BackupManifestKey(id string) string { return BackupPrefix(id) + manifestName }

// BackupClaimKey returns the key that claims id for one backup-push:
// written first, with a conditional create.
func BackupClaimKey(id string) string { return BackupPrefix(id) + "claim" }

// BackupDataKey returns the key of the n-th data object of backup id.
func BackupDataKey(id string, n int) string {
	return fmt.Sprintf("%sdata/%06d", BackupPrefix(id), n)
}

// BackupIDFromKey returns the backup a key under backups/ belongs to, and
// whether the key is that backup's manifest.
func BackupIDFromKey(key string) (id string, isManifest, ok bool) {
	rest, found := strings.CutPrefix(key, BackupsPrefix)
	if !found {
		return "", false, false
	}
	id, tail, found := strings.Cut(rest, "/")
	if !found || id == "" {
		return "", false, false
	}
	return id, tail == manifestName, true
}

// BackupIDFromDataKey returns the backup a data object's key belongs to,
// for keys exactly as BackupDataKey builds them; ok is false for every
// other key (a manifest, a claim, a key outside backups/). The id is not
// checked: the backup package knows what an id looks like.
func BackupIDFromDataKey(key string) (id string, ok bool) {
	id, _, ok = BackupIDFromKey(key)
	if !ok {
		return "", false
	}
	digits, found := strings.CutPrefix(key, BackupPrefix(id)+"data/")
	if !found || strings.Trim(digits, "0123456789") != "" {
		return "", false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || BackupDataKey(id, n) != key {
		return "", false
	}
	return id, true
}

// LockKey returns the key of the lease named name.
func LockKey(name string) string { return LockPrefix + name }
