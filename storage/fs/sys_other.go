//go:build !linux

package fs

import (
	"errors"
	"fmt"
)

// linkUnsupported reports whether link(2) failed for want of hard links.
func linkUnsupported(err error) bool { return errors.Is(err, errors.ErrUnsupported) }

// renameNoReplace has no atomic implementation outside Linux.
func renameNoReplace(tmp, dst string) error {
	return fmt.Errorf("rename %s %s without replacing: %w", tmp, dst, errors.ErrUnsupported)
}

// isTransient reports errors worth retrying; none are known here.
func isTransient(error) bool { return false }
