package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/restore"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
)

// The backup end-to-end tests: base backups taken by the binary while
// pgbench writes, restored by the binary into fresh clusters (to a point in
// time, by delta over a diverged copy, from a corrupted repository, after
// retention), each started by PostgreSQL and compared row for row.

// Small data: the machine is shared; pgbench -i at this scale is ~75 MB.
const backupScale = 5

// TestBackupPITR takes a full and then an incremental backup while pgbench
// writes, stops pgbench, commits marker rows one per transaction (recording
// after each commit the WAL position, the time, and a named restore point),
// and restores each backup into a new cluster to a point between two
// markers, by time, by LSN and by restore point name. Every restored
// cluster must have exactly the markers committed before its target, the
// pgbench tables of the primary row for row, and a clean pg_amcheck.
func TestBackupPITR(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testBackupPITR)
}

func testBackupPITR(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary, url := archivingPrimary(t, kind, s3)
	psql(t, primary, "CREATE EXTENSION amcheck")
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(backupScale))

	bench := startPgbench(t, primary)
	history := func() int { n, _ := strconv.Atoi(psql(t, primary, "SELECT count(*) FROM pgbench_history")); return n }
	h0 := history()
	full := backupPush(t, primary, url)
	h1 := history()
	incr := backupPush(t, primary, url, "--incremental")
	h2 := history()
	rounds := bench.stop(t)
	t.Logf("%s: full %s (%s..%s, %s) and incremental %s (%s new of %s, %s) taken while %d pgbench rounds ran; %d and %d transactions committed during them",
		kind, full.ID, full.StartLSN, full.StopLSN, secs(full.Duration), incr.ID, mib(incr.NewBytes), mib(incr.DataBytes), secs(incr.Duration), rounds, h1-h0, h2-h1)
	if full.Type != "full" || incr.Type != "incremental" || incr.Parent != full.ID {
		t.Fatalf("backup types: %s is %q, %s is %q with parent %q; want full, then incremental on %s", full.ID, full.Type, incr.ID, incr.Type, incr.Parent, full.ID)
	}
	if h1 == h0 || h2 == h1 {
		t.Errorf("pgbench committed nothing during a backup (history rows %d, %d, %d): the backups did not run under load", h0, h1, h2)
	}
	if incr.NewBytes >= incr.DataBytes {
		t.Errorf("incremental %s stored %d new bytes of %d: nothing was reused from %s", incr.ID, incr.NewBytes, incr.DataBytes, full.ID)
	}
	for _, id := range []string{full.ID, incr.ID} {
		if v := wf(t, primary, "verify", "--repo", url, id); v.code != 0 {
			t.Errorf("verify %s: %v\n%s", id, v, v.stdout)
		}
	}
	// Nothing writes to the pgbench tables from here on: every restore
	// past this point must have them exactly as the primary has them now.
	want := tablesDigest(t, primary, pgbenchTables...)

	marks := commitMarkers(t, primary, 6)
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 2*time.Minute)
	t.Logf("%s: primary and backups ready in %s", kind, time.Since(start).Round(time.Second))

	for _, tc := range []struct {
		name   string
		backup string
		want   string // the backup restore should pick
		k      int    // markers 1..k must be there, k+1.. not
		target []string
	}{
		{"full to a time", full.ID, full.ID, 3, []string{"--target-time", marks[3].time}},
		{"incremental to an LSN", incr.ID, incr.ID, 4, []string{"--target-lsn", marks[4].lsn}},
		{"LATEST to a restore point", "LATEST", incr.ID, 2, []string{"--target-name", marks[2].point}},
	} {
		step := time.Now()
		dst := newRestoreTarget(t)
		res := mustRestore(t, dst, url, tc.backup, append(tc.target, "--target-action", "promote")...)
		if res.Backup != tc.want {
			t.Errorf("%s: restore %s chose backup %s, want %s", tc.name, tc.backup, res.Backup, tc.want)
		}
		restored := time.Since(step)
		dst.configure(t)
		dst.c.Start(t)
		waitPromoted(t, dst.c, 3*time.Minute)
		t.Logf("%s: %s: restore %s (%d files, %s) in %s, recovery to %q and promotion in %s; %s",
			kind, tc.name, res.Backup, res.Files, mib(res.BytesFetched), restored.Round(time.Millisecond), res.RecoveryTarget,
			(time.Since(step) - restored).Round(time.Millisecond), stopMessage(t, dst.c))
		wantMarks := markerList(tc.k)
		if got := psql(t, dst.c, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM marker"); got != wantMarks {
			t.Errorf("%s: restored markers %q, want exactly %q (target %v)", tc.name, got, wantMarks, tc.target)
		}
		if got := tablesDigest(t, dst.c, pgbenchTables...); got != want {
			t.Errorf("%s: pgbench tables differ from the primary's:\n got %s\nwant %s", tc.name, got, want)
		}
		amcheck(t, dst.c)
		dst.c.Stop(t, pgtest.StopFast)
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// TestBackupDelta restores a backup, starts it and makes it diverge, then
// delta-restores the same backup over it: only the files that changed are
// fetched, and the directory is byte for byte what a full restore gives,
// and so is the data once both are started.
func TestBackupDelta(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testBackupDelta)
}

func testBackupDelta(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary, url := archivingPrimary(t, kind, s3)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", strconv.Itoa(backupScale))
	b := backupPush(t, primary, url)
	// Some WAL after the backup for recovery to replay (not spread over
	// pgbench_accounts: the divergence below should leave most of it as
	// the backup has it, so the delta restore has something to keep).
	psql(t, primary, "CREATE TABLE after_backup AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g")
	psql(t, primary, "UPDATE pgbench_tellers SET tbalance = tbalance + tid")
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 2*time.Minute)
	want := tablesDigest(t, primary, append(pgbenchTables, "after_backup")...)
	m := readManifest(t, url, b.ID)

	// The diverged copy: restored, recovered, promoted, then written to.
	a := newRestoreTarget(t)
	first := mustRestore(t, a, url, b.ID)
	if first.Delta || first.FilesFetched != first.Files || first.Files != len(m.Files) {
		t.Errorf("first restore: %+v; want every one of the manifest's %d files fetched", first, len(m.Files))
	}
	a.configure(t)
	a.c.Start(t)
	waitPromoted(t, a.c, 3*time.Minute)
	psql(t, a.c, "CREATE TABLE diverged AS SELECT g AS id FROM generate_series(1, 50000) g")
	psql(t, a.c, "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 200")
	psql(t, a.c, "UPDATE pgbench_branches SET bbalance = bbalance - 7")
	psql(t, a.c, "CHECKPOINT")
	if got := tablesDigest(t, a.c, pgbenchTables...); got == tablesDigest(t, primary, pgbenchTables...) {
		t.Fatal("the copy did not diverge")
	}
	a.c.Stop(t, pgtest.StopFast)

	step := time.Now()
	delta := mustRestore(t, a, url, b.ID, "--delta")
	deltaTook := time.Since(step)
	step = time.Now()
	fresh := newRestoreTarget(t)
	full := mustRestore(t, fresh, url, b.ID)
	fullTook := time.Since(step)
	t.Logf("%s: delta restore over the diverged copy in %s: %d of %d files fetched (%s of %s), %d kept, %d files and %d directories removed, %d objects read; full restore in %s: %d files (%s)",
		kind, deltaTook.Round(time.Millisecond), delta.FilesFetched, delta.Files, mib(delta.BytesFetched), mib(delta.Bytes),
		delta.FilesKept, delta.FilesRemoved, delta.DirsRemoved, delta.ObjectsRead,
		fullTook.Round(time.Millisecond), full.FilesFetched, mib(full.BytesFetched))
	if !delta.Delta || delta.Files != len(m.Files) || delta.FilesKept+delta.FilesFetched != delta.Files {
		t.Errorf("delta restore reports %+v; want delta with kept + fetched = the manifest's %d files", delta, len(m.Files))
	}
	if delta.FilesFetched == 0 || delta.FilesFetched*10 > delta.Files {
		t.Errorf("delta restore fetched %d of %d files; want some, and at most a tenth", delta.FilesFetched, delta.Files)
	}
	if delta.BytesFetched >= delta.Bytes/2 {
		t.Errorf("delta restore fetched %d of %d bytes; want well under half", delta.BytesFetched, delta.Bytes)
	}
	if delta.FilesRemoved == 0 {
		t.Errorf("delta restore removed no file, but the diverged copy had files the backup has not (table diverged, WAL of timeline 2)")
	}
	if full.FilesFetched != full.Files {
		t.Errorf("full restore fetched %d of %d files", full.FilesFetched, full.Files)
	}

	// Right after the restores, before anything starts: the same tree,
	// every file of the manifest byte-identical.
	compareTrees(t, a.c.DataDir, fresh.c.DataDir)
	for _, f := range m.Files {
		pa, pb := filepath.Join(a.c.DataDir, f.Path), filepath.Join(fresh.c.DataDir, f.Path)
		if f.Path == "postgresql.conf" {
			continue // the restore appended the include line; compareTrees checks it
		}
		if fi, err := os.Stat(pa); err != nil || fi.Size() != f.Size {
			t.Errorf("delta restore: %s: want %d bytes as in the manifest (%v)", f.Path, f.Size, err)
			continue
		}
		if !sameFile(t, pa, pb) {
			t.Errorf("%s differs between the delta and the full restore", f.Path)
		}
	}

	for _, d := range []*restoreTarget{a, fresh} {
		d.configure(t)
		d.c.Start(t)
		waitPromoted(t, d.c, 3*time.Minute)
	}
	gotDelta := tablesDigest(t, a.c, append(pgbenchTables, "after_backup")...)
	gotFull := tablesDigest(t, fresh.c, append(pgbenchTables, "after_backup")...)
	if gotDelta != want || gotFull != want {
		t.Errorf("restored data differs from the primary's:\ndelta %s\n full %s\n want %s", gotDelta, gotFull, want)
	}
	tables := "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
	if ta, tf := psql(t, a.c, tables), psql(t, fresh.c, tables); ta != tf {
		t.Errorf("tables after the delta restore: %s; after the full restore: %s", ta, tf)
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// TestBackupCorrupt flips one byte in one data object of a backup: verify
// and restore must both fail with exit 6 naming the object, and the
// restore must leave nothing PostgreSQL could start.
func TestBackupCorrupt(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testBackupCorrupt)
}

func testBackupCorrupt(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary, url := archivingPrimary(t, kind, s3)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", "2")
	b := backupPush(t, primary, url)
	mustWF(t, primary, "verify", "--repo", url, b.ID)

	r := openRepo(t, url)
	key, size := largestDataObject(t, r, b.ID)
	flipByte(t, kind, url, r, key, size/2)
	t.Logf("%s: flipped the byte at offset %d of %s (%d bytes)", kind, size/2, key, size)

	v := wf(t, primary, "verify", "--repo", url, b.ID)
	if v.code != 6 || !strings.Contains(v.stderr, key) {
		t.Errorf("verify %s of a backup with a corrupt object: %v; want exit 6 naming %s", b.ID, v, key)
	} else {
		t.Logf("%s: verify: %v", kind, v)
	}

	dst := newRestoreTarget(t)
	res := restoreCmd(t, dst, url, b.ID)
	if res.code != 6 || !strings.Contains(res.stderr, key) {
		t.Errorf("restore %s from a corrupt object: %v; want exit 6 naming %s", b.ID, res, key)
	} else {
		t.Logf("%s: restore: %v", kind, res)
	}
	for _, name := range []string{"backup_label", "global/pg_control", "recovery.signal", "standby.signal"} {
		if _, err := os.Stat(filepath.Join(dst.c.DataDir, name)); err == nil {
			t.Errorf("the failed restore left %s in %s", name, dst.c.DataDir)
		}
	}
	// Whatever is there, PostgreSQL must refuse to start on it.
	if _, err := os.Stat(dst.c.DataDir); err == nil {
		dst.configure(t)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		st := runCmd(t, dst.c.Command(ctx, "pg_ctl", "start", "-w", "-t", "20", "-D", dst.c.DataDir, "-l", dst.c.LogFile))
		if st.code == 0 {
			runCmd(t, dst.c.Command(ctx, "pg_ctl", "stop", "-m", "immediate", "-D", dst.c.DataDir))
			t.Errorf("PostgreSQL started on the directory of a failed restore")
		} else {
			t.Logf("%s: pg_ctl start on the failed restore's directory: %v", kind, st)
		}
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// TestBackupRetention takes three full backups and an incremental on the
// second, deletes with --retain-full 2, and checks that the oldest full
// and the WAL only it needed are gone, that the kept WAL is complete, that
// verify --wal passes, and that every kept backup restores to the
// primary's data.
func TestBackupRetention(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, testBackupRetention)
}

func testBackupRetention(t *testing.T, kind repoKind, s3 testenv.S3Env) {
	start := time.Now()
	primary, url := archivingPrimary(t, kind, s3)
	pgRun(t, primary, 5*time.Minute, "pgbench", "-i", "-q", "-s", "2")
	work := func() {
		pgRun(t, primary, time.Minute, "pgbench", "-n", "-c", "2", "-t", "100")
		psql(t, primary, "SELECT pg_switch_wal()")
	}
	// The backups follow each other closely (work takes well under a
	// second here), so two of the same type may start within one second:
	// backup-push must then wait for a fresh id.
	f1 := backupPush(t, primary, url)
	work()
	f2 := backupPush(t, primary, url)
	work()
	i2 := backupPush(t, primary, url, "--incremental")
	work()
	f3 := backupPush(t, primary, url, "--full")
	work()
	last := psql(t, primary, "SELECT pg_walfile_name(pg_switch_wal())")
	waitArchived(t, primary, last, 2*time.Minute)
	want := tablesDigest(t, primary, pgbenchTables...)
	if i2.Type != "incremental" || i2.Parent != f2.ID {
		t.Fatalf("%s is %q on %q; want an incremental on %s", i2.ID, i2.Type, i2.Parent, f2.ID)
	}
	if got, want := backupList(t, primary, url), []string{f1.ID, f2.ID, i2.ID, f3.ID}; !slices.Equal(got, want) {
		t.Fatalf("backup-list --json: %v, want %v", got, want)
	}
	r := openRepo(t, url)
	before := walNames(t, r)
	if older := walBefore(before, f2.StartWAL); len(older) == 0 {
		t.Fatalf("no WAL in the repository older than %s (the oldest backup to keep): the test proves nothing; WAL: %v", f2.StartWAL, before)
	}

	dry := mustWF(t, primary, "backup-delete", "--repo", url, "--retain-full", "2", "--dry-run")
	if !strings.Contains(dry.stdout+dry.stderr, f1.ID) {
		t.Errorf("backup-delete --dry-run does not name %s: %s%s", f1.ID, dry.stdout, dry.stderr)
	}
	if got := backupList(t, primary, url); len(got) != 4 {
		t.Fatalf("backup-delete --dry-run deleted backups: %v left", got)
	}
	if got := walNames(t, r); !slices.Equal(got, before) {
		t.Fatalf("backup-delete --dry-run deleted WAL: %d files before, %d after", len(before), len(got))
	}

	del := mustWF(t, primary, "backup-delete", "--repo", url, "--retain-full", "2")
	t.Logf("%s: backup-delete --retain-full 2: %s", kind, strings.TrimSpace(del.stdout))
	if got, want := backupList(t, primary, url), []string{f2.ID, i2.ID, f3.ID}; !slices.Equal(got, want) {
		t.Fatalf("after backup-delete --retain-full 2, backup-list --json: %v, want %v", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.Store().List(ctx, repo.BackupPrefix(f1.ID), func(oi storage.ObjectInfo) error {
		t.Errorf("%s is still in the repository after its backup was deleted", oi.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	after := walNames(t, r)
	if older := walBefore(after, f2.StartWAL); len(older) > 0 {
		t.Errorf("WAL older than %s (the start of %s, the oldest kept backup) is still there: %v", f2.StartWAL, f2.ID, older)
	}
	var kept []string
	for _, n := range after {
		if isSegmentName(n) && n >= f2.StartWAL {
			kept = append(kept, n)
		}
	}
	sort.Strings(kept)
	if len(kept) == 0 || kept[0] != f2.StartWAL || kept[len(kept)-1] != last {
		t.Errorf("kept segments %v; want %s .. %s", kept, f2.StartWAL, last)
	}
	checkContiguous(t, kept)
	for _, n := range before {
		if n >= f2.StartWAL[:24] && !slices.Contains(after, n) {
			t.Errorf("%s was deleted but the kept backups need it", n)
		}
	}
	t.Logf("%s: WAL files before the delete: %d, after: %d (segments %s .. %s)", kind, len(before), len(after), kept[0], kept[len(kept)-1])

	if v := wf(t, primary, "verify", "--repo", url, "--wal"); v.code != 0 {
		t.Errorf("verify --wal after backup-delete: %v\n%s", v, v.stdout)
	} else {
		t.Logf("%s: verify --wal: %s", kind, strings.Join(strings.Fields(v.stdout), " "))
	}

	for _, id := range []string{f2.ID, i2.ID, f3.ID} {
		step := time.Now()
		dst := newRestoreTarget(t)
		if r := restoreCmd(t, dst, url, id); r.code != 0 {
			t.Errorf("restore of kept backup %s: %v", id, r)
			continue
		}
		dst.configure(t)
		dst.c.Start(t)
		waitPromoted(t, dst.c, 3*time.Minute)
		if got := tablesDigest(t, dst.c, pgbenchTables...); got != want {
			t.Errorf("restore of kept backup %s differs from the primary:\n got %s\nwant %s", id, got, want)
		}
		dst.c.Stop(t, pgtest.StopFast)
		t.Logf("%s: kept backup %s restored and replayed to the end of the archive in %s", kind, id, time.Since(step).Round(time.Millisecond))
	}
	t.Logf("%s: total %s", kind, time.Since(start).Round(time.Second))
}

// TestBackupSameSecond takes full backups of a small idle cluster back to
// back, so several start within the second the previous one started in:
// each must get its own id (backup-push waits for the next second) and
// succeed.
func TestBackupSameSecond(t *testing.T) {
	s3 := needE2E(t)
	for _, kind := range repoKinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			primary, url := archivingPrimary(t, kind, s3)
			var ids []string
			for range 4 {
				step := time.Now()
				r := wf(t, primary, "backup-push", "--repo", url, "--json")
				if r.code != 0 {
					t.Errorf("backup-push right after %v: %v", ids, r)
					// The backups taken before must be intact.
					if v := wf(t, primary, "verify", "--repo", url); v.code != 0 {
						t.Errorf("verify after the failed backup-push: %v\n%s", v, v.stdout)
					}
					break
				}
				var p pushed
				if err := json.Unmarshal([]byte(lastLine(r.stdout)), &p); err != nil {
					t.Fatalf("backup-push --json printed %q: %v", r.stdout, err)
				}
				if n := len(ids); n > 0 && p.ID <= ids[n-1] {
					t.Errorf("backup %s after %s: ids must be fresh and increasing", p.ID, ids[n-1])
				}
				ids = append(ids, p.ID)
				t.Logf("%s: backup %s in %s", kind, p.ID, time.Since(step).Round(time.Millisecond))
			}
			if got := backupList(t, primary, url); !slices.Equal(got, ids) {
				t.Errorf("backup-list: %v, want %v (a backup-push, failed or not, must leave the others alone)", got, ids)
			}
		})
	}
}

// archivingPrimary starts a cluster with data checksums whose
// archive_command is walferry archive-push into a fresh, initialized
// repository of the given kind, and returns it with the repository's URL.
func archivingPrimary(t *testing.T, kind repoKind, s3 testenv.S3Env) (*pgtest.Cluster, string) {
	t.Helper()
	primary := pgtest.New(t, pgtest.Options{DataChecksums: true})
	url := newRepoURL(t, primary, kind, s3)
	mustWF(t, primary, "repo", "init", "--repo", url, "--pgdata", primary.DataDir)
	archiveCommand := shellQuote(walferryBin) + " archive-push --repo " + shellQuote(url) + " %p"
	primary.AppendConf(t,
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = "+sqlQuote(archiveCommand),
		"max_wal_size = 1GB",
		"log_checkpoints = off",
	)
	primary.Start(t)
	return primary, url
}

// pushed is the JSON summary backup-push --json prints.
type pushed struct {
	ID          string  `json:"id"`
	Type        string  `json:"type"`
	Parent      string  `json:"parent"`
	StartLSN    string  `json:"start_lsn"`
	StopLSN     string  `json:"stop_lsn"`
	StartWAL    string  `json:"start_wal"`
	StopWAL     string  `json:"stop_wal"`
	Files       int     `json:"files"`
	DataBytes   int64   `json:"data_bytes"`
	NewBytes    int64   `json:"new_bytes"`
	StoredBytes int64   `json:"stored_bytes"`
	Duration    float64 `json:"duration_seconds"`
}

// backupPush runs walferry backup-push --json on the primary and returns
// its summary.
func backupPush(t *testing.T, primary *pgtest.Cluster, url string, args ...string) pushed {
	t.Helper()
	r := mustWF(t, primary, append([]string{"backup-push", "--repo", url, "--json"}, args...)...)
	var p pushed
	if err := json.Unmarshal([]byte(lastLine(r.stdout)), &p); err != nil || p.ID == "" {
		t.Fatalf("backup-push --json printed %q: %v", r.stdout, err)
	}
	return p
}

// backupList returns the ids walferry backup-list --json lists, in its order.
func backupList(t *testing.T, c *pgtest.Cluster, url string) []string {
	t.Helper()
	r := mustWF(t, c, "backup-list", "--repo", url, "--json")
	type entry struct {
		ID string `json:"id"`
	}
	var list []entry
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("backup-list --json printed %q: %v", r.stdout, err)
	}
	ids := make([]string, 0, len(list))
	for _, e := range list {
		ids = append(ids, e.ID)
	}
	return ids
}

// restoreTarget is a cluster made by initdb whose data directory a restore
// replaces; it keeps the cluster's own port and socket configuration.
type restoreTarget struct {
	c    *pgtest.Cluster
	conf map[string][]byte // postgresql.conf and pgtest.conf as pgtest wrote them
}

// newRestoreTarget makes a cluster, saves its configuration and removes
// its data directory, ready for walferry restore.
func newRestoreTarget(t *testing.T) *restoreTarget {
	t.Helper()
	d := &restoreTarget{c: pgtest.New(t, pgtest.Options{}), conf: map[string][]byte{}}
	for _, name := range []string{"postgresql.conf", "pgtest.conf"} {
		b, err := os.ReadFile(filepath.Join(d.c.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		d.conf[name] = b
	}
	if err := os.RemoveAll(d.c.DataDir); err != nil {
		t.Fatal(err)
	}
	return d
}

// configure puts the cluster's own postgresql.conf and pgtest.conf back
// over the restored primary's, without archiving (restored clusters must
// not push their new timeline into the repository under test). The
// recovery settings the restore wrote are in walferry.conf: the lines of
// the restored postgresql.conf that include it are kept, at the end.
func (d *restoreTarget) configure(t *testing.T) {
	t.Helper()
	restored, _ := os.ReadFile(filepath.Join(d.c.DataDir, "postgresql.conf")) // none after a failed restore
	for name, b := range d.conf {
		if name == "postgresql.conf" {
			b = append(bytes.Clone(b), "archive_mode = off\n"...)
			b = append(b, walferryIncludes(string(restored))...)
		}
		writeOwned(t, d.c, filepath.Join(d.c.DataDir, name), b)
	}
}

// walferryIncludes returns the lines of a postgresql.conf that include
// walferry.conf, with the comment line above each.
func walferryIncludes(conf string) string {
	var out strings.Builder
	lines := strings.Split(conf, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "include") && strings.Contains(l, "walferry.conf") {
			if i > 0 && strings.HasPrefix(lines[i-1], "#") {
				out.WriteString(lines[i-1] + "\n")
			}
			out.WriteString(l + "\n")
		}
	}
	return out.String()
}

// restored is what walferry restore --json reports.
type restored = restore.Result

// restoreCmd runs walferry restore id --pgdata <d's data directory> --json
// as the cluster's OS user, from the cluster's directory (the data
// directory may not exist yet).
func restoreCmd(t *testing.T, d *restoreTarget, url, id string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	all := append([]string{"restore", id, "--repo", url, "--pgdata", d.c.DataDir, "--json"}, args...)
	return runCmd(t, d.c.Command(ctx, walferryBin, all...))
}

// mustRestore runs restoreCmd, fails t unless it succeeds, and returns its
// report.
func mustRestore(t *testing.T, d *restoreTarget, url, id string, args ...string) restored {
	t.Helper()
	r := restoreCmd(t, d, url, id, args...)
	if r.code != 0 {
		t.Fatalf("walferry restore %s %s: %v\n%s", id, strings.Join(args, " "), r, r.stdout)
	}
	var res restored
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Backup == "" {
		t.Fatalf("walferry restore --json printed %q: %v", r.stdout, err)
	}
	checkSettingsFiles(t, d, res)
	return res
}

// checkSettingsFiles checks where a restore put its recovery settings:
// restore_command in walferry.conf, which the restored postgresql.conf
// includes at its end, none in postgresql.auto.conf, and no warning.
func checkSettingsFiles(t *testing.T, d *restoreTarget, res restored) {
	t.Helper()
	dir := d.c.DataDir
	if res.SettingsFile != filepath.Join(dir, "walferry.conf") || res.ConfigFile != filepath.Join(dir, "postgresql.conf") || len(res.Warnings) > 0 {
		t.Errorf("restore: settings in %s, config %s, warnings %q; want %s/walferry.conf, %s/postgresql.conf, none", res.SettingsFile, res.ConfigFile, res.Warnings, dir, dir)
	}
	settings, err := os.ReadFile(filepath.Join(dir, "walferry.conf"))
	if err != nil || !strings.Contains(string(settings), "\nrestore_command = '"+walferryBin+" archive-get ") {
		t.Errorf("walferry.conf has no restore_command running %s archive-get (%v):\n%s", walferryBin, err, settings)
	}
	conf, err := os.ReadFile(filepath.Join(dir, "postgresql.conf"))
	if err != nil || !strings.HasSuffix(string(conf), "\ninclude_if_exists = 'walferry.conf'\n") {
		t.Errorf("the restored postgresql.conf does not end with the include of walferry.conf (%v):\n%s", err, conf)
	}
	if auto, err := os.ReadFile(filepath.Join(dir, "postgresql.auto.conf")); err != nil || strings.Contains(string(auto), "restore_command") ||
		strings.Contains(string(auto), "recovery_target") {
		t.Errorf("postgresql.auto.conf has recovery settings (%v):\n%s", err, auto)
	}
}

// readManifest reads a backup's manifest through walferry's Go API.
func readManifest(t *testing.T, url, id string) *backup.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := backup.ReadManifest(ctx, openRepo(t, url), id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// bench runs pgbench rounds in the background until stopped.
type bench struct {
	quit chan struct{}
	done chan error
	n    chan int
}

// startPgbench runs short pgbench rounds (2 clients) back to back on c
// until stop is called.
func startPgbench(t *testing.T, c *pgtest.Cluster) *bench {
	t.Helper()
	b := &bench{quit: make(chan struct{}), done: make(chan error, 1), n: make(chan int, 1)}
	go func() {
		rounds := 0
		defer func() { b.n <- rounds }()
		for {
			select {
			case <-b.quit:
				b.done <- nil
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			out, err := c.Command(ctx, "pgbench", "-n", "-c", "2", "-j", "2", "-T", "3").CombinedOutput()
			cancel()
			if err != nil {
				b.done <- fmt.Errorf("pgbench: %v\n%s", err, out)
				return
			}
			rounds++
		}
	}()
	t.Cleanup(func() {
		select {
		case <-b.quit:
		default:
			close(b.quit)
			<-b.done
		}
	})
	return b
}

// stop ends the rounds after the current one and returns how many ran.
func (b *bench) stop(t *testing.T) int {
	t.Helper()
	close(b.quit)
	if err := <-b.done; err != nil {
		t.Fatal(err)
	}
	return <-b.n
}

// marker is what the primary said right after committing one marker row.
type marker struct {
	lsn   string // pg_current_wal_lsn() after the commit
	time  string // clock_timestamp() after the commit, UTC
	point string // a restore point made after the commit
}

// commitMarkers creates table marker and commits rows 1..n, one per
// transaction, recording after each commit its position, time and a
// restore point; a pause separates each record from the next commit.
// The result is indexed by row id (index 0 is unused).
func commitMarkers(t *testing.T, c *pgtest.Cluster, n int) []marker {
	t.Helper()
	psql(t, c, "CREATE TABLE marker (id int PRIMARY KEY, committed timestamptz NOT NULL)")
	out := make([]marker, n+1)
	for k := 1; k <= n; k++ {
		time.Sleep(300 * time.Millisecond)
		psql(t, c, fmt.Sprintf("INSERT INTO marker VALUES (%d, clock_timestamp())", k))
		row := psql(t, c, `SELECT pg_current_wal_lsn() || ' ' || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'`)
		lsn, ts, _ := strings.Cut(row, " ")
		out[k] = marker{lsn: lsn, time: ts, point: fmt.Sprintf("marker_%d", k)}
		psql(t, c, "SELECT pg_create_restore_point("+sqlQuote(out[k].point)+")")
		time.Sleep(300 * time.Millisecond)
	}
	return out
}

func markerList(k int) string {
	var ids []string
	for i := 1; i <= k; i++ {
		ids = append(ids, strconv.Itoa(i))
	}
	return strings.Join(ids, ",")
}

var pgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// tablesDigest returns, per table, the row count and the md5 of every row
// as text in a total order.
func tablesDigest(t *testing.T, c *pgtest.Cluster, tables ...string) string {
	t.Helper()
	var parts []string
	for _, tb := range tables {
		parts = append(parts, fmt.Sprintf(
			"(SELECT %s || '=' || count(*) || ':' || coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '-') FROM %s r)",
			sqlQuote(tb), tb))
	}
	return psql(t, c, "SELECT concat_ws(' ', "+strings.Join(parts, ", ")+")")
}

// amcheck runs pg_amcheck on the cluster's postgres database (tables with
// their TOAST, all B-tree indexes, every index entry looked up in its
// heap) and fails t on any report.
func amcheck(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := runCmd(t, c.Command(ctx, "pg_amcheck", "-d", "postgres", "--heapallindexed", "--parent-check"))
	if r.code != 0 || strings.TrimSpace(r.stdout) != "" {
		t.Errorf("pg_amcheck: %v\n%s", r, r.stdout)
	}
}

// stopMessage returns the line of the server log saying where recovery
// stopped.
func stopMessage(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, "recovery stopping"); i >= 0 {
			return line[i:]
		}
	}
	return "no \"recovery stopping\" in the server log"
}

// largestDataObject returns the key and stored size of the biggest data
// object of backup id.
func largestDataObject(t *testing.T, r *repo.Repo, id string) (string, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var key string
	var size int64
	err := r.Store().List(ctx, repo.BackupPrefix(id)+"data/", func(oi storage.ObjectInfo) error {
		if oi.Size > size {
			key, size = oi.Key, oi.Size
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if key == "" {
		t.Fatalf("backup %s has no data object", id)
	}
	return key, size
}

// flipByte inverts the bits of one byte of a stored object: in place in a
// filesystem repository (keeping the file's owner and mode), by a
// rewrite through the store in MinIO.
func flipByte(t *testing.T, kind repoKind, url string, r *repo.Repo, key string, off int64) {
	t.Helper()
	if kind == kindFS {
		f, err := os.OpenFile(filepath.Join(strings.TrimPrefix(url, "file://"), filepath.FromSlash(key)), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := r.Store().Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	body[off] ^= 0xff
	if err := r.Store().Put(ctx, key, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
}

// compareTrees fails t for every path that is in one directory and not
// the other, has another type, or (regular files) other bytes; in
// walferry.conf only the settings are compared, not comments (its header
// names the time of the restore).
func compareTrees(t *testing.T, a, b string) {
	t.Helper()
	ta, tb := walkTree(t, a), walkTree(t, b)
	for p, ma := range ta {
		mb, ok := tb[p]
		switch {
		case !ok:
			t.Errorf("%s is in the delta-restored directory only", p)
		case ma.Type() != mb.Type():
			t.Errorf("%s: %v after the delta restore, %v after the full restore", p, ma.Type(), mb.Type())
		case !ma.IsRegular():
		case p == "walferry.conf":
			if sa, sb := confSettings(t, filepath.Join(a, p)), confSettings(t, filepath.Join(b, p)); sa != sb {
				t.Errorf("walferry.conf differs:\ndelta:\n%s\nfull:\n%s", sa, sb)
			}
		case !sameFile(t, filepath.Join(a, p), filepath.Join(b, p)):
			t.Errorf("%s differs between the delta and the full restore", p)
		}
	}
	for p := range tb {
		if _, ok := ta[p]; !ok {
			t.Errorf("%s is in the fully restored directory only", p)
		}
	}
}

// walkTree maps every path under root (relative, slash-separated) to its
// type.
func walkTree(t *testing.T, root string) map[string]fs.FileMode {
	t.Helper()
	out := map[string]fs.FileMode{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel != "." {
			out[filepath.ToSlash(rel)] = d.Type()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// confSettings returns a configuration file without comments and blank
// lines.
func confSettings(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// walBefore returns the WAL names (segments, .backup, .partial; not
// .history) of timeline files older than segment.
func walBefore(names []string, segment string) []string {
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, ".history") || len(n) < 24 {
			continue
		}
		if n[:8] == segment[:8] && n[:24] < segment {
			out = append(out, n)
		}
	}
	return out
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func secs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(10 * time.Millisecond).String()
}
