//go:build faults

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
)

// restoreTarget is a cluster made by initdb whose data directory restores
// replace; it keeps the cluster's own port and socket configuration.
type restoreTarget struct {
	c    *pgtest.Cluster
	conf map[string][]byte
}

func newRestoreTarget(t *testing.T) *restoreTarget {
	t.Helper()
	return newRestoreTargetSeg(t, segMB)
}

// newRestoreTargetSeg is newRestoreTarget for backups of clusters with
// segments of walSegMB MiB (its settings must fit theirs).
func newRestoreTargetSeg(t *testing.T, walSegMB int) *restoreTarget {
	t.Helper()
	d := &restoreTarget{c: pgtest.New(t, pgtest.Options{WALSegSizeMB: walSegMB}), conf: map[string][]byte{}}
	for _, name := range []string{"postgresql.conf", "pgtest.conf"} {
		b, err := os.ReadFile(filepath.Join(d.c.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		d.conf[name] = b
	}
	d.clear(t)
	return d
}

// clear removes the data directory (the server must be stopped).
func (d *restoreTarget) clear(t *testing.T) {
	t.Helper()
	if err := os.RemoveAll(d.c.DataDir); err != nil {
		t.Fatal(err)
	}
}

// restore runs walferry restore as the cluster's OS user, killed after limit.
func (d *restoreTarget) restore(t *testing.T, limit time.Duration, env []string, url, id string, args ...string) result {
	t.Helper()
	all := append([]string{"restore", id, "--repo", url, "--pgdata", d.c.DataDir, "--json"}, args...)
	cmd := d.c.Command(context.Background(), walferryBin, all...)
	cmd.Env = append(cmd.Env, env...)
	return run(t, cmd, limit)
}

// startable reports whether PostgreSQL could start the directory a failed
// restore left: it must not be (docs/restore.md, "Nothing half-restored").
func (d *restoreTarget) startable() bool {
	_, err := os.Stat(filepath.Join(d.c.DataDir, "global", "pg_control"))
	return !errors.Is(err, os.ErrNotExist)
}

// check starts the restored server without archiving, waits for the end of
// recovery and compares the items table with want; it returns what is
// wrong ("" when nothing) and stops the server.
func (d *restoreTarget) check(t *testing.T, want string) (problem string) {
	t.Helper()
	restored, _ := os.ReadFile(filepath.Join(d.c.DataDir, "postgresql.conf"))
	for name, b := range d.conf {
		if name == "postgresql.conf" {
			b = append(bytes.Clone(b), "archive_mode = off\n"...)
			for _, l := range strings.Split(string(restored), "\n") {
				if strings.HasPrefix(l, "include") && strings.Contains(l, "walferry.conf") {
					b = append(b, l+"\n"...)
				}
			}
		}
		writeOwned(t, d.c, filepath.Join(d.c.DataDir, name), b)
	}
	started := t.Run("start restored server", func(t *testing.T) { d.c.Start(t) })
	if !started {
		return "PostgreSQL did not start the restored directory: " + lastLines(d.c.LogTail(10), 5)
	}
	defer d.c.Stop(t, pgtest.StopImmediate)
	deadline := time.Now().Add(3 * time.Minute)
	for psql(t, d.c, "SELECT pg_is_in_recovery()") != "f" {
		if time.Now().After(deadline) {
			return "still in recovery after 3 minutes: " + lastLines(d.c.LogTail(10), 5)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if got := digest(t, d.c); got != want {
		return fmt.Sprintf("items digest %s after the restore, want %s", got, want)
	}
	return ""
}

// digest is the md5 of every row of the items table, in id order.
func digest(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	return psql(t, c, "SELECT count(*) || ':' || md5(string_agg(i::text, ',' ORDER BY id)) FROM items i")
}

// fillItems creates the items table with n rows and makes sure its WAL is
// archived.
func fillItems(t *testing.T, c *pgtest.Cluster, n int) string {
	t.Helper()
	psql(t, c, fmt.Sprintf("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, %d) g", n))
	psql(t, c, "CHECKPOINT")
	return digest(t, c)
}

// pushed is what backup-push --json prints (the fields the suite reads).
type pushed struct {
	ID      string `json:"id"`
	StopWAL string `json:"stop_wal"`
}

func backupID(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var p pushed
	if json.Unmarshal([]byte(lines[len(lines)-1]), &p) != nil {
		return ""
	}
	return p.ID
}

func backupStopWAL(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var p pushed
	json.Unmarshal([]byte(lines[len(lines)-1]), &p)
	return p.StopWAL
}

// host is an endpoint URL's host:port.
func host(endpoint string) string { return strings.TrimPrefix(endpoint, "http://") }

// backupList returns the ids backup-list --json lists.
func backupList(t *testing.T, c *pgtest.Cluster, url string) []string {
	t.Helper()
	r := mustWF(t, c, "backup-list", "--repo", url, "--json")
	var list []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("backup-list --json printed %q: %v", r.stdout, err)
	}
	var ids []string
	for _, e := range list {
		ids = append(ids, e.ID)
	}
	return ids
}
