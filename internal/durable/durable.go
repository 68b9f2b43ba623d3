// Package durable makes local files survive a crash: fsync of files and
// directories, renames whose new name is on disk when they return, and
// small files written so that nobody sees them half done.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

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

// Rename renames from to to and makes the new name durable (fsync of to's
// directory).
func Rename(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	return Sync(filepath.Dir(to))
}

// WriteFile writes data to p so that p is either what it was or all of
// data, even after a crash: it writes <p>.tmp, fsyncs it, renames it to p
// and fsyncs the directory. A failure removes <p>.tmp; a crash may leave
// it, for whoever reads the directory to remove.
func WriteFile(p string, data []byte, perm fs.FileMode) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}
