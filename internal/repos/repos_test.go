package repos

import (
	"context"
	"net"
	"testing"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/storage/open"
	"github.com/walferry/walferry/storage/retry"
)

// fsRepoURL initialises a filesystem repository of cluster sysID and
// returns its URL.
func fsRepoURL(t *testing.T, sysID uint64) string {
	t.Helper()
	st, root := teststore.FS(t)
	cl := repo.Cluster{SystemID: sysID, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "test"}
	if _, err := repo.Init(context.Background(), st, repo.InitOptions{Cluster: cl, Compression: "lz4"}); err != nil {
		t.Fatal(err)
	}
	return "file://" + root
}

// deadS3URL is an S3 repository on a port nobody listens on.
func deadS3URL(t *testing.T) string {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "walferry-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "walferry-test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "s3://bucket/prefix?endpoint=http://" + addr + "&path-style=true"
}

func options(urls ...string) Options {
	return Options{URLs: urls, Store: open.Options{Concurrency: 2, Retry: retry.Policy{MaxAttempts: 1}}}
}

func TestOpenAvailableSkipsUnreachable(t *testing.T) {
	ctx := context.Background()
	dead, good := deadS3URL(t), fsRepoURL(t, 1)

	if s, err := Open(ctx, options(dead, good)); err == nil {
		s.Close()
		t.Fatal("Open with an unreachable repository succeeded; it needs every one")
	}

	s, skipped, err := OpenAvailable(ctx, options(dead, good), nil)
	if err != nil {
		t.Fatalf("OpenAvailable: %v", err)
	}
	defer s.Close()
	if len(s.Repos) != 1 || len(skipped) != 1 {
		t.Fatalf("opened %d, skipped %d; want 1 and 1", len(s.Repos), len(skipped))
	}
	if k := failure.Of(skipped[0]); k != failure.Transient {
		t.Errorf("the skipped repository's error is %v, want Transient: %v", k, skipped[0])
	}
}

func TestOpenAvailableFailsOnConfigurationErrors(t *testing.T) {
	ctx := context.Background()
	// Another cluster's repository is a mistake to fix, not an outage to
	// read around.
	if s, _, err := OpenAvailable(ctx, options(fsRepoURL(t, 1), fsRepoURL(t, 2)), nil); err == nil {
		s.Close()
		t.Fatal("OpenAvailable accepted repositories of two clusters")
	} else if k := failure.Of(err); k != failure.WrongCluster {
		t.Errorf("kind %v, want WrongCluster: %v", k, err)
	}
	// Nothing reachable at all is an error, the outage's.
	if s, _, err := OpenAvailable(ctx, options(deadS3URL(t)), nil); err == nil {
		s.Close()
		t.Fatal("OpenAvailable with no reachable repository succeeded")
	} else if k := failure.Of(err); k != failure.Transient {
		t.Errorf("kind %v, want Transient: %v", k, err)
	}
}
