package azure

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/storagetest"
)

// noEnv keeps the developer's AZURE_STORAGE_* variables out of the tests.
func noEnv(string) string { return "" }

// ensureContainer creates the test container if it is missing.
func ensureContainer(t *testing.T, env testenv.AzureEnv) {
	t.Helper()
	cc, err := container.NewClientFromConnectionString(env.ConnectionString, env.Container, nil)
	if err != nil {
		t.Fatalf("container client: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := cc.Create(ctx, nil); err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		t.Fatalf("create container %q: %v", env.Container, err)
	}
}

// newTestClient returns a client on the test container under a fresh prefix,
// emptied and closed when the test ends. mod, if not nil, adjusts the Config.
func newTestClient(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	env := testenv.Azure(t)
	ensureContainer(t, env)
	cfg := Config{
		Container:        env.Container,
		Prefix:           testenv.UniquePrefix(t),
		ConnectionString: env.ConnectionString,
		Getenv:           noEnv,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var keys []string
		if err := c.List(ctx, "", func(oi storage.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		}); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		for _, k := range keys {
			if err := c.Delete(ctx, k); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newTestClient(t, nil) })
}

// TestSmallBlocks runs the multi-block paths (staging, commit, conditional
// commit) with the smallest block size, so that the conformance suite's
// larger objects span many blocks.
func TestSmallBlocks(t *testing.T) {
	c := newTestClient(t, func(cfg *Config) { cfg.BlockSize = minBlockSize; cfg.Concurrency = 3 })
	ctx := t.Context()
	const size = 5*minBlockSize + 17
	if err := c.PutIfAbsent(ctx, "multi", storagetest.OnlyReader(storagetest.NewReader(1, size))); err != nil {
		t.Fatalf("PutIfAbsent of a free key: %v", err)
	}
	err := c.PutIfAbsent(ctx, "multi", storagetest.OnlyReader(storagetest.NewReader(2, size)))
	if !errors.Is(err, storage.ErrExist) {
		t.Errorf("PutIfAbsent of a taken key = %v, want an error matching storage.ErrExist", err)
	}
	rc, err := c.Get(ctx, "multi")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := storagetest.Verify(rc, 1, size); err != nil {
		t.Errorf("Get: %v", err)
	}
	// Exactly one block: staged (it might have been followed by more),
	// then committed as a one-block list.
	if err := c.Put(ctx, "one-block", storagetest.OnlyReader(storagetest.NewReader(3, minBlockSize))); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Stat(ctx, "one-block"); err != nil || info.Size != minBlockSize {
		t.Errorf("Stat(one-block) = %+v, %v; want %d bytes", info, err, minBlockSize)
	}
}

func TestWrongAccountKey(t *testing.T) {
	env := testenv.Azure(t)
	ensureContainer(t, env)
	cs, err := parseConnectionString(env.ConnectionString)
	if err != nil {
		t.Fatal(err)
	}
	if cs.account == "" {
		t.Skip("the test connection string has no account name")
	}
	wrong := base64.StdEncoding.EncodeToString([]byte("definitely not the key of this storage account"))
	c, err := New(t.Context(), Config{
		Container:  env.Container,
		Account:    cs.account,
		AccountKey: wrong,
		Endpoint:   cs.serviceURL,
		Getenv:     noEnv,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	_, err = c.Stat(t.Context(), "any/key")
	if !errors.Is(err, storage.ErrPermission) {
		t.Fatalf("Stat with a wrong key = %v, want an error matching storage.ErrPermission", err)
	}
	if storage.IsRetryable(err) {
		t.Errorf("Stat with a wrong key = %v, marked retryable", err)
	}
	if !strings.Contains(err.Error(), EnvAccountKey) {
		t.Errorf("error %q does not name %s", err, EnvAccountKey)
	}
	err = c.Put(t.Context(), "any/key", strings.NewReader("x"))
	if !errors.Is(err, storage.ErrPermission) {
		t.Errorf("Put with a wrong key = %v, want an error matching storage.ErrPermission", err)
	}
}

func TestMissingContainer(t *testing.T) {
	env := testenv.Azure(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "walferry-missing-" + hex.EncodeToString(b[:])
	c, err := New(t.Context(), Config{Container: name, Prefix: "p", ConnectionString: env.ConnectionString, Getenv: noEnv})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	ctx := t.Context()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, storage.ErrNoBucket) || errors.Is(err, storage.ErrNotExist) {
			t.Errorf("%s in a missing container = %v, want an error matching storage.ErrNoBucket only", op, err)
			return
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %q does not name the container", op, err)
		}
	}
	_, err = c.Stat(ctx, "k")
	check("Stat", err)
	_, err = c.Get(ctx, "k")
	check("Get", err)
	_, err = c.GetRange(ctx, "k", 5, 5)
	check("GetRange", err)
	check("List", c.List(ctx, "", func(storage.ObjectInfo) error { return nil }))
	check("Put", c.Put(ctx, "k", bytes.NewReader(make([]byte, 100))))
	check("PutIfAbsent", c.PutIfAbsent(ctx, "k", bytes.NewReader(make([]byte, 100))))
	check("Delete", c.Delete(ctx, "k"))
	check("Copy", c.Copy(ctx, "k", "k2"))
}

// deadEndpoint returns an http URL on which nothing listens.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/" + devStoreAccount
}

func TestNothingListening(t *testing.T) {
	ep := deadEndpoint(t)
	c, err := New(t.Context(), Config{
		Container:        "walferry-test",
		ConnectionString: "DefaultEndpointsProtocol=http;AccountName=" + devStoreAccount + ";AccountKey=" + devStoreKey + ";BlobEndpoint=" + ep + ";",
		Getenv:           noEnv,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	// A generous safety net; the assertion is on the error, not the time.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, err = c.Stat(ctx, "k")
	if err == nil {
		t.Fatal("Stat against a dead endpoint succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("Stat against a dead endpoint only ended with the test's deadline: %v", err)
	}
	if !storage.IsRetryable(err) {
		t.Errorf("error %q is not marked retryable", err)
	}
	if errors.Is(err, storage.ErrNotExist) || errors.Is(err, storage.ErrPermission) || errors.Is(err, storage.ErrNoBucket) {
		t.Errorf("error %q is misclassified", err)
	}
	if !strings.Contains(err.Error(), "cannot connect") || !strings.Contains(err.Error(), ep) {
		t.Errorf("error %q does not say it cannot connect to %s", err, ep)
	}
	if err := c.Put(ctx, "k", strings.NewReader("data")); err == nil || !storage.IsRetryable(err) {
		t.Errorf("Put against a dead endpoint = %v, want a retryable error", err)
	}
}

// TestUnresponsiveEndpoint: a server that accepts connections and never
// answers must not hang a call; the per-try timeout ends it.
func TestUnresponsiveEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, conn) }() // read, never answer
		}
	}()
	c, err := New(t.Context(), Config{
		Container:  "walferry-test",
		Account:    devStoreAccount,
		AccountKey: devStoreKey,
		Endpoint:   "http://" + l.Addr().String() + "/" + devStoreAccount,
		TryTimeout: 300 * time.Millisecond,
		MaxRetries: 1,
		Getenv:     noEnv,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, err = c.Stat(ctx, "k")
	if err == nil {
		t.Fatal("Stat against a silent server succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("Stat against a silent server only ended with the test's deadline: %v", err)
	}
	if !storage.IsRetryable(err) {
		t.Errorf("error %q is not marked retryable", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %q matches context.DeadlineExceeded although the caller's context is alive", err)
	}
}
