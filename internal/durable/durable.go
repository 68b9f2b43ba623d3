// Package durable writes local files the one way walferry writes them:
// a temporary file in the same directory, written, given its mode and
// owner, fsynced, renamed over the final name, and the directory fsynced.
// Nothing partial is ever visible under the final name, and once
// WriteFile returns the file survives a crash with its content, mode and
// owner.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// Owner is who a written file belongs to. UID or GID -1 leaves that id
// as the file was created (the caller's).
type Owner struct{ UID, GID int }

// Unchanged is the Owner that changes nothing.
var Unchanged = Owner{UID: -1, GID: -1}

// OwnerOf returns the owner of the file or directory at path (following
// symlinks).
func OwnerOf(path string) (Owner, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Unchanged, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Unchanged, nil
	}
	return Owner{UID: int(st.Uid), GID: int(st.Gid)}, nil
}

// TempName is the temporary name WriteFile writes path under before the
// rename: fixed, so that a writer killed half-way leaves one file, which
// the next write of the same path replaces.
func TempName(path string) string {
	return filepath.Join(filepath.Dir(path), ".walferry-"+filepath.Base(path)+".tmp")
}

// WriteFile replaces path with data, atomically and durably, with mode
// perm and owner o (after the umask would have changed it: the mode is
// set explicitly). A symlink at path is replaced, not followed. On error
// path is unchanged and the temporary file removed; the error names path.
func WriteFile(path string, data []byte, perm os.FileMode, o Owner) error {
	tmp := TempName(path)
	err := func() error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		if err == nil {
			err = f.Chmod(perm)
		}
		if err == nil {
			err = chown(f, o)
		}
		if err == nil {
			// After the metadata: without a journal only the file's own
			// fsync writes its inode.
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		return Sync(filepath.Dir(path))
	}()
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// chown gives f to o where o names another id than f has.
func chown(f *os.File, o Owner) error {
	if o.UID < 0 && o.GID < 0 {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && (o.UID < 0 || int(st.Uid) == o.UID) && (o.GID < 0 || int(st.Gid) == o.GID) {
		return nil
	}
	if err := f.Chown(o.UID, o.GID); err != nil {
		return fmt.Errorf("give it to uid %d gid %d: %w", o.UID, o.GID, err)
	}
	return nil
}

// Sync makes the file or directory at path durable: for a directory, the
// names in it.
func Sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}
