package fs

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// linkUnsupported reports a filesystem that cannot hard-link: link(2)
// answers EPERM there (CIFS without POSIX extensions), or ENOTSUP.
func linkUnsupported(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, errors.ErrUnsupported)
}

// renameNoReplace renames tmp to dst unless dst exists (EEXIST).
func renameNoReplace(tmp, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err != nil {
		return &os.LinkError{Op: "renameat2", Old: tmp, New: dst, Err: err}
	}
	return nil
}

// isTransient reports errors a network filesystem may return for a moment
// (a stale NFS handle, a soft mount's timeout, a busy server).
func isTransient(err error) bool {
	return errors.Is(err, syscall.ESTALE) || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EAGAIN)
}
