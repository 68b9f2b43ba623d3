// Command etcd is a single-member etcd for tests: internal/testenv.Kube runs
// it under kube-apiserver. It embeds go.etcd.io/etcd/server/v3 so that the
// tests need no etcd release download, only the Go module proxy.
//
// It listens on the given loopback addresses only, keeps its data in -data-dir,
// prints "etcd ready" on stderr once it serves clients and stops cleanly on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		dataDir   = flag.String("data-dir", "", "data directory (required)")
		client    = flag.String("listen-client", "127.0.0.1:2379", "host:port for clients")
		peer      = flag.String("listen-peer", "127.0.0.1:2380", "host:port for peers (a single member still needs one)")
		logLevel  = flag.String("log-level", "warn", "debug, info, warn or error")
		noFsync   = flag.Bool("unsafe-no-fsync", false, "skip fsync: test data only, lost on a crash")
		startWait = flag.Duration("start-timeout", time.Minute, "how long to wait for the server to become ready")
	)
	flag.Parse()
	if *dataDir == "" {
		return errors.New("-data-dir is required: pass a directory the test owns")
	}

	clientURL, err := url.Parse("http://" + *client)
	if err != nil {
		return fmt.Errorf("-listen-client %q: %w (want host:port)", *client, err)
	}
	peerURL, err := url.Parse("http://" + *peer)
	if err != nil {
		return fmt.Errorf("-listen-peer %q: %w (want host:port)", *peer, err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "walferry-test"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = *logLevel
	cfg.UnsafeNoFsync = *noFsync
	// The default metrics listener and the v2 discovery are not wanted: the
	// only client is the apiserver of one test.
	cfg.Metrics = "basic"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start: %w (is %s or %s already in use?)", err, *client, *peer)
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd ready")
	case <-time.After(*startWait):
		e.Server.Stop()
		return fmt.Errorf("not ready after %s: see the log above", *startWait)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("serve: %w", err)
	}
}
