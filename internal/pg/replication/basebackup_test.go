package replication_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/pg/replication"
)

// duringSink is a DirSink whose Begin first runs work on the source, so
// the copy depends on the WAL written during the backup.
type duringSink struct {
	*replication.DirSink
	begin func()
}

func (s duringSink) Begin(ctx context.Context, st replication.Start) error {
	s.begin()
	return s.DirSink.Begin(ctx, st)
}

// TestBaseBackupIntoDir copies a running cluster with BASE_BACKUP (WAL
// included, lz4 on the wire, a tablespace moved elsewhere) into a fresh
// directory, checks it with pg_verifybackup, starts PostgreSQL on it and
// compares tables row for row with the source, rows written during the
// backup included.
func TestBaseBackupIntoDir(t *testing.T) {
	src := testCluster(t, pgtest.Options{DataChecksums: true})
	tsDir := src.MkdirOwned(t, "ts1")
	src.Exec(t, "CREATE TABLESPACE ts1 LOCATION '"+tsDir+"'")
	src.Exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text);
		INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 20000) i;
		CREATE TABLE in_ts (id int, v text) TABLESPACE ts1;
		INSERT INTO in_ts SELECT i, repeat('y', i % 100) FROM generate_series(1, 5000) i`)
	ctx := context.Background()

	dst := pgtest.New(t, pgtest.Options{})
	ownConf := map[string][]byte{}
	for _, name := range []string{"postgresql.conf", "pgtest.conf"} {
		b, err := os.ReadFile(filepath.Join(dst.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		ownConf[name] = b
	}
	if err := os.RemoveAll(dst.DataDir); err != nil {
		t.Fatal(err)
	}
	tsCopy := filepath.Join(dst.Dir, "ts-copy", "ts1")
	ds, err := replication.NewDirSink(dst.DataDir, replication.DirOptions{Tablespaces: map[string]string{tsDir: tsCopy}})
	if err != nil {
		t.Fatal(err)
	}
	sink := duringSink{DirSink: ds, begin: func() {
		src.Exec(t, "INSERT INTO t SELECT i, 'during ' || i FROM generate_series(20001, 20500) i")
		src.Exec(t, "UPDATE in_ts SET v = 'changed' WHERE id <= 100")
	}}
	conn := connect(t, src)
	if err := conn.BaseBackup(ctx, replication.BaseBackupOptions{Label: "copy test", Fast: true, WAL: true, Compression: "lz4", Manifest: true}, sink); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{"backup_label", "tablespace_map", "backup_manifest", "global/pg_control", "PG_VERSION"} {
		if _, err := os.Stat(filepath.Join(dst.DataDir, p)); err != nil {
			t.Errorf("the copy lacks %s: %v", p, err)
		}
	}
	oid := strings.TrimSpace(readFile(t, filepath.Join(dst.DataDir, "tablespace_map")))
	oid, loc, _ := strings.Cut(oid, " ")
	if loc != tsCopy {
		t.Errorf("tablespace_map names %q, want the new location %s", loc, tsCopy)
	}
	if link, err := os.Readlink(filepath.Join(dst.DataDir, "pg_tblspc", oid)); err != nil || link != tsCopy {
		t.Errorf("pg_tblspc/%s -> %q (%v), want %s", oid, link, err, tsCopy)
	}
	sameModes(t, src.DataDir, dst.DataDir, "global/pg_control", "PG_VERSION", "base", "pg_wal")
	leftovers := 0
	for _, root := range []string{dst.DataDir, tsCopy} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if strings.HasSuffix(p, ".walferry-tmp") {
				leftovers++
			}
			return err
		})
	}
	if leftovers > 0 {
		t.Errorf("%d temporary files left in the copy", leftovers)
	}

	chownTree(t, dst, dst.DataDir, filepath.Dir(tsCopy))
	// tablespace_map names the tablespace's new place, so it differs from
	// the server's manifest.
	verify := dst.Command(ctx, "pg_verifybackup", "--ignore=tablespace_map", dst.DataDir)
	if out, err := verify.CombinedOutput(); err != nil {
		t.Fatalf("pg_verifybackup: %v\n%s", err, out)
	}
	for name, b := range ownConf {
		if err := os.WriteFile(filepath.Join(dst.DataDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	chownTree(t, dst, dst.DataDir)
	dst.Start(t)

	for _, q := range []string{"SELECT id::text || ' ' || v FROM t ORDER BY id", "SELECT id::text || ' ' || v FROM in_ts ORDER BY id"} {
		want, got := rows(t, src, q), rows(t, dst, q)
		if len(got) != len(want) {
			t.Errorf("%s: the copy has %d rows, the source %d", q, len(got), len(want))
			continue
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: row %d is %q in the copy, %q in the source", q, i, got[i], want[i])
				break
			}
		}
	}
	var during int
	dst.QueryRow(t, "SELECT count(*) FROM t WHERE v LIKE 'during %'").Scan(&during)
	if during != 500 {
		t.Errorf("the copy has %d of the 500 rows written during the backup", during)
	}
}

// sameModes checks that the copy's entries have the source's permissions.
func sameModes(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	for _, n := range names {
		a, err := os.Stat(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.Stat(filepath.Join(dst, n))
		if err != nil {
			t.Fatal(err)
		}
		if a.Mode() != b.Mode() {
			t.Errorf("%s: mode %v in the copy, %v in the source", n, b.Mode(), a.Mode())
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func rows(t *testing.T, c *pgtest.Cluster, q string) []string {
	t.Helper()
	r, err := c.Conn(t).Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []string
	for r.Next() {
		var s string
		if err := r.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// chownTree gives the trees to the cluster's OS user (tests run as root,
// the server as postgres): the owner of c.Dir.
func chownTree(t *testing.T, c *pgtest.Cluster, roots ...string) {
	t.Helper()
	fi, err := os.Stat(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) == os.Geteuid() {
		return
	}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(st.Uid), int(st.Gid))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
