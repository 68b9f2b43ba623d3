//go:build faults

package faults

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage"
)

var (
	ownerOnce sync.Once
	ownerUID  int
	ownerGID  int
	ownerErr  error
)

func lookupOwner() {
	u, err := user.Lookup(pgtest.ServerOSUser)
	if err != nil {
		ownerErr = err
		return
	}
	ownerUID, _ = strconv.Atoi(u.Uid)
	ownerGID, _ = strconv.Atoi(u.Gid)
}

func uid(t *testing.T) int {
	ownerOnce.Do(lookupOwner)
	if ownerErr != nil {
		t.Fatal(ownerErr)
	}
	return ownerUID
}

func gid(t *testing.T) int {
	ownerOnce.Do(lookupOwner)
	if ownerErr != nil {
		t.Fatal(ownerErr)
	}
	return ownerGID
}

func filepathWalk(root string, f func(string) error) error {
	return filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return f(p)
	})
}

// s3URL is a fresh repository URL under the MinIO bucket, reached at
// endpoint (MinIO itself, or a fault front before it).
func s3URL(s3 testenv.S3Env, prefix, endpoint string) string {
	return "s3://" + s3.Bucket + "/faults/" + prefix + "?endpoint=" + endpoint + "&path-style=true"
}

// segMB is the WAL segment size of the suite's clusters: small segments
// keep trials short while every upload still spans many TCP packets.
const segMB = 1

// walSource starts a cluster with 1 MiB segments that keeps every segment
// it completes with a .ready file (archive_mode on, an empty archive_command),
// writes at least n segments of poorly compressible WAL and stops it.
func walSource(t *testing.T, n int) (*pgtest.Cluster, []string) {
	t.Helper()
	c := pgtest.Start(t, pgtest.Options{WALSegSizeMB: segMB, Conf: []string{
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = ''",
		"max_wal_size = 1GB",
		"min_wal_size = 64MB",
	}})
	psql(t, c, "CREATE EXTENSION pgcrypto")
	psql(t, c, "CREATE TABLE noise (id bigint, a text)")
	for i := 0; i < 10*n; i++ {
		written, err := strconv.ParseFloat(psql(t, c, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"), 64)
		if err != nil {
			t.Fatal(err)
		}
		if written >= float64(n+6)*segMB*(1<<20) {
			break
		}
		psql(t, c, "INSERT INTO noise SELECT g, encode(gen_random_bytes(512), 'hex') FROM generate_series(1, 2000) g")
	}
	psql(t, c, "SELECT pg_switch_wal()")
	psql(t, c, "CHECKPOINT")
	c.Stop(t, pgtest.StopFast)
	var segs []string
	entries, err := os.ReadDir(filepath.Join(c.DataDir, "pg_wal", "archive_status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if seg, ok := strings.CutSuffix(e.Name(), ".ready"); ok && len(seg) == 24 {
			segs = append(segs, seg)
		}
	}
	sort.Strings(segs)
	if len(segs) < n {
		t.Fatalf("the cluster completed %d segments, want %d", len(segs), n)
	}
	return c, segs
}

// setReady leaves exactly the named segments .ready (the others .done),
// as PostgreSQL does after archiving.
func setReady(t *testing.T, c *pgtest.Cluster, all []string, ready map[string]bool) {
	t.Helper()
	dir := filepath.Join(c.DataDir, "pg_wal", "archive_status")
	for _, seg := range all {
		r, d := filepath.Join(dir, seg+".ready"), filepath.Join(dir, seg+".done")
		if ready[seg] {
			if _, err := os.Stat(r); err != nil {
				writeOwned(t, c, r, nil)
			}
			os.Remove(d)
		} else if _, err := os.Stat(r); err == nil {
			if err := os.Rename(r, d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// archivingPrimary starts a cluster (data checksums, 1 MiB segments) whose
// archive_command pushes into a fresh, initialized repository at url.
func archivingPrimary(t *testing.T, url string) *pgtest.Cluster {
	t.Helper()
	return archivingPrimarySeg(t, url, segMB)
}

// archivingPrimarySeg is archivingPrimary with segments of walSegMB MiB.
func archivingPrimarySeg(t *testing.T, url string, walSegMB int) *pgtest.Cluster {
	t.Helper()
	c := pgtest.New(t, pgtest.Options{DataChecksums: true, WALSegSizeMB: walSegMB})
	mustWF(t, c, "repo", "init", "--repo", url, "--pgdata", c.DataDir)
	archiveCommand := shellQuote(walferryBin) + " archive-push --repo " + shellQuote(url) + " %p"
	c.AppendConf(t,
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = "+sqlQuote(archiveCommand),
		"max_wal_size = 256MB",
		"log_checkpoints = off",
	)
	c.Start(t)
	return c
}

// openRepo opens a repository to inspect what the binary left there.
func openRepo(t *testing.T, url string) *repo.Repo { return teststore.OpenURL(t, url) }

// walSums decodes every object under the repository's WAL prefix through
// the verifying decoder and returns name -> sha256 of the raw bytes; an
// object that does not decode whole is an error: something partial or
// damaged is visible under a final name.
func walSums(ctx context.Context, r *repo.Repo) (map[string]string, error) {
	var keys []string
	if err := r.Store().List(ctx, repo.WALPrefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	sums := map[string]string{}
	for _, key := range keys {
		name, ok := repo.WALNameFromKey(key)
		if !ok {
			continue
		}
		obj, err := r.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, obj)
		obj.Close()
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", key, err)
		}
		sums[name] = hex.EncodeToString(h.Sum(nil))
	}
	return sums, nil
}

// checkWAL checks that every WAL object of the repository decodes whole and
// holds its pg_wal segment's exact bytes, and that want are all there; it
// returns what is wrong, "" when nothing is.
func checkWAL(t *testing.T, r *repo.Repo, c *pgtest.Cluster, want []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sums, err := walSums(ctx, r)
	if err != nil {
		return err.Error()
	}
	for name, sum := range sums {
		if len(name) != 24 {
			continue
		}
		if local := fileSum(t, filepath.Join(c.DataDir, "pg_wal", name)); local != "" && local != sum {
			return fmt.Sprintf("%s: the repository holds sha256 %s, pg_wal %s", name, sum, local)
		}
	}
	for _, name := range want {
		if sums[name] == "" {
			return fmt.Sprintf("%s was reported archived and is not in the repository", name)
		}
	}
	return ""
}

// namesStore reports whether a failure message names the store: its
// scheme and bucket or its endpoint.
func namesStore(stderr string, s3 testenv.S3Env, endpoint string) bool {
	host := strings.TrimPrefix(endpoint, "http://")
	return strings.Contains(stderr, s3.Bucket) || strings.Contains(stderr, host) || strings.Contains(stderr, "s3:")
}

func removeFile(path string) { _ = os.Remove(path) }
