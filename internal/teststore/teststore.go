// Package teststore gives tests a fresh, empty store on each real backend
// they run against, cleaned up when the test ends. The S3 store needs the
// MinIO started by scripts/services.sh (see internal/testenv).
package teststore

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/fs"
	"github.com/walferry/walferry/storage/open"
	"github.com/walferry/walferry/storage/retry"
	"github.com/walferry/walferry/storage/s3"
)

// FS returns a filesystem store on a fresh directory and that directory.
func FS(t testing.TB) (*fs.Client, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(root, 0o750); err != nil {
		t.Fatal(err)
	}
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	return st, root
}

// S3 returns a store on MinIO under a fresh prefix, emptied and closed
// when the test ends.
func S3(t testing.TB) storage.Store {
	t.Helper()
	env := testenv.S3(t)
	st, err := s3.New(context.Background(), s3.Config{
		Bucket: env.Bucket, Prefix: testenv.UniquePrefix(t), Endpoint: env.Endpoint, Region: env.Region,
		PathStyle: true, AccessKeyID: env.AccessKey, SecretAccessKey: env.SecretKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var keys []string
		_ = st.List(ctx, "", func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil })
		for _, k := range keys {
			_ = st.Delete(ctx, k)
		}
		st.Close()
	})
	return st
}

// FSRepo returns an initialized, opened repository (system identifier 1,
// PostgreSQL 15, 16 MiB segments, lz4) on a fresh filesystem store.
func FSRepo(t testing.TB) (*repo.Repo, *fs.Client) {
	t.Helper()
	ctx := context.Background()
	st, _ := FS(t)
	cl := repo.Cluster{SystemID: 1, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "test"}
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: cl, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r, st
}

// OpenURL opens the repository at url the way the binary does (storage/open,
// no retries), to inspect what a command left there; closed when t ends.
func OpenURL(t testing.TB, url string) *repo.Repo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := open.Store(ctx, url, open.Options{Concurrency: 4, Retry: retry.Policy{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
	t.Cleanup(func() { st.Close() })
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatalf("open repository %s: %v", url, err)
	}
	return r
}
