//go:build !linux

package archive

import (
	"errors"
	iofs "io/fs"
	"os"
	"syscall"
	"time"
)

// errNoLocks: this build does not lock spool files; temporary files are
// then judged stale by age alone (tempMaxAge).
var errNoLocks = errors.New("file locks are not used on this platform")

func lockFile(*os.File, bool) error { return errNoLocks }

func changeTime(fi iofs.FileInfo) time.Time { return fi.ModTime() }

func isCrossDevice(err error) bool { return errors.Is(err, syscall.EXDEV) }
