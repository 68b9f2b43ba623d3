//go:build faults

package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/testenv"
)

// The local disk faults: a filesystem that fills up under walferry's
// writes (a tmpfs smaller than what is written), and one mounted
// read-only.
const (
	diskFull = "disk full"
	diskRO   = "read-only filesystem"
	// What the kernel's errors read like in walferry's messages.
	enospc = "no space left on device"
	erofs  = "read-only file system"
)

// mountTmpfs mounts a tmpfs of size bytes at dir (made when missing),
// owned by the server's OS user with mode 0700, and unmounts it when t
// ends. A refused mount fails t where every test must run (CI) and skips
// it elsewhere.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	opts := fmt.Sprintf("size=%d,mode=0700,uid=%d,gid=%d", size, uid(t), gid(t))
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("mount a tmpfs at %s (the disk faults need root and mount): %v: %s", dir, err, strings.TrimSpace(string(out)))
		if testenv.RequireServices() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// remount changes the mount options of the tmpfs at dir: "size=N" frees
// space, "ro" and "rw" switch it read-only and back.
func remount(t *testing.T, dir, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,"+opts, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s %s: %v: %s", dir, opts, err, strings.TrimSpace(string(out)))
	}
}

// emptyDir removes what dir holds, keeping dir (a mount point).
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// listTree returns the paths of the files under dir, relative to it.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepathWalk(dir, func(p string) error {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// diskRepo is a repository holding a backup of an archiving primary and
// the WAL after it, and what the suite knows of them.
type diskRepo struct {
	url  string
	prim *pgtest.Cluster
	id   string            // the backup
	want string            // the items digest the backup restores to
	sums map[string]string // archived segment -> sha256 of its bytes
	segs []string          // the archived segments, in order
}

func newDiskRepo(t *testing.T, s3 testenv.S3Env) *diskRepo {
	t.Helper()
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	prim := archivingPrimary(t, url)
	want := fillItems(t, prim, 20000)
	psql(t, prim, "CREATE TABLE bump (x int)")
	id := backupID(mustWF(t, prim, "backup-push", "--repo", url, "--json").stdout)
	// Segments enough for every trial's archive-get and prefetches.
	for range 24 {
		psql(t, prim, "INSERT INTO bump VALUES (1); SELECT pg_switch_wal()")
	}
	waitArchived(t, prim)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sums, err := walSums(ctx, openRepo(t, url))
	if err != nil {
		t.Fatal(err)
	}
	dr := &diskRepo{url: url, prim: prim, id: id, want: want, sums: sums}
	for name := range sums {
		if len(name) == 24 {
			dr.segs = append(dr.segs, name)
		}
	}
	sort.Strings(dr.segs)
	if len(dr.segs) < 24 {
		t.Fatalf("the repository holds %d segments, want at least 24", len(dr.segs))
	}
	return dr
}

// waitArchived switches to a new WAL segment and waits until the archiver
// pushed the one it ended.
func waitArchived(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	psql(t, c, "CREATE TABLE IF NOT EXISTS bump (x int); INSERT INTO bump VALUES (1)")
	name := psql(t, c, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	psql(t, c, "SELECT pg_switch_wal()")
	deadline := time.Now().Add(2 * time.Minute)
	for psql(t, c, "SELECT coalesce(last_archived_wal, '') >= "+sqlQuote(name)+" FROM pg_stat_archiver") != "t" {
		if time.Now().After(deadline) {
			t.Fatalf("%s was not archived within 2 minutes: %s", name, psql(t, c, "SELECT * FROM pg_stat_archiver"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDisk fills the disk under archive-get's destination, restore's data
// directory and archive-get's prefetch spool (standalone and in the
// daemon), and mounts each read-only. Each must fail within its limit
// with its documented exit code and a message naming the condition and
// the path (or, for the spool, which prefetching only speeds up, succeed
// and warn), leave nothing partial under a final name, and succeed with
// the same data once there is space again.
func TestDisk(t *testing.T) {
	s3 := needServices(t)
	t.Parallel()
	dr := newDiskRepo(t, s3)
	t.Run("archive-get", func(t *testing.T) { t.Parallel(); diskArchiveGet(t, dr) })
	t.Run("prefetch", func(t *testing.T) { t.Parallel(); diskPrefetch(t, dr) })
	t.Run("restore", func(t *testing.T) { t.Parallel(); diskRestore(t, dr) })
}

// judgeGet classifies an archive-get into dest that ran on a failing disk
// (cond: the kernel's error text), once the same call on a healthy disk
// gave again.
func (dr *diskRepo) judgeGet(t *testing.T, fault, op string, res, again result, seg, dest string, cond string) {
	t.Helper()
	dir := filepath.Dir(dest)
	want := dr.sums[seg]
	switch {
	case res.timedOut:
		record(t, fault, op, hang, res.String())
	case res.code == 0 && fileSum(t, dest) != want:
		record(t, fault, op, dataLost, fmt.Sprintf("exit 0 but %s has sha256 %q, want %s", dest, fileSum(t, dest), want))
	case res.code == 0:
		record(t, fault, op, ok, fmt.Sprintf("%s fit: bytes equal", seg))
	case again.code != 0:
		record(t, fault, op, unclear, "the same archive-get on a healthy disk failed: "+again.String())
	case fileSum(t, dest) != want:
		record(t, fault, op, dataLost, fmt.Sprintf("after the fault, archive-get wrote %s with sha256 %q, want %s", dest, fileSum(t, dest), want))
	case res.code == 1 && strings.Contains(res.stderr, cond) && strings.Contains(res.stderr, dir):
		record(t, fault, op, clearError, res.String()+"; then bytes equal")
	default:
		record(t, fault, op, unclear, fmt.Sprintf("want exit 1 naming %q and %s: %v", cond, dir, res))
	}
}

// diskArchiveGet runs archive-get into a tmpfs with room for half a
// segment (with prefetch off, into a file; with prefetch on, as recovery
// asks, into pg_wal/RECOVERYXLOG with the spool beside it), then into a
// read-only one.
func diskArchiveGet(t *testing.T, dr *diskRepo) {
	const op = "archive-get"
	mnt := filepath.Join(dr.prim.Dir, "get-mnt")
	mountTmpfs(t, mnt, segMB<<20/2)
	pgwal := filepath.Join(mnt, "pg_wal")
	for i, c := range []struct {
		dest string
		args []string
	}{
		{filepath.Join(mnt, dr.segs[1]), []string{"--prefetch", "0"}},
		{filepath.Join(pgwal, "RECOVERYXLOG"), []string{"--prefetch", "4"}},
	} {
		emptyDir(t, mnt)
		if err := os.Mkdir(pgwal, 0o700); err != nil {
			t.Fatal(err)
		}
		chownTree(t, mnt)
		seg := dr.segs[1+i]
		args := append([]string{"archive-get", "--repo", dr.url}, c.args...)
		args = append(args, seg, c.dest)
		res := wf(t, dr.prim, segmentLimit, args...)
		// Nothing partial: no %p unless whole, no temporary file left.
		var left []string
		for _, p := range listTree(t, mnt) {
			if filepath.Join(mnt, p) != c.dest || res.code != 0 {
				left = append(left, p)
			}
		}
		if len(left) > 0 {
			record(t, diskFull, op, dataLost, fmt.Sprintf("archive-get (%v) left %v in %s", res, left, mnt))
			emptyDir(t, mnt)
			continue
		}
		remount(t, mnt, "size=64m")
		again := wf(t, dr.prim, segmentLimit, args...)
		dr.judgeGet(t, diskFull, op, res, again, seg, c.dest, enospc)
		emptyDir(t, mnt)
		remount(t, mnt, fmt.Sprintf("size=%d", segMB<<20/2))
	}

	// Read-only.
	emptyDir(t, mnt)
	remount(t, mnt, "ro")
	seg := dr.segs[3]
	dest := filepath.Join(mnt, seg)
	args := []string{"archive-get", "--repo", dr.url, "--prefetch", "0", seg, dest}
	res := wf(t, dr.prim, segmentLimit, args...)
	remount(t, mnt, "rw,size=64m")
	if left := listTree(t, mnt); len(left) > 0 {
		record(t, diskRO, op, dataLost, fmt.Sprintf("archive-get on a read-only filesystem (%v) left %v", res, left))
		return
	}
	again := wf(t, dr.prim, segmentLimit, args...)
	dr.judgeGet(t, diskRO, op, res, again, seg, dest, erofs)
}

// checkSpool returns what is wrong in a prefetch spool ("" when nothing):
// a temporary file a one-shot archive-get left, or a file under a final
// name whose bytes are not its segment's.
func (dr *diskRepo) checkSpool(t *testing.T, spool string) (problem string, finals int) {
	t.Helper()
	entries, err := os.ReadDir(spool)
	if os.IsNotExist(err) {
		return "", 0
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		seg, _, _ := strings.Cut(name, ".")
		switch {
		case strings.HasPrefix(name, ".tmp-"):
			return fmt.Sprintf("temporary file %s left in the spool", name), finals
		case dr.sums[seg] == "":
			return fmt.Sprintf("unknown file %s in the spool", name), finals
		case fileSum(t, filepath.Join(spool, name)) != dr.sums[seg]:
			return fmt.Sprintf("spool file %s does not hold %s's bytes", name, seg), finals
		}
		finals++
	}
	return "", finals
}

// diskPrefetch runs archive-get as recovery calls it with its prefetch
// spool on a tmpfs with room for one and a half segments, then on a
// read-only one, standalone and through the daemon. The requested segment
// goes to pg_wal on a healthy disk: the call must succeed with the right
// bytes and say why prefetching failed, the spool must hold nothing
// partial under a final name, and once there is room the next calls are
// served from the spool.
func diskPrefetch(t *testing.T, dr *diskRepo) {
	dr.prim.MkdirOwned(t, "rec")
	pgwal := dr.prim.MkdirOwned(t, "rec/pg_wal")
	dest := filepath.Join(pgwal, "RECOVERYXLOG")
	root := filepath.Join(dr.prim.Dir, "spool-mnt")
	spool := filepath.Join(root, "prefetch")
	const small = segMB << 20 * 3 / 2
	mountTmpfs(t, root, small)
	sock := filepath.Join(dr.prim.MkdirOwned(t, "run"), "walferry.sock")
	next := 4
	for _, daemon := range []bool{false, true} {
		op := "spool"
		if daemon {
			op = "daemon spool"
		}
		for _, fault := range []string{diskFull, diskRO} {
			emptyDir(t, root)
			cond := enospc
			if fault == diskRO {
				cond = erofs
				remount(t, root, "ro")
			}
			var logs func() string
			var stop func()
			get := func(seg string) result {
				return wf(t, dr.prim, segmentLimit, "archive-get", "--repo", dr.url, "--prefetch", "4", "--spool-dir", root, seg, dest)
			}
			if daemon {
				get, logs, stop = startDaemon(t, dr, sock, root, dest)
			}
			seg := dr.segs[next]
			res := get(seg)
			got := fileSum(t, dest)
			os.Remove(dest)
			if daemon {
				// The daemon's prefetches run in the background: wait for
				// them to end and to warn.
				settleSpool(t, spool, func() bool { return strings.Contains(logs(), cond) })
				res.stderr += logs()
			}
			spoolProblem, _ := dr.checkSpool(t, spool)
			// Room again: the next calls are served, from the spool.
			remount(t, root, "rw,size=64m")
			var again []string
			for _, s := range dr.segs[next+1 : next+4] {
				r := get(s)
				if r.code != 0 || fileSum(t, dest) != dr.sums[s] {
					again = append(again, fmt.Sprintf("%s: %v, sha256 %q", s, r, fileSum(t, dest)))
				}
				os.Remove(dest)
			}
			if daemon {
				settleSpool(t, spool, func() bool { return true })
			}
			againProblem, finals := dr.checkSpool(t, spool)
			switch {
			case res.timedOut:
				record(t, fault, op, hang, res.String())
			case res.code == 0 && got != dr.sums[seg]:
				record(t, fault, op, dataLost, fmt.Sprintf("exit 0 but %s has sha256 %q, want %s", dest, got, dr.sums[seg]))
			case spoolProblem != "":
				record(t, fault, op, dataLost, spoolProblem)
			case againProblem != "":
				record(t, fault, op, dataLost, "after freeing space: "+againProblem)
			case len(again) > 0:
				record(t, fault, op, unclear, "archive-get after freeing space: "+strings.Join(again, "; "))
			case res.code != 0:
				record(t, fault, op, unclear, "a spool that cannot take prefetches failed the call: "+res.String())
			case finals == 0:
				record(t, fault, op, unclear, "after freeing space nothing was prefetched into "+spool)
			case !strings.Contains(res.stderr, cond) || !strings.Contains(res.stderr, root):
				record(t, fault, op, unclear, fmt.Sprintf("prefetch failed without a warning naming %q and %s: %v", cond, root, res))
			default:
				record(t, fault, op, ok, fmt.Sprintf("%s bytes equal, warned: %s; after freeing space %d segments prefetched and served, bytes equal",
					seg, lastLines(strings.TrimSpace(res.stderr), 1), finals))
			}
			next += 4
			if stop != nil {
				stop()
			}
			emptyDir(t, root)
			remount(t, root, fmt.Sprintf("size=%d", small))
		}
	}
}

// settleSpool waits, 30 s at most, until no download is under way in
// spool (no temporary file) and done reports true.
func settleSpool(t *testing.T, spool string, done func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		busy := false
		entries, _ := os.ReadDir(spool)
		for _, e := range entries {
			busy = busy || strings.HasPrefix(e.Name(), ".tmp-")
		}
		if !busy && done() {
			return
		}
	}
}

// startDaemon starts walferry daemon on sock with its spool under root
// and returns how to ask it for a segment, written to dest, its log so
// far, and how to stop it (SIGTERM; also when t ends).
func startDaemon(t *testing.T, dr *diskRepo, sock, root, dest string) (get func(seg string) result, logs func() string, stop func()) {
	t.Helper()
	log := filepath.Join(dr.prim.Dir, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano()))
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	d := dr.prim.Command(context.Background(), walferryBin, "daemon", "--socket", sock, "--pgdata", dr.prim.DataDir,
		"--repo", dr.url, "--prefetch", "4", "--spool-dir", root)
	d.Stdout, d.Stderr = f, f
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	waitSocket(t, sock, 30*time.Second)
	stop = sync.OnceFunc(func() {
		d.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { d.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			d.Process.Kill()
			<-done
		}
		f.Close()
		os.Remove(sock)
	})
	t.Cleanup(stop)
	get = func(seg string) result {
		return wfEnv(t, dr.prim, segmentLimit, []string{"WALFERRY_REPO=" + dr.url},
			"archive-get", "--socket", sock, seg, dest)
	}
	logs = func() string {
		b, _ := os.ReadFile(log)
		return string(b)
	}
	return get, logs, stop
}

// diskRestore restores a backup into a data directory on a tmpfs smaller
// than the cluster, then on a read-only one; after each failure, with
// space again, the restore completes and the rows are equal.
func diskRestore(t *testing.T, dr *diskRepo) {
	const op = "restore"
	d := newRestoreTarget(t)
	mountTmpfs(t, d.c.DataDir, 8<<20)
	for _, fault := range []string{diskFull, diskRO} {
		emptyDir(t, d.c.DataDir)
		cond := enospc
		if fault == diskRO {
			cond = erofs
			remount(t, d.c.DataDir, "ro")
		}
		res := d.restore(t, backupLimit, nil, dr.url, dr.id)
		startable := d.startable()
		remount(t, d.c.DataDir, "rw,size=512m")
		left := listTree(t, d.c.DataDir)
		again := d.restore(t, backupLimit, nil, dr.url, dr.id, "--delta")
		problem := ""
		if again.code == 0 {
			problem = d.check(t, dr.want)
		}
		switch {
		case res.timedOut:
			record(t, fault, op, hang, res.String())
		case res.code == 0:
			record(t, fault, op, dataLost, "a restore onto a full or read-only disk reported success: "+res.String())
		case startable:
			record(t, fault, op, dataLost, fmt.Sprintf("a failed restore (%v) left global/pg_control: PostgreSQL could start it", res))
		case fault == diskRO && len(left) > 0:
			record(t, fault, op, dataLost, fmt.Sprintf("a restore onto a read-only disk wrote %v", left))
		case again.code != 0:
			record(t, fault, op, unclear, "restore --delta with space again failed: "+again.String())
		case problem != "":
			record(t, fault, op, dataLost, "restore --delta with space again: "+problem)
		case strings.Contains(res.stderr, "could not remove"):
			// A warning about files the restore never wrote (removing a
			// missing file on a read-only filesystem says EROFS).
			record(t, fault, op, unclear, "the failed restore warns about files it did not write: "+res.String())
		case res.code == 1 && strings.Contains(res.stderr, cond) && strings.Contains(res.stderr, d.c.DataDir):
			record(t, fault, op, clearError, fmt.Sprintf("%v; %d files left, no pg_control; restore --delta then rows equal", res, len(left)))
		default:
			record(t, fault, op, unclear, fmt.Sprintf("want exit 1 naming %q and %s: %v", cond, d.c.DataDir, res))
		}
		emptyDir(t, d.c.DataDir)
		remount(t, d.c.DataDir, "size=8m")
	}
}
