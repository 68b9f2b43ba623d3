package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
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

// rows returns every row of a query as "col|col" lines, in order.
func rows(t *testing.T, c *pgtest.Cluster, sql string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rs, err := c.Conn(t).Query(ctx, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rs.Close()
	var out []string
	for rs.Next() {
		vals, err := rs.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, "|"))
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

// state is what the test compares between clusters, row for row.
type state struct{ t, t2 []string }

func dbState(t *testing.T, c *pgtest.Cluster) state {
	return state{
		t:  rows(t, c, "SELECT id, v FROM t ORDER BY id"),
		t2: rows(t, c, "SELECT id, note FROM t2 ORDER BY id"),
	}
}

// diff describes the first difference between two states, "" if none.
func (s state) diff(o state) string {
	for _, p := range []struct {
		name string
		a, b []string
	}{{"t", s.t, o.t}, {"t2", s.t2, o.t2}} {
		if len(p.a) != len(p.b) {
			return fmt.Sprintf("table %s has %d rows, want %d", p.name, len(p.a), len(p.b))
		}
		for i := range p.a {
			if p.a[i] != p.b[i] {
				return fmt.Sprintf("table %s row %d is %q, want %q", p.name, i, p.a[i], p.b[i])
			}
		}
	}
	return ""
}

// pgConfFiles are the restored cluster's own settings (port, socket
// directory), put back after each restore brought the primary's.
var pgConfFiles = []string{"postgresql.conf", "pgtest.conf"}

func saveConf(t *testing.T, c *pgtest.Cluster) map[string][]byte {
	t.Helper()
	saved := map[string][]byte{}
	for _, name := range pgConfFiles {
		b, err := os.ReadFile(filepath.Join(c.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		saved[name] = b
	}
	return saved
}

// putConf writes the saved files back over the restored ones, keeping
// the include of walferry.conf the restore appended to postgresql.conf.
func putConf(t *testing.T, c *pgtest.Cluster, saved map[string][]byte) {
	t.Helper()
	for name, b := range saved {
		p := filepath.Join(c.DataDir, name)
		if name == "postgresql.conf" {
			b = append(bytes.Clone(b), "include_if_exists = 'walferry.conf'\n"...)
		}
		must(t, os.WriteFile(p, b, 0o600))
		if os.Geteuid() == 0 {
			u, err := user.Lookup(pgtest.ServerOSUser)
			if err != nil {
				t.Fatal(err)
			}
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			must(t, os.Chown(p, uid, gid))
		}
	}
}

// waitFor polls cond every 200 ms until it holds or the timeout ends.
func waitFor(t *testing.T, c *pgtest.Cluster, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; server log:\n%s", timeout, what, c.LogTail(40))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func inRecovery(t *testing.T, c *pgtest.Cluster) bool {
	var b bool
	c.QueryRow(t, "SELECT pg_is_in_recovery()").Scan(&b)
	return b
}

// TestRestorePostgres backs up a PostgreSQL 15 primary that archives with
// walferry (full, then incremental, with a tablespace), restores into
// another cluster and starts PostgreSQL on it three times, comparing the
// tables row for row each time:
//  1. the latest backup, replaying the whole archive, promoted;
//  2. a delta restore over that diverged cluster, to a restore point;
//  3. a delta restore through the walferry binary as a standby.
func TestRestorePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PostgreSQL; skipped with -short")
	}
	ctx := context.Background()
	bin := testbin.Walferry(t)

	primary := pgtest.New(t, pgtest.Options{DataChecksums: true})
	root := primary.MkdirOwned(t, "repo")
	url := "file://" + root
	if out, err := primary.Command(ctx, bin, "repo", "init", "--repo", url, "--pgdata", primary.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("repo init: %v\n%s", err, out)
	}
	primary.AppendConf(t, "archive_mode = on", "archive_command = '"+bin+" archive-push --repo "+url+" %p'")
	primary.Start(t)
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}

	tsDir := primary.MkdirOwned(t, "ts1")
	primary.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
	primary.Exec(t, "CREATE TABLE t (id int PRIMARY KEY, v text)")
	primary.Exec(t, "INSERT INTO t SELECT i, repeat(md5(i::text), 6) FROM generate_series(1, 120000) i")
	primary.Exec(t, "CREATE TABLE t2 (id int PRIMARY KEY, note text) TABLESPACE ts1")
	primary.Exec(t, "INSERT INTO t2 SELECT i, 'ts row ' || i FROM generate_series(1, 5000) i")
	full, err := backup.Push(ctx, r, backup.Options{Conn: primary.ConnString(), PGData: primary.DataDir, ObjectSize: 16 << 20})
	if err != nil {
		t.Fatalf("full backup: %v", err)
	}
	primary.Exec(t, "UPDATE t SET v = 'changed after the full backup' WHERE id % 50 = 0")
	primary.Exec(t, "DELETE FROM t2 WHERE id > 4000")
	inc, err := backup.Push(ctx, r, backup.Options{Conn: primary.ConnString(), PGData: primary.DataDir, Incremental: true})
	if err != nil {
		t.Fatalf("incremental backup: %v", err)
	}
	if inc.Parent != full.ID {
		t.Fatalf("incremental %s is on %q, want %s", inc.ID, inc.Parent, full.ID)
	}
	primary.Exec(t, "UPDATE t SET v = 'after the incremental' WHERE id <= 1000")
	primary.Exec(t, "SELECT pg_create_restore_point('before_b')")
	atRestorePoint := dbState(t, primary)
	primary.Exec(t, "INSERT INTO t SELECT i, 'late ' || i FROM generate_series(120001, 130000) i")
	primary.Exec(t, "INSERT INTO t2 VALUES (9999, 'late row')")
	final := dbState(t, primary)
	var last string
	primary.QueryRow(t, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&last)
	waitFor(t, primary, "the archiver to push "+last, 2*time.Minute, func() bool {
		var archived string
		primary.QueryRow(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").Scan(&archived)
		return archived >= last
	})

	restored := pgtest.New(t, pgtest.Options{})
	conf := saveConf(t, restored)
	must(t, os.RemoveAll(restored.DataDir))
	newTS := filepath.Join(restored.Dir, "ts1-moved")
	o := Options{
		Backup: backup.Latest, DataDir: restored.DataDir, TablespaceMap: []string{"ts1=" + newTS},
		RestoreCommand: RestoreCommand{Executable: bin, Repos: []string{url}},
	}

	// 1. Full restore of the incremental, whole archive, promoted.
	res, err := Run(ctx, r, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("restore: %d files, %d bytes from %d objects in %.2fs (%.0f MiB/s)", res.Files, res.BytesFetched, res.ObjectsRead,
		float64(res.Duration), float64(res.BytesFetched)/float64(res.Duration)/(1<<20))
	if res.Backup != inc.ID || res.ObjectsRead < 2 || len(inc.DependsOn()) != 1 {
		t.Errorf("restored %s from %d objects; want %s, which depends on %s", res.Backup, res.ObjectsRead, inc.ID, full.ID)
	}
	putConf(t, restored, conf)
	restored.Start(t)
	waitFor(t, restored, "promotion at the end of the archive", 3*time.Minute, func() bool { return !inRecovery(t, restored) })
	if d := dbState(t, restored).diff(final); d != "" {
		t.Fatalf("after restoring %s and replaying the archive: %s", inc.ID, d)
	}
	var loc string
	restored.QueryRow(t, "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'").Scan(&loc)
	if loc != newTS {
		t.Errorf("tablespace ts1 is at %s, want %s", loc, newTS)
	}
	restored.Exec(t, "INSERT INTO t VALUES (-1, 'diverged')") // the restored cluster is now a primary of its own
	restored.Stop(t, pgtest.StopFast)

	// 2. Delta over the diverged cluster, to the restore point.
	o.Delta = true
	o.Target = Target{Name: "before_b", Action: "promote"}
	res, err = Run(ctx, r, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("delta restore: kept %d files, fetched %d (%d of %d bytes) from %d objects, removed %d files, in %.2fs",
		res.FilesKept, res.FilesFetched, res.BytesFetched, res.Bytes, res.ObjectsRead, res.FilesRemoved, float64(res.Duration))
	// Replay and the full-table reads above rewrote every page of t (hint
	// bits), so t comes back whole; nearly every other file is kept.
	if res.FilesKept*10 < res.Files*9 || res.BytesFetched >= res.Bytes || res.FilesRemoved == 0 {
		t.Errorf("delta restore kept %d of %d files and fetched %d of %d bytes, removed %d: want 90%% kept, less than all fetched, the WAL removed",
			res.FilesKept, res.Files, res.BytesFetched, res.Bytes, res.FilesRemoved)
	}
	putConf(t, restored, conf)
	restored.Start(t)
	waitFor(t, restored, "promotion at restore point before_b", 3*time.Minute, func() bool { return !inRecovery(t, restored) })
	if d := dbState(t, restored).diff(atRestorePoint); d != "" {
		t.Fatalf("after the restore to before_b: %s", d)
	}
	restored.Stop(t, pgtest.StopFast)

	// 3. The binary, as root: delta again, as a standby.
	cmdCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cmdCtx, bin, "restore", "LATEST", "--pgdata", restored.DataDir, "--repo", url,
		"--delta", "--standby", "--tablespace-map", "ts1="+newTS, "--json").Output()
	if err != nil {
		t.Fatalf("walferry restore --delta --standby: %v", err)
	}
	var cli Result
	if err := json.Unmarshal(out, &cli); err != nil || cli.Signal != standbySig || !cli.Delta {
		t.Fatalf("walferry restore --json: %v\n%s", err, out)
	}
	putConf(t, restored, conf)
	restored.Start(t)
	waitFor(t, restored, "the standby to replay the archive", 3*time.Minute, func() bool {
		return len(rows(t, restored, "SELECT 1 FROM t WHERE id = 130000")) == 1
	})
	if !inRecovery(t, restored) {
		t.Error("restored with --standby, the server is not in recovery")
	}
	if d := dbState(t, restored).diff(final); d != "" {
		t.Fatalf("the standby: %s", d)
	}
}
