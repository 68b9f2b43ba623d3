package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/walferry/walferry/internal/atomicfile"
	"github.com/walferry/walferry/internal/pg"
)

// MarkerName is the file bootstrap keeps in the data directory while it
// fills it: written before any data, removed as the very last step. Its
// presence means a bootstrap was interrupted and must be finished.
const MarkerName = "walferry.bootstrap"

// marker is MarkerName's content.
type marker struct {
	From      string    `json:"from"`
	Backup    string    `json:"backup,omitempty"`
	StartedAt time.Time `json:"started_at"`
}

// dirKind is what bootstrap finds in the data directory.
type dirKind string

const (
	dirEmpty dirKind = "empty" // missing, or nothing in it (lost+found aside)
	dirValid dirKind = "valid" // PG_VERSION and a readable global/pg_control
	dirHalf  dirKind = "half"  // a bootstrap or restore that did not finish
	dirJunk  dirKind = "junk"  // something else: bootstrap refuses to touch it
)

// dirState is a data directory's classification.
type dirState struct {
	Kind    dirKind
	Control *pg.ControlData // dirValid
	Marker  *marker         // dirHalf, when the marker was there
	Entries []string        // dirJunk: what is there, sorted
}

// ignoredEntries are names an empty volume has: a fresh ext4 file system's
// lost+found when the data directory is the mount point.
var ignoredEntries = map[string]bool{"lost+found": true}

// classify looks at dir without changing anything.
//
// A marker means our own bootstrap was cut off. Without it, a directory
// with the pieces of a data directory (PG_VERSION, global/, base/) but no
// readable global/pg_control is half-restored too: restore and the
// BASE_BACKUP sink both put pg_control in place last, and a failed restore
// removes it.
func classify(dir string) (dirState, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return dirState{Kind: dirEmpty}, nil
	}
	if err != nil {
		return dirState{}, fmt.Errorf("read data directory %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if !ignoredEntries[e.Name()] {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return dirState{Kind: dirEmpty}, nil
	}
	if b, err := os.ReadFile(filepath.Join(dir, MarkerName)); err == nil {
		var m marker
		if err := json.Unmarshal(b, &m); err != nil {
			m = marker{} // unreadable: still ours, still unfinished
		}
		return dirState{Kind: dirHalf, Marker: &m}, nil
	}
	_, verErr := os.Stat(filepath.Join(dir, "PG_VERSION"))
	if verErr == nil {
		if cd, err := pg.ReadControlData(dir); err == nil {
			return dirState{Kind: dirValid, Control: cd}, nil
		}
	}
	for _, n := range []string{"PG_VERSION", "global", "base"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); err == nil {
			return dirState{Kind: dirHalf}, nil
		}
	}
	sort.Strings(names)
	return dirState{Kind: dirJunk, Entries: names}, nil
}

// owner is who files in the data directory belong to.
type owner struct{ uid, gid int }

// dirOwner returns dir's owner; -1s (leave as created) when it cannot tell.
func dirOwner(dir string) owner {
	fi, err := os.Stat(dir)
	if err != nil {
		return owner{-1, -1}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return owner{int(st.Uid), int(st.Gid)}
	}
	return owner{-1, -1}
}

// writeMarker records, durably, that a bootstrap is filling dir.
func writeMarker(dir string, m marker, o owner) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteOwned(filepath.Join(dir, MarkerName), append(b, '\n'), 0o600, o.uid, o.gid); err != nil {
		return fmt.Errorf("write %s in %s: %w", MarkerName, dir, err)
	}
	return nil
}

// removeMarker is the bootstrap's last step: from now on the directory is
// a finished standby.
func removeMarker(dir string) error {
	if err := os.Remove(filepath.Join(dir, MarkerName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s from %s: %w", MarkerName, dir, err)
	}
	return atomicfile.SyncDir(dir)
}

// clearDir deletes dir's contents but not dir: it may be a mount point.
// lost+found stays.
func clearDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if ignoredEntries[e.Name()] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clear %s: %w", dir, err)
		}
	}
	return atomicfile.SyncDir(dir)
}

// chownTree gives everything below dir (dir included, symlinks themselves
// not their targets) to o. A BASE_BACKUP copy is written by this process;
// run as root, PostgreSQL could not read it otherwise.
func chownTree(dir string, o owner) error {
	if o.uid < 0 || os.Geteuid() != 0 {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, o.uid, o.gid); err != nil {
			return fmt.Errorf("give %s to uid %d: %w", p, o.uid, err)
		}
		return nil
	})
}

// writeOwnedEmpty writes an empty file (a signal file) owned by o.
func writeOwnedEmpty(path string, o owner) error {
	return atomicfile.WriteOwned(path, bytes.TrimSpace(nil), 0o600, o.uid, o.gid)
}
