package restore

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing n bytes of file p from
// off to disk, without waiting for them (sync_file_range with
// SYNC_FILE_RANGE_WRITE, as PostgreSQL's checkpointer does): a later
// fsync then finds most of them written. It makes nothing durable.
func startWriteback(p string, off, n int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
