package role

import (
	"os"
	"syscall"

	"github.com/walferry/walferry/internal/atomicfile"
)

// touchOwned makes an empty file owned like dir (the data directory), so a
// root run leaves nothing PostgreSQL cannot read.
func touchOwned(path, dir string) error {
	uid, gid := -1, -1
	if fi, err := os.Stat(dir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
	}
	return atomicfile.WriteOwned(path, nil, 0o600, uid, gid)
}
