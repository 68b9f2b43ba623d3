package archive

import (
	"errors"
	iofs "io/fs"
	"os"
	"syscall"
	"time"
)

// lockFile takes an exclusive flock on f: waiting for it when wait is set,
// else failing with errLocked when someone else holds it. Locks belong to
// the open file description, so they tell apart owners in one process as
// well as in several, and vanish when the owner dies. Other errors mean
// the filesystem has no locks.
func lockFile(f *os.File, wait bool) error {
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return errLocked
		}
		return err
	}
}

// changeTime returns when fi's file last changed: its content (mtime) or
// its name (ctime, which rename updates).
func changeTime(fi iofs.FileInfo) time.Time {
	t := fi.ModTime()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if c := time.Unix(st.Ctim.Unix()); c.After(t) {
			t = c
		}
	}
	return t
}

// isCrossDevice reports a rename between filesystems.
func isCrossDevice(err error) bool { return errors.Is(err, syscall.EXDEV) }
