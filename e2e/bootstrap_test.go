package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/k8s/bootstrap"
)

// bootstrapCmd is walferry bootstrap run as root, as an init container
// runs it (the files it writes must still belong to postgres).
func bootstrapCmd(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, walferryBin, append([]string{"bootstrap"}, args...)...)
	cmd.Env = append(os.Environ(), "WALFERRY_LOG_FORMAT=text")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func runBootstrap(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return runCmd(t, bootstrapCmd(ctx, args...))
}

func mustBootstrap(t *testing.T, args ...string) bootstrap.Result {
	t.Helper()
	r := runBootstrap(t, append(args, "--json")...)
	if r.code != 0 {
		t.Fatalf("walferry bootstrap %s: %v\n%s", strings.Join(args, " "), r, r.stdout)
	}
	var res bootstrap.Result
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("bootstrap --json printed %q: %v", r.stdout, err)
	}
	return res
}

// waitFor polls cond until it holds or the generous deadline passes.
func waitFor(t *testing.T, what string, deadline time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("gave up after %s waiting for %s", deadline, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitReplayed waits until standby has replayed everything primary wrote.
func waitReplayed(t *testing.T, primary, standby *pgtest.Cluster) {
	t.Helper()
	lsn := psql(t, primary, "SELECT pg_current_wal_lsn()")
	waitFor(t, "the standby to replay up to "+lsn, 2*time.Minute, func() bool {
		return psql(t, standby, "SELECT coalesce(pg_last_wal_replay_lsn() >= '"+lsn+"'::pg_lsn, false)") == "t"
	})
}

// checkOwnedByPostgres fails t when a file of dir does not belong to the
// data directory's owner (bootstrap runs as root).
func checkOwnedByPostgres(t *testing.T, dir string) {
	t.Helper()
	want := dirOwnerOf(t, dir)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if got := dirOwnerOf(t, p); got != want {
			return fmt.Errorf("%s is owned by uid %d, want %d", p, got, want)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestBootstrapFromPrimary is seed scenario 4: a standby copied with
// BASE_BACKUP while the source is busy and recycles its WAL as fast as it
// can; the slot created before the copy keeps what the standby needs, so
// it streams, and ends equal to the source row for row.
func TestBootstrapFromPrimary(t *testing.T) {
	needE2E(t)
	t.Parallel()
	primary := pgtest.Start(t, pgtest.Options{Conf: []string{
		"max_wal_size = 32MB", "min_wal_size = 32MB", "wal_keep_size = 0", "log_checkpoints = off",
	}})
	pgRun(t, primary, 2*time.Minute, "pgbench", "-i", "-q", "-s", "5")
	bench := startPgbench(t, primary)

	// Recycle WAL during the copy: segment switches and checkpoints.
	stopChurn := make(chan struct{})
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		for {
			select {
			case <-stopChurn:
				return
			case <-time.After(300 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			primary.Command(ctx, "psql", "-X", "-q", "-c", "SELECT pg_switch_wal()", "-c", "CHECKPOINT").Run()
			cancel()
		}
	}()

	d := newRestoreTarget(t)
	res := mustBootstrap(t, "--pgdata", d.c.DataDir, "--from", "primary", "--source-conn", primary.ConnString(), "--slot", "walferry_site_b_0")
	// Keep churning a while after the copy: the standby is not up yet.
	time.Sleep(3 * time.Second)
	close(stopChurn)
	<-churnDone

	if res.Action != "copied" || res.From != "primary" || res.Copy == nil || res.Copy.Files == 0 || res.Slot != "walferry_site_b_0" || !res.SlotCreated {
		t.Fatalf("bootstrap result: %+v", res)
	}
	if ci := res.Settings["primary_conninfo"]; !strings.Contains(ci, fmt.Sprintf("port=%d", primary.Port)) ||
		!strings.Contains(ci, "application_name=walferry_site_b_0") || strings.Contains(ci, "dbname") {
		t.Errorf("primary_conninfo = %q", ci)
	}
	if res.Settings["primary_slot_name"] != "walferry_site_b_0" || res.Settings["recovery_target_timeline"] != "latest" {
		t.Errorf("settings = %v", res.Settings)
	}
	if _, ok := res.Settings["restore_command"]; ok {
		t.Errorf("restore_command without a repository: %v", res.Settings)
	}
	for _, name := range []string{"standby.signal", "walferry.conf", "global/pg_control"} {
		if _, err := os.Stat(filepath.Join(d.c.DataDir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(d.c.DataDir, bootstrap.MarkerName)); err == nil {
		t.Errorf("the marker %s is still there", bootstrap.MarkerName)
	}
	checkOwnedByPostgres(t, d.c.DataDir)
	// Segments the copy started from are gone from the source's pg_wal by now.
	t.Logf("slot restart_lsn %s, copy %s..%s, source now at %s", psql(t, primary, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walferry_site_b_0'"),
		res.Copy.StartLSN, res.Copy.StopLSN, psql(t, primary, "SELECT pg_current_wal_lsn()"))

	d.configure(t)
	d.c.Start(t)
	waitFor(t, "the standby to stream", 2*time.Minute, func() bool {
		return psql(t, d.c, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')") == "streaming"
	})
	// The source sees it under the slot's application name, caught up.
	waitFor(t, "the source's walsender to stream to walferry_site_b_0", 2*time.Minute, func() bool {
		return psql(t, primary, "SELECT string_agg(application_name || ' ' || state, ',') FROM pg_stat_replication") == "walferry_site_b_0 streaming"
	})
	rounds := bench.stop(t)
	waitReplayed(t, primary, d.c)
	want, got := tablesDigest(t, primary, pgbenchTables...), tablesDigest(t, d.c, pgbenchTables...)
	if got != want {
		t.Errorf("standby differs from the source after %d pgbench rounds:\n got %s\nwant %s", rounds, got, want)
	}

	// (c) Another cluster's data directory is refused, untouched.
	other := pgtest.New(t, pgtest.Options{})
	before := treeDigest(t, other.DataDir)
	r := runBootstrap(t, "--pgdata", other.DataDir, "--from", "primary", "--source-conn", primary.ConnString(), "--slot", "walferry_other")
	if r.code != 5 || !strings.Contains(r.stderr, "--reinit") {
		t.Errorf("bootstrap over another cluster: %v; want exit 5 naming --reinit", r)
	}
	if after := treeDigest(t, other.DataDir); after != before {
		t.Error("the other cluster's data directory changed")
	}
}

// TestBootstrapResumeFromRepo is seed scenario 5: bootstrap --from repo
// killed (SIGKILL) in the middle of its restore, run again: it finishes the
// half-restored directory with a delta restore, and the standby equals the
// source. A third run leaves the finished directory alone.
func TestBootstrapResumeFromRepo(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	primary, url := archivingPrimary(t, kindFS, s3)
	psql(t, primary, "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g*7)::text) || repeat(md5((g*3)::text), 4) AS pad FROM generate_series(1, 1200000) g")
	backupPush(t, primary, url)
	psql(t, primary, "CREATE TABLE after_backup AS SELECT g AS id FROM generate_series(1, 5000) g")
	psql(t, primary, "UPDATE big SET pad = 'changed' WHERE id % 1000 = 0")

	d := newRestoreTarget(t)
	args := []string{"--pgdata", d.c.DataDir, "--repo", url, "--from", "repo", "--source-conn", primary.ConnString(), "--slot", "walferry_site_b_1", "--jobs", "2"}

	// Kill the first run once 80 MB are written into the data directory.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := bootstrapCmd(ctx, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	killed := false
	for !killed {
		select {
		case err := <-exited:
			t.Fatalf("the first bootstrap ended (%v) before it could be killed: make the table bigger\n%s", err, out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if duSize(d.c.DataDir) > 80<<20 {
			cmd.Process.Kill()
			<-exited
			killed = true
		}
	}
	t.Logf("killed the first bootstrap with %d MB in the data directory", duSize(d.c.DataDir)>>20)

	res := mustBootstrap(t, args...)
	// What the killed run wrote is kept (whole files, or 8 MiB units of
	// a file it was writing): less than the whole backup is fetched again.
	if res.Action != "finished" || res.Restore == nil || !res.Restore.Delta || res.Restore.BytesFetched >= res.Restore.Bytes {
		t.Fatalf("second run: want a delta restore that finished the directory, keeping files; got %+v (restore %+v)", res, res.Restore)
	}
	t.Logf("finished with a delta restore: fetched %d files (%d bytes), kept %d files, of %d bytes",
		res.Restore.FilesFetched, res.Restore.BytesFetched, res.Restore.FilesKept, res.Restore.Bytes)
	if !strings.Contains(res.Settings["restore_command"], walferryBin+" archive-get --repo "+url) || res.Settings["primary_slot_name"] != "walferry_site_b_1" {
		t.Errorf("settings = %v", res.Settings)
	}
	checkOwnedByPostgres(t, d.c.DataDir)

	// (c) A third run leaves the finished directory alone, changing nothing.
	before := treeDigest(t, d.c.DataDir)
	again := runBootstrap(t, args...)
	if again.code != 0 || !strings.Contains(again.stdout, "left alone") {
		t.Errorf("bootstrap on the finished directory: %v\n%s", again, again.stdout)
	}
	if after := treeDigest(t, d.c.DataDir); after != before {
		t.Errorf("the finished data directory changed:\n%s\n---\n%s", before, after)
	}

	d.configure(t)
	d.c.Start(t)
	waitReplayed(t, primary, d.c)
	const digest = "SELECT count(*) || ' ' || sum(id) || ' ' || md5(string_agg(md5(pad), '' ORDER BY id)) FROM big"
	if got, want := psql(t, d.c, digest), psql(t, primary, digest); got != want {
		t.Errorf("big: standby %s, source %s", got, want)
	}
	if got, want := tablesDigest(t, d.c, "after_backup"), tablesDigest(t, primary, "after_backup"); got != want {
		t.Errorf("after_backup: standby %s, source %s", got, want)
	}
}

// TestBootstrapReadOnlyConfig is seed 003: postgresql.conf mounted
// read-only (a ConfigMap) without the include line: bootstrap fails before
// any work, naming the exact line, and touches nothing.
func TestBootstrapReadOnlyConfig(t *testing.T) {
	needE2E(t)
	t.Parallel()
	primary := pgtest.Start(t, pgtest.Options{})
	d := newRestoreTarget(t)
	cm := filepath.Join(d.c.Dir, "configmap", "postgresql.conf")
	if err := os.MkdirAll(filepath.Dir(cm), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cm, []byte("shared_buffers = 128MB\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	r := runBootstrap(t, "--pgdata", d.c.DataDir, "--from", "primary", "--source-conn", primary.ConnString(), "--config-file", cm)
	line := pgconf.Files{DataDir: d.c.DataDir, ConfigFile: cm}.IncludeLine()
	if r.code != 2 || !strings.Contains(r.stderr, line) {
		t.Errorf("bootstrap with a read-only postgresql.conf: %v; want exit 2 naming %q", r, line)
	}
	if b, _ := os.ReadFile(cm); string(b) != "shared_buffers = 128MB\n" {
		t.Errorf("the read-only file changed: %q", b)
	}
	if _, err := os.Stat(d.c.DataDir); err == nil {
		t.Error("the data directory was created")
	}
	if n := psql(t, primary, "SELECT count(*) FROM pg_replication_slots"); n != "0" {
		t.Errorf("%s slots created on the source", n)
	}
}

// treeDigest lists every file of dir with its size, mode and time.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %v %d\n", p, fi.Size(), fi.Mode(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// duSize is the bytes allocated to regular files below dir, as du counts
// them (a restore may size files before it writes them); 0 while dir is
// missing.
func duSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Sys().(*syscall.Stat_t).Blocks * 512
			}
		}
		return nil
	})
	return n
}

func dirOwnerOf(t *testing.T, p string) uint32 {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Uid
}

// TestBootstrapAuto: --from auto takes the repository when the WAL since
// its backup is small against the database, the source when the ratio is
// set below it, and reports the numbers it decided on.
func TestBootstrapAuto(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	primary, url := archivingPrimary(t, kindFS, s3)
	pgRun(t, primary, 2*time.Minute, "pgbench", "-i", "-q", "-s", "2")
	p := backupPush(t, primary, url)
	psql(t, primary, "CREATE TABLE after_backup AS SELECT g AS id FROM generate_series(1, 20000) g")

	args := func(d *restoreTarget, extra ...string) []string {
		return append([]string{"--pgdata", d.c.DataDir, "--repo", url, "--source-conn", primary.ConnString(), "--slot", "walferry_auto"}, extra...)
	}
	d1 := newRestoreTarget(t)
	res := mustBootstrap(t, args(d1)...)
	dec := res.Decision
	if dec == nil || dec.From != "repo" || res.Action != "restored" || dec.Backup != p.ID || dec.DatabaseBytes != p.DataBytes ||
		dec.WALSinceBytes <= 0 || dec.Ratio > 0.5 || dec.MaxRatio != 0.5 {
		t.Fatalf("--from auto with little WAL since the backup: %+v, decision %+v", res, dec)
	}
	t.Logf("auto: %s", dec.Reason)

	d2 := newRestoreTarget(t)
	r := runBootstrap(t, args(d2, "--auto-max-wal-ratio", "0.000001")...)
	if r.code != 0 || !strings.Contains(r.stdout, "--from auto chose primary") || !strings.Contains(r.stdout, "copied the source") {
		t.Fatalf("--from auto with a tiny ratio: %v\n%s", r, r.stdout)
	}
}
