// Package atomicfile gives files their final name all at once: a file is
// written under a temporary name in its final directory, then renamed, so
// no reader ever sees it half-written under its final name. It is the one
// place that says what "durable" means for a local write.
package atomicfile

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// Durability is what a committed file survives.
type Durability int

const (
	// Durable: the file is fsynced, renamed, and its directory fsynced: after
	// a crash the new file is there whole, or the old one (or none) is.
	Durable Durability = iota
	// Volatile: renamed only. Readers never see a partial file, but a crash
	// may lose the new one; for files that something else makes durable or
	// that cost only a redo when lost (a segment PostgreSQL fetches again, a
	// push record whose loss means one more comparison).
	Volatile
)

// TempPrefix starts the name of every temporary file this package makes.
const TempPrefix = ".tmp-"

// Place gives the complete file at tmp the name final; Rename is the usual
// one, a store that must not replace an existing file brings its own.
type Place func(tmp, final string) error

// Rename is os.Rename as a Place.
func Rename(tmp, final string) error { return os.Rename(tmp, final) }

// Commit gives f, a complete file at tmp in final's directory, the name
// final with d's guarantee, closing f. On failure tmp is removed and
// final is left as it was.
func Commit(f *os.File, tmp, final string, d Durability) error {
	return CommitWith(f, tmp, final, d, Rename)
}

// CommitWith is Commit with place instead of a rename. When place leaves
// tmp behind (a hard link), it is removed after the commit.
func CommitWith(f *os.File, tmp, final string, d Durability, place Place) (err error) {
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if d == Durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("fsync %s: %w", tmp, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := place(tmp, final); err != nil {
		return err
	}
	os.Remove(tmp) // a hard link leaves it; after a rename it is gone
	if d == Durable {
		return SyncDir(filepath.Dir(final))
	}
	return nil
}

// CreateTemp creates an empty temporary file in dir with mode perm,
// named TempPrefix + prefix + random digits.
func CreateTemp(dir, prefix string, perm os.FileMode) (*os.File, string, error) {
	for range 100 {
		p := filepath.Join(dir, TempPrefix+prefix+strconv.FormatUint(rand.Uint64(), 36))
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		return f, p, nil
	}
	return nil, "", fmt.Errorf("create a temporary file in %s: no free name", dir)
}

// WriteFile writes what r produces to path with mode perm, atomically and
// with d's guarantee.
func WriteFile(path string, r io.Reader, perm os.FileMode, d Durability) error {
	f, tmp, err := CreateTemp(filepath.Dir(path), filepath.Base(path)+"-", perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return Commit(f, tmp, path, d)
}

// SyncDir fsyncs a directory, making the names created, renamed or
// removed in it durable.
func SyncDir(dir string) error { return Sync(dir) }

// Sync makes the file or directory at p durable: a file's bytes and
// metadata, a directory's entries. A filesystem that cannot fsync a
// directory (some CIFS mounts answer EINVAL or ENOTSUP) is no error, as
// for PostgreSQL.
func Sync(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	err = f.Sync()
	if err != nil && (errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.EINVAL)) {
		if fi, serr := f.Stat(); serr == nil && fi.IsDir() {
			err = nil
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync %s: %w", p, err)
	}
	return nil
}

// RenameDurable renames a complete (already synced) file from to to and
// makes the new name durable: the rename of Durable, for files written in
// place under a name of their own (a segment being received).
func RenameDurable(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return Sync(filepath.Dir(to))
}

// WriteOwned writes data to path durably, with mode perm (set explicitly,
// whatever the umask) and owner uid:gid (-1 leaves that id as created),
// both set before the fsync: on a file system without a journal only the
// file's own fsync writes its inode. An id that is already right is not
// set, so a caller that is not root can write its own files.
func WriteOwned(path string, data []byte, perm os.FileMode, uid, gid int) error {
	f, tmp, err := CreateTemp(filepath.Dir(path), filepath.Base(path)+"-", 0o600)
	if err != nil {
		return err
	}
	if err := writeOwned(f, data, perm, uid, gid); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	return Commit(f, tmp, path, Durable)
}

func writeOwned(f *os.File, data []byte, perm os.FileMode, uid, gid int) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && (uid < 0 || int(st.Uid) == uid) && (gid < 0 || int(st.Gid) == gid) {
		return nil
	}
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("give it to uid %d gid %d: %w", uid, gid, err)
	}
	return nil
}
