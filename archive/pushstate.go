package archive

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pg"
)

// The look-ahead state: one small JSON file per segment pushed ahead of
// PostgreSQL, named after the segment, in the Pusher's state directory.
//
// A record is written (temp file + rename, so it is whole or absent) only
// after the segment is durable in every repository, and it is trusted only
// while the file it describes is unchanged (same directory, size and
// modification time) and the repositories are the same. It is not fsynced:
// after a crash a record is whole, absent or unreadable, and an absent or
// unreadable record only means the segment is pushed again, which is
// idempotent. So a crash at any point never reports a segment that is not
// durable, and never loses one.
//
// Records are deleted when PostgreSQL's call for the segment consumes them,
// and on every Push when the segment is no longer .ready (archived, or
// removed by PostgreSQL), so the directory holds about Ahead records.

const (
	// readySuffix marks the files of pg_wal/archive_status that wait for
	// archive_command.
	readySuffix = ".ready"
	// pushTmpPrefix starts the name of a record being written.
	pushTmpPrefix = atomicfile.TempPrefix
	// staleTempAge is how old a leftover temporary record must be before a
	// Push deletes it (a younger one may still be being written).
	staleTempAge = 10 * time.Minute
	// maxRecordSize bounds how much of a record file is read.
	maxRecordSize = 64 << 10
)

// pushRecord says that a file was durable in every repository of Repos
// when it had Size and MtimeNS.
type pushRecord struct {
	Name    string    `json:"name"`
	Dir     string    `json:"dir"`
	Size    int64     `json:"size"`
	MtimeNS int64     `json:"mtime_ns"`
	Sum     string    `json:"sha256"` // "" when the objects carry no raw SHA-256 (zstd, gzip)
	Repos   []string  `json:"repos"`
	Pushed  time.Time `json:"pushed_at"`
}

// fileStamp identifies one version of a local file.
type fileStamp struct {
	size    int64
	mtimeNS int64
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), mtimeNS: fi.ModTime().UnixNano()}
}

// trusted reports whether r vouches for the file name in dir as it is now.
func (r *pushRecord) trusted(name, dir string, st fileStamp, repos []string) bool {
	return r.Name == name && r.Dir == dir && r.Size == st.size && r.MtimeNS == st.mtimeNS &&
		(r.Sum == "" || strings.HasPrefix(r.Sum, "sha256:")) && slices.Equal(r.Repos, repos)
}

// readRecord returns the record of name in stateDir; ok is false when there
// is none or it cannot be read or parsed (a torn write after a crash).
func readRecord(stateDir, name string) (rec pushRecord, exists, ok bool) {
	f, err := os.Open(filepath.Join(stateDir, name))
	if err != nil {
		return pushRecord{}, !errors.Is(err, iofs.ErrNotExist), false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil || len(data) > maxRecordSize {
		return pushRecord{}, true, false
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return pushRecord{}, true, false
	}
	return rec, true, true
}

// writeRecord stores rec in stateDir under rec.Name, atomically.
func writeRecord(stateDir string, rec pushRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	// Volatile: a record lost in a crash costs one comparison with the
	// archived copy, never a wrong answer.
	if err := atomicfile.WriteFile(filepath.Join(stateDir, rec.Name), bytes.NewReader(data), 0o600, atomicfile.Volatile); err != nil {
		return fmt.Errorf("record %s: %w", rec.Name, err)
	}
	return nil
}

// removeRecord deletes the record of name, if any.
func removeRecord(stateDir, name string) {
	_ = os.Remove(filepath.Join(stateDir, name))
}

// readyList returns the WAL files of dir/archive_status/*.ready in the order
// PostgreSQL's archiver takes them (pgarch.c, ready_file_comparator):
// timeline history files first, then by name, oldest first. ok is false
// when the directory cannot be read (a path outside pg_wal).
func readyList(dir string, size pg.WALSegmentSize) (names []string, ok bool) {
	entries, err := os.ReadDir(filepath.Join(dir, "archive_status"))
	if err != nil {
		return nil, false
	}
	var history map[string]bool
	for _, e := range entries {
		name, isReady := strings.CutSuffix(e.Name(), readySuffix)
		if !isReady {
			continue
		}
		f, err := pg.ParseWALFileName(name, size)
		if err != nil {
			continue
		}
		names = append(names, name)
		if f.Kind == pg.KindHistory {
			if history == nil {
				history = make(map[string]bool)
			}
			history[name] = true
		}
	}
	slices.SortFunc(names, func(a, b string) int {
		if history[a] != history[b] {
			if history[a] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	return names, true
}

// tidyState deletes the records in stateDir whose file is no longer .ready
// (PostgreSQL archived or removed it, so no call will consume the record)
// and temporary files left by interrupted writes. It touches only names it
// could have written (WAL file names), so a state directory set to a shared
// place loses nothing else. It returns the names that still have a record.
// One ReadDir; a missing directory holds nothing.
func tidyState(stateDir string, ready map[string]bool, size pg.WALSegmentSize, now time.Time) map[string]bool {
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return nil
	}
	recorded := make(map[string]bool, len(entries))
	for _, e := range entries {
		name := e.Name()
		if tmp, isTmp := strings.CutPrefix(name, pushTmpPrefix); isTmp {
			if i := strings.LastIndexByte(tmp, '-'); i < 0 || !isWALName(tmp[:i], size) {
				continue
			}
			if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > staleTempAge {
				os.Remove(filepath.Join(stateDir, name))
			}
			continue
		}
		if e.IsDir() || !isWALName(name, size) {
			continue
		}
		if !ready[name] {
			os.Remove(filepath.Join(stateDir, name))
			continue
		}
		recorded[name] = true
	}
	return recorded
}

func isWALName(name string, size pg.WALSegmentSize) bool {
	_, err := pg.ParseWALFileName(name, size)
	return err == nil
}
