package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testbin"
	"github.com/walferry/walferry/storage/fs"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// archivingCluster starts a PostgreSQL 15 cluster whose archive_command
// pushes to a fresh filesystem repository, and opens that repository.
func archivingCluster(t *testing.T, opts pgtest.Options) (*pgtest.Cluster, *repo.Repo, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration: real PostgreSQL; skipped with -short")
	}
	bin := testbin.Walferry(t)
	c := pgtest.New(t, opts)
	root := c.MkdirOwned(t, "repo")
	url := "file://" + root
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	// The repository is created as the server's OS user, which archives
	// into it.
	if out, err := c.Command(ctx, bin, "repo", "init", "--repo", url, "--pgdata", c.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("repo init: %v\n%s", err, out)
	}
	c.AppendConf(t, "archive_mode = on",
		"archive_command = '"+bin+" archive-push --repo "+url+" %p'")
	c.Start(t)
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c, r, url
}

// readBack rebuilds a file of the backup from its extents.
func readBack(t *testing.T, r *repo.Repo, f *backup.File) []byte {
	t.Helper()
	out := make([]byte, f.Size)
	var pos int64
	for _, e := range f.Extents {
		if e.Off != pos {
			t.Fatalf("%s: extent at %d, want %d (extents must tile the file)", f.Path, e.Off, pos)
		}
		obj, err := r.Get(context.Background(), e.Key)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, obj, e.At); err != nil {
			t.Fatalf("%s: skip to %d in %s: %v", f.Path, e.At, e.Key, err)
		}
		if _, err := io.ReadFull(obj, out[e.Off:e.Off+e.Len]); err != nil {
			t.Fatalf("%s: read %d bytes at %d of %s: %v", f.Path, e.Len, e.At, e.Key, err)
		}
		obj.Close()
		pos += e.Len
	}
	if pos != f.Size {
		t.Fatalf("%s: extents cover %d bytes, size is %d", f.Path, pos, f.Size)
	}
	return out
}

func unitSums(b []byte) []string {
	out := []string{}
	for off := 0; off < len(b); off += backup.UnitSize {
		s := sha256.Sum256(b[off:min(len(b), off+backup.UnitSize)])
		out = append(out, hex.EncodeToString(s[:]))
	}
	return out
}

func TestPushFullAndIncremental(t *testing.T) {
	c, r, _ := archivingCluster(t, pgtest.Options{DataChecksums: true})
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text) WITH (fillfactor = 100)")
	// About 45 MiB: the table is split over several data objects.
	c.Exec(t, "INSERT INTO t SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 140000) i")
	c.Exec(t, "CREATE UNLOGGED TABLE u (id int)")
	c.Exec(t, "INSERT INTO u SELECT generate_series(1, 1000)")
	c.Exec(t, "CHECKPOINT")
	var tablePath, unloggedPath string
	c.QueryRow(t, "SELECT pg_relation_filepath('t'), pg_relation_filepath('u')").Scan(&tablePath, &unloggedPath)

	ctx := context.Background()
	var phases []string
	full, err := backup.Push(ctx, r, backup.Options{
		Conn: c.ConnString(), PGData: c.DataDir, ObjectSize: 16 << 20,
		Progress: func(p backup.Progress) {
			if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
				phases = append(phases, p.Phase)
			}
		},
	})
	if err != nil {
		t.Fatalf("full backup: %v", err)
	}
	if full.Type != backup.Full || full.Parent != "" || full.StartWAL == "" || full.StopWAL < full.StartWAL {
		t.Fatalf("full backup manifest: type %s parent %q WAL %s..%s", full.Type, full.Parent, full.StartWAL, full.StopWAL)
	}
	if !strings.Contains(full.BackupLabel, "START WAL LOCATION") || full.StopLSN <= full.StartLSN {
		t.Fatalf("backup_label %q, LSNs %s..%s", full.BackupLabel, full.StartLSN, full.StopLSN)
	}
	if got := strings.Join(phases, ","); !strings.HasPrefix(got, "checkpoint") || !strings.HasSuffix(got, "done") {
		t.Errorf("progress phases %s", got)
	}
	files := full.FileMap()
	for _, p := range []string{"PG_VERSION", "global/pg_control", tablePath, unloggedPath + "_init", "postgresql.conf"} {
		if files[p] == nil {
			t.Errorf("backup lacks %s", p)
		}
	}
	for _, p := range []string{"postmaster.pid", "postmaster.opts", unloggedPath} {
		if files[p] != nil {
			t.Errorf("backup has %s, which must be left out", p)
		}
	}
	for path := range files {
		if strings.HasPrefix(path, "pg_wal/") || strings.HasPrefix(path, "pg_replslot/") {
			t.Errorf("backup has %s: pg_wal and pg_replslot contents are left out", path)
		}
	}
	dirs := map[string]bool{}
	for _, d := range full.Dirs {
		dirs[d.Path] = true
	}
	for _, d := range []string{"pg_wal", "base", "global", "pg_tblspc", "pg_replslot"} {
		if !dirs[d] {
			t.Errorf("backup lacks directory %s", d)
		}
	}
	if len(full.PageChecksumErrors) != 0 {
		t.Errorf("page checksum errors on a healthy cluster: %v", full.PageChecksumErrors)
	}
	// Every file reads back as it was, and matches its unit sums; the
	// table (unchanged since the checkpoint) equals the file on disk.
	for i := range full.Files {
		f := &full.Files[i]
		got := readBack(t, r, f)
		if want := unitSums(got); strings.Join(want, ",") != strings.Join(f.Sums, ",") {
			t.Fatalf("%s: unit sums differ from its bytes", f.Path)
		}
	}
	onDisk, err := os.ReadFile(filepath.Join(c.DataDir, tablePath))
	if err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, r, files[tablePath]); !bytes.Equal(got, onDisk) {
		t.Fatalf("%s: backed-up bytes differ from the file", tablePath)
	}
	if len(files[tablePath].Extents) < 2 {
		t.Errorf("%s (%d bytes) is in %d extents, want it split over several objects", tablePath, len(onDisk), len(files[tablePath].Extents))
	}
	if full.Stats.NewBytes != full.Stats.DataBytes || full.Stats.StoredBytes <= 0 {
		t.Errorf("full backup stats %+v", full.Stats)
	}

	// 2% of the rows, in one range: an incremental stores the changed
	// pages, not the table.
	c.Exec(t, "UPDATE t SET v = 'changed' WHERE id <= 2800")
	c.Exec(t, "CHECKPOINT")
	inc, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir, Incremental: true})
	if err != nil {
		t.Fatalf("incremental backup: %v", err)
	}
	if inc.Type != backup.Incremental || inc.Parent != full.ID {
		t.Fatalf("incremental: type %s parent %q, want on %s", inc.Type, inc.Parent, full.ID)
	}
	if inc.Stats.NewBytes*4 > inc.Stats.DataBytes {
		t.Errorf("incremental stored %d new bytes of %d: want far less than the whole", inc.Stats.NewBytes, inc.Stats.DataBytes)
	}
	if deps := inc.DependsOn(); len(deps) != 1 || deps[0] != full.ID {
		t.Errorf("incremental depends on %v, want [%s]", deps, full.ID)
	}
	incFiles := inc.FileMap()
	onDisk, err = os.ReadFile(filepath.Join(c.DataDir, tablePath))
	if err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, r, incFiles[tablePath]); !bytes.Equal(got, onDisk) {
		t.Fatalf("%s: incremental's bytes differ from the file after the update", tablePath)
	}
	for i := range inc.Files {
		f := &inc.Files[i]
		if got := unitSums(readBack(t, r, f)); strings.Join(got, ",") != strings.Join(f.Sums, ",") {
			t.Fatalf("incremental %s: unit sums differ from its bytes", f.Path)
		}
	}
	list, err := backup.List(ctx, r)
	if err != nil || len(list) != 2 || list[0].ID != full.ID || list[1].ID != inc.ID {
		t.Fatalf("List: %v, %v", list, err)
	}
}

func TestPushReportsDamagedPages(t *testing.T) {
	c, r, _ := archivingCluster(t, pgtest.Options{DataChecksums: true})
	c.Exec(t, "CREATE TABLE t (id int)")
	c.Exec(t, "INSERT INTO t SELECT generate_series(1, 10000)")
	c.Exec(t, "CHECKPOINT")
	var rel string
	c.QueryRow(t, "SELECT pg_relation_filepath('t')").Scan(&rel)
	path := filepath.Join(c.DataDir, rel)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the middle of block 2's tuples.
	if _, err := f.WriteAt([]byte{0xAA}, 2*pg.PageSize+5000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m, err := backup.Push(context.Background(), r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir})
	if err != nil {
		t.Fatalf("a damaged page must be reported, not fatal: %v", err)
	}
	if len(m.PageChecksumErrors) != 1 || m.PageChecksumErrors[0] != (backup.PageError{Path: rel, Block: 2}) {
		t.Fatalf("page checksum errors %v, want [%s block 2]", m.PageChecksumErrors, rel)
	}
}

func TestPushRefusals(t *testing.T) {
	c, r, url := archivingCluster(t, pgtest.Options{})
	ctx := context.Background()

	other := pgtest.New(t, pgtest.Options{})
	_, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: other.DataDir})
	if !errors.Is(err, backup.ErrNotReady) || !strings.Contains(err.Error(), "different clusters") {
		t.Errorf("--pgdata of another cluster: %v", err)
	}

	// A cancelled backup leaves nothing: no manifest, no objects.
	cctx, cancel := context.WithCancel(ctx)
	_, err = backup.Push(cctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir,
		Progress: func(p backup.Progress) {
			if p.Phase == "copy" || p.Phase == "wait-wal" {
				cancel()
			}
		}})
	if err == nil {
		t.Fatal("a cancelled backup succeeded")
	}
	complete, incomplete, err := backup.IDs(ctx, r)
	if err != nil || len(complete) != 0 || len(incomplete) != 0 {
		t.Fatalf("after a cancelled backup: complete %v incomplete %v (%v)", complete, incomplete, err)
	}

	// The lease keeps a second backup out while one runs.
	lease, err := r.Acquire(ctx, "backup", repo.LeaseOptions{Purpose: "test"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir})
	if !errors.Is(err, repo.ErrLocked) {
		t.Errorf("backup while the lease is held: %v", err)
	}
	lease.Release(ctx)

	// A backup whose lease is taken over stops as locked (exit 8), not
	// as interrupted (130).
	var once sync.Once
	_, err = backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir,
		Lease: repo.LeaseOptions{Renew: 20 * time.Millisecond},
		Progress: func(p backup.Progress) {
			if p.Phase == "checkpoint" || p.Phase == "copy" {
				once.Do(func() {
					r.Put(ctx, repo.LockKey("backup"), strings.NewReader(`{"token":"x","purpose":"backup-push elsewhere","host":"other","pid":1}`))
				})
			}
		}})
	if !errors.Is(err, repo.ErrLocked) || failure.Of(err).ExitCode() != 8 {
		t.Errorf("backup whose lease was taken over: %v (kind %v), want repo.ErrLocked, exit 8", err, failure.Of(err))
	}

	// A backup-push killed with -9 leaves its half-written objects as
	// temporary files, invisible to listings: the next one removes them.
	killed := filepath.Join(strings.TrimPrefix(url, "file://"), "backups", "20261122T101500F", "data", ".tmp-00000000deadbeef")
	if err := os.MkdirAll(filepath.Dir(killed), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(killed, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-10 * time.Minute)
	if err := os.Chtimes(killed, old, old); err != nil {
		t.Fatal(err)
	}

	// WAL that never reaches the repository: no backup.
	c.Exec(t, "ALTER SYSTEM SET archive_command = 'false'")
	c.Reload(t)
	_, err = backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir, ArchiveTimeout: 3 * time.Second})
	if !errors.Is(err, backup.ErrWALMissing) {
		t.Errorf("backup whose WAL is not archived: %v", err)
	}
	if complete, incomplete, _ := backup.IDs(ctx, r); len(complete)+len(incomplete) != 0 {
		t.Errorf("a backup without its WAL left %v %v", complete, incomplete)
	}
	if _, err := os.Stat(filepath.Dir(filepath.Dir(killed))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed backup's temporary file is still there after the next backup-push (%v)", err)
	}
}

// TestPushRemote takes the same cluster's backup locally and over the
// replication protocol: the same files, the same bytes for files that do
// not change, and incrementals work in both directions.
func TestPushRemote(t *testing.T) {
	c, r, _ := archivingCluster(t, pgtest.Options{DataChecksums: true})
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	c.Exec(t, "INSERT INTO t SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 60000) i")
	tsDir := c.MkdirOwned(t, "ts1")
	c.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
	c.Exec(t, "CREATE TABLE in_ts (id int) TABLESPACE ts1")
	c.Exec(t, "INSERT INTO in_ts SELECT generate_series(1, 5000)")
	c.Exec(t, "CHECKPOINT")
	var tablePath, tsPath string
	c.QueryRow(t, "SELECT pg_relation_filepath('t'), pg_relation_filepath('in_ts')").Scan(&tablePath, &tsPath)
	ctx := context.Background()

	local, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir})
	if err != nil {
		t.Fatalf("local backup: %v", err)
	}
	for _, comp := range []string{"", "lz4", "zstd", "gzip"} {
		remote, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), Remote: true, ServerCompression: comp, ObjectSize: 8 << 20})
		if err != nil {
			t.Fatalf("remote backup (server compression %q): %v", comp, err)
		}
		if remote.Mode != "remote" || !strings.Contains(remote.BackupLabel, "START WAL LOCATION") || remote.StopLSN <= remote.StartLSN {
			t.Fatalf("remote manifest: mode %s label %q LSNs %s..%s", remote.Mode, remote.BackupLabel, remote.StartLSN, remote.StopLSN)
		}
		lf, rf := local.FileMap(), remote.FileMap()
		for p := range lf {
			if rf[p] == nil && !strings.HasPrefix(p, "pg_stat") {
				t.Errorf("remote backup lacks %s", p)
			}
		}
		for p := range rf {
			if lf[p] == nil && !strings.HasPrefix(p, "pg_stat") && !strings.HasPrefix(p, "pg_logical") {
				t.Errorf("remote backup has %s, the local one does not", p)
			}
		}
		if len(remote.Tablespaces) != 1 || remote.Tablespaces[0].Location != tsDir {
			t.Errorf("remote tablespaces %+v, want one at %s", remote.Tablespaces, tsDir)
		}
		if !strings.Contains(remote.TablespaceMap, tsDir) {
			t.Errorf("remote tablespace_map %q lacks %s", remote.TablespaceMap, tsDir)
		}
		for _, p := range []string{tablePath, tsPath} {
			onDisk, err := os.ReadFile(filepath.Join(c.DataDir, p))
			if err != nil {
				t.Fatal(err)
			}
			if got := readBack(t, r, rf[p]); !bytes.Equal(got, onDisk) {
				t.Fatalf("remote %s differs from the file", p)
			}
		}
		for i := range remote.Files {
			f := &remote.Files[i]
			if got := unitSums(readBack(t, r, f)); strings.Join(got, ",") != strings.Join(f.Sums, ",") {
				t.Fatalf("remote %s: unit sums differ from its bytes", f.Path)
			}
		}
	}
	c.Exec(t, "UPDATE t SET v = 'x' WHERE id <= 600")
	inc, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), Remote: true, Incremental: true})
	if err != nil {
		t.Fatalf("remote incremental: %v", err)
	}
	if inc.Type != backup.Incremental || inc.Stats.NewBytes*4 > inc.Stats.DataBytes {
		t.Errorf("remote incremental: type %s, %d new of %d bytes", inc.Type, inc.Stats.NewBytes, inc.Stats.DataBytes)
	}
	// What backup-push writes, local or remote, obeys the manifest rules.
	ids, _, err := backup.IDs(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := backup.ReadManifest(ctx, r, id); err != nil {
			t.Errorf("backup-push wrote a manifest that breaks the rules: %v", err)
		}
	}
	c.Exec(t, "CHECKPOINT")
	onDisk, err := os.ReadFile(filepath.Join(c.DataDir, tablePath))
	if err != nil {
		t.Fatal(err)
	}
	if got := readBack(t, r, inc.FileMap()[tablePath]); len(got) != len(onDisk) {
		t.Errorf("remote incremental %s: %d bytes, file has %d", tablePath, len(got), len(onDisk))
	}
}

// TestIncrementalWithoutChecksums: without data checksums or
// wal_log_hints, hint bits change pages without a new LSN, and the free
// space and visibility maps change without stamping theirs: an
// incremental must still describe exactly the bytes a restore writes.
func TestIncrementalWithoutChecksums(t *testing.T) {
	for _, checksums := range []bool{false, true} {
		t.Run(map[bool]string{false: "no checksums", true: "checksums"}[checksums], func(t *testing.T) {
			c, r, _ := archivingCluster(t, pgtest.Options{DataChecksums: checksums})
			c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
			c.Exec(t, "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 100000) i")
			c.Exec(t, "CHECKPOINT")
			ctx := context.Background()
			if _, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir}); err != nil {
				t.Fatal(err)
			}
			// Hint bits (first read after the insert), then deletions and
			// a vacuum (free space map, visibility map), then a checkpoint
			// so all of it is on disk.
			c.Exec(t, "SELECT count(*) FROM t")
			c.Exec(t, "DELETE FROM t WHERE id % 7 = 0")
			c.Exec(t, "VACUUM t")
			c.Exec(t, "SELECT count(*) FROM t")
			c.Exec(t, "CHECKPOINT")
			inc, err := backup.Push(ctx, r, backup.Options{Conn: c.ConnString(), PGData: c.DataDir, Incremental: true})
			if err != nil {
				t.Fatal(err)
			}
			if inc.Type != backup.Incremental {
				t.Fatalf("type %s", inc.Type)
			}
			for i := range inc.Files {
				f := &inc.Files[i]
				if got := unitSums(readBack(t, r, f)); strings.Join(got, ",") != strings.Join(f.Sums, ",") {
					t.Fatalf("%s: the unit sums do not describe the bytes the backup restores", f.Path)
				}
			}
		})
	}
}

// TestPushSameSecond: backups taken back to back get increasing ids, and
// none of them can disturb another.
func TestPushSameSecond(t *testing.T) {
	c, r, _ := archivingCluster(t, pgtest.Options{})
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		o := backup.Options{Conn: c.ConnString(), PGData: c.DataDir, Incremental: i == 1}
		m, err := backup.Push(ctx, r, o)
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		if len(ids) > 0 && m.ID[:15] <= ids[len(ids)-1][:15] {
			t.Fatalf("backup %d got id %s after %s: ids must increase", i, m.ID, ids[len(ids)-1])
		}
		ids = append(ids, m.ID)
	}
	list, err := backup.List(ctx, r)
	if err != nil || len(list) != 3 {
		t.Fatalf("List: %d backups, %v", len(list), err)
	}
	for i, m := range list {
		if m.ID != ids[i] {
			t.Errorf("backup %d is %s, want %s", i, m.ID, ids[i])
		}
	}
	latest, err := backup.Resolve(ctx, r, backup.Latest)
	if err != nil || latest.ID != ids[2] {
		t.Errorf("LATEST is %v (%v), want %s", latest, err, ids[2])
	}
}
