package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/oauth2/google"

	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/storagetest"
)

// emulatorEndpoint returns fake-gcs-server's URL, creating the test bucket
// there if it is missing.
func emulatorEndpoint(t *testing.T) (endpoint, bucket string) {
	t.Helper()
	env := testenv.GCS(t)
	endpoint = env.EmulatorHost
	if !strings.Contains(endpoint, "://") {
		endpoint = "http://" + endpoint
	}
	ensureBucket(t, endpoint, env.Bucket)
	return endpoint, env.Bucket
}

func ensureBucket(t *testing.T, endpoint, bucket string) {
	t.Helper()
	api := apiEndpoint(endpoint)
	resp, err := http.Get(api + "b/" + url.PathEscape(bucket))
	if err != nil {
		t.Fatalf("test bucket %s at %s: %v", bucket, endpoint, err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return
	}
	resp, err = http.Post(api+"b?project=walferry-test", "application/json", strings.NewReader(`{"name":"`+bucket+`"}`))
	if err != nil {
		t.Fatalf("test bucket %s at %s: %v", bucket, endpoint, err)
	}
	resp.Body.Close()
	// 409: created concurrently.
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusConflict {
		t.Fatalf("test bucket %s at %s: creating it: %s", bucket, endpoint, resp.Status)
	}
}

// newTestStore returns a client on a fresh prefix of the test bucket; its
// objects are deleted and the client closed when t ends.
func newTestStore(t *testing.T, endpoint, bucket string, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{Bucket: bucket, Prefix: testenv.UniquePrefix(t), Endpoint: endpoint}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { // runs before Close
		ctx := context.Background()
		var keys []string
		if err := c.List(ctx, "", func(oi storage.ObjectInfo) error {
			keys = append(keys, oi.Key)
			return nil
		}); err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		for _, k := range keys {
			if err := c.Delete(ctx, k); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return c
}

func TestConformance(t *testing.T) {
	endpoint, bucket := emulatorEndpoint(t)
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return newTestStore(t, endpoint, bucket, nil)
	})
}

// TestResumableUploads repeats the suite's write checks with the smallest
// upload buffer (256 KiB), so objects go as multi-chunk resumable uploads
// rather than one multipart request. (The whole suite is not rerun this way:
// fake-gcs-server's resumable uploads slow down with the square of the
// number of chunks, and its 200 MiB object would take ten minutes.)
func TestResumableUploads(t *testing.T) {
	endpoint, bucket := emulatorEndpoint(t)
	const chunk = 256 << 10
	small := func(c *Config) { c.ChunkSize = chunk }
	t.Run("RoundTrip", func(t *testing.T) {
		ctx := t.Context()
		c := newTestStore(t, endpoint, bucket, small)
		for i, size := range []int64{chunk - 1, chunk, chunk + 1, 3*chunk + 5} {
			key := fmt.Sprintf("rt/%d", size)
			if err := c.Put(ctx, key, storagetest.OnlyReader(storagetest.NewReader(uint64(i), size))); err != nil {
				t.Fatalf("Put(%d bytes): %v", size, err)
			}
			rc, err := c.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := storagetest.Verify(rc, uint64(i), size); err != nil {
				t.Errorf("Get(%d bytes): %v", size, err)
			}
			rc.Close()
		}
	})
	t.Run("ConditionalCreateRace", func(t *testing.T) {
		// Real GCS checks ifGenerationMatch=0 when the upload is finalised;
		// an emulator checking it only when the session starts would let
		// every writer win here.
		ctx := t.Context()
		c := newTestStore(t, endpoint, bucket, small)
		const writers = 8
		errs := make([]error, writers)
		start := make(chan struct{})
		done := make(chan int)
		for i := range writers {
			go func() {
				<-start
				errs[i] = c.PutIfAbsent(ctx, "race", storagetest.OnlyReader(storagetest.NewReader(uint64(i), 4*chunk+int64(i))))
				done <- i
			}()
		}
		close(start)
		for range writers {
			<-done
		}
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Errorf("writers %d and %d both won", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, storage.ErrExist):
				t.Errorf("writer %d: %v, want ErrExist", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no writer won")
		}
		rc, err := c.Get(ctx, "race")
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		if err := storagetest.Verify(rc, uint64(winner), 4*chunk+int64(winner)); err != nil {
			t.Errorf("winner %d's object: %v", winner, err)
		}
	})
	t.Run("AbandonNew", func(t *testing.T) { testAbandon(t, newTestStore(t, endpoint, bucket, small), false) })
	t.Run("AbandonExisting", func(t *testing.T) { testAbandon(t, newTestStore(t, endpoint, bucket, small), true) })
}

// testAbandon cancels an upload after several of its chunks were sent to
// the upload session: the session must never be finalised, so no object
// appears and an existing one is untouched.
func testAbandon(t *testing.T, c *Client, existing bool) {
	const key = "abandoned"
	if existing {
		if err := c.Put(t.Context(), key, strings.NewReader("old")); err != nil {
			t.Fatal(err)
		}
	}
	var sent int64
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := &funcReader{fn: func(p []byte) (int, error) {
		if sent >= 2<<20 {
			cancel()
			<-ctx.Done()
			return 0, ctx.Err()
		}
		n := min(len(p), 32<<10)
		for i := range p[:n] {
			p[i] = byte(sent + int64(i))
		}
		sent += int64(n)
		return n, nil
	}}
	err := c.Put(ctx, key, r)
	if err == nil {
		t.Fatal("Put cancelled mid-upload returned nil")
	}
	if storage.IsRetryable(err) {
		t.Errorf("Put cancelled mid-upload: %v is marked retryable", err)
	}
	info, err := c.Stat(t.Context(), key)
	switch {
	case !existing && !errors.Is(err, storage.ErrNotExist):
		t.Errorf("Stat after a cancelled upload = %+v, %v; want ErrNotExist", info, err)
	case existing && (err != nil || info.Size != 3):
		t.Errorf("Stat after a cancelled overwrite = %+v, %v; want the old 3-byte object", info, err)
	}
}

// TestEmulatorHostEnv reaches the emulator through STORAGE_EMULATOR_HOST
// alone, as users do.
func TestEmulatorHostEnv(t *testing.T) {
	endpoint, bucket := emulatorEndpoint(t)
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("STORAGE_EMULATOR_HOST", u.Host)
	c := newTestStore(t, "", bucket, nil)
	ctx := t.Context()
	if err := c.Put(ctx, "a/b", strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	rc, err := c.Get(ctx, "a/b")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || string(got) != "hello" {
		t.Fatalf("Get = %q, %v; want %q", got, err, "hello")
	}
}

type funcReader struct{ fn func([]byte) (int, error) }

func (f *funcReader) Read(p []byte) (int, error) { return f.fn(p) }

func TestMissingBucket(t *testing.T) {
	endpoint, _ := emulatorEndpoint(t)
	bucket := "walferry-missing-" + strings.TrimPrefix(testenv.UniquePrefix(t), "test-")
	c, err := New(t.Context(), Config{Bucket: bucket, Prefix: "p", Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	ops := map[string]func() error{
		"Put": func() error { return c.Put(ctx, "k", strings.NewReader("x")) },
		"PutIfAbsent": func() error {
			return c.PutIfAbsent(ctx, "k", strings.NewReader("x"))
		},
		"Get": func() error {
			rc, err := c.Get(ctx, "k")
			if err == nil {
				rc.Close()
			}
			return err
		},
		"GetRange": func() error {
			rc, err := c.GetRange(ctx, "k", 5, 5)
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Stat":   func() error { _, err := c.Stat(ctx, "k"); return err },
		"List":   func() error { return c.List(ctx, "", func(storage.ObjectInfo) error { return nil }) },
		"Delete": func() error { return c.Delete(ctx, "k") },
		"Copy":   func() error { return c.Copy(ctx, "k", "k2") },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			err := op()
			t.Log(err)
			if !errors.Is(err, storage.ErrNoBucket) {
				t.Fatalf("%s on a missing bucket = %v, want an error matching storage.ErrNoBucket", name, err)
			}
			if errors.Is(err, storage.ErrNotExist) || storage.IsRetryable(err) {
				t.Errorf("%s: %v also matches ErrNotExist or is retryable", name, err)
			}
			if msg := err.Error(); !strings.Contains(msg, bucket) || !strings.Contains(msg, "buckets create") {
				t.Errorf("%s: message %q should name the bucket and how to create it", name, msg)
			}
		})
	}
}

// deadEndpoint returns an http URL where nothing listens.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// TestNothingListening needs no emulator: every call to a dead endpoint
// fails at once (no retry loop, no hang) with a retryable error that says
// what could not be reached.
func TestNothingListening(t *testing.T) {
	endpoint := deadEndpoint(t)
	c, err := New(t.Context(), Config{Bucket: "b", Prefix: "p", Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A hang guard only: the calls must return long before it.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	ops := map[string]func() error{
		"Put":         func() error { return c.Put(ctx, "k", strings.NewReader("x")) },
		"PutLarge":    func() error { return c.Put(ctx, "k", io.LimitReader(zeros{}, 40<<20)) },
		"PutIfAbsent": func() error { return c.PutIfAbsent(ctx, "k", strings.NewReader("x")) },
		"Get": func() error {
			rc, err := c.Get(ctx, "k")
			if err == nil {
				rc.Close()
			}
			return err
		},
		"Stat":   func() error { _, err := c.Stat(ctx, "k"); return err },
		"List":   func() error { return c.List(ctx, "", func(storage.ObjectInfo) error { return nil }) },
		"Delete": func() error { return c.Delete(ctx, "k") },
		"Copy":   func() error { return c.Copy(ctx, "k", "k2") },
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			err := op()
			if err == nil {
				t.Fatalf("%s against %s succeeded", name, endpoint)
			}
			t.Log(err)
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("%s hung until the guard deadline: %v", name, err)
			}
			if !storage.IsRetryable(err) {
				t.Errorf("%s: %v is not marked retryable", name, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "cannot connect to "+endpoint) || !strings.Contains(msg, "connection refused") {
				t.Errorf("%s: message %q should name the endpoint and the cause", name, msg)
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestMissingCredentials(t *testing.T) {
	t.Setenv("STORAGE_EMULATOR_HOST", "")
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "missing.json"))
	_, err := New(t.Context(), Config{Bucket: "b"})
	if !errors.Is(err, storage.ErrPermission) || !strings.Contains(err.Error(), "GOOGLE_APPLICATION_CREDENTIALS") {
		t.Fatalf("New without credentials = %v, want ErrPermission naming GOOGLE_APPLICATION_CREDENTIALS", err)
	}
}

func TestCredentialsFileType(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          google.CredentialsType
		wantErr       bool
	}{
		{"service-account", `{"type":"service_account"}`, google.ServiceAccount, false},
		{"external-account", `{"type":"external_account"}`, google.ExternalAccount, false},
		{"unknown", `{"type":"api_key"}`, "", true},
		{"not-json", `type=x`, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".json")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := credentialsType(p)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("credentialsType = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	if _, err := credentialsType(filepath.Join(dir, "absent.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("credentialsType of a missing file = %v, want ErrNotExist", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // a field name; "" for valid
	}{
		{"minimal", Config{Bucket: "b"}, ""},
		{"full", Config{Bucket: "my-bucket.example", Prefix: "/a/b/", Endpoint: "http://127.0.0.1:4443", ChunkSize: 1 << 20}, ""},
		{"no-bucket", Config{}, "Bucket"},
		{"bucket-with-slash", Config{Bucket: "b/c"}, "Bucket"},
		{"bucket-upper", Config{Bucket: "Bucket"}, "Bucket"},
		{"prefix-dotdot", Config{Bucket: "b", Prefix: "a/../b"}, "Prefix"},
		{"prefix-empty-element", Config{Bucket: "b", Prefix: "a//b"}, "Prefix"},
		{"endpoint-no-scheme", Config{Bucket: "b", Endpoint: "127.0.0.1:4443"}, "Endpoint"},
		{"endpoint-ftp", Config{Bucket: "b", Endpoint: "ftp://x"}, "Endpoint"},
		{"negative-chunk", Config{Bucket: "b", ChunkSize: -1}, "ChunkSize"},
		{"negative-attempts", Config{Bucket: "b", MaxAttempts: -1}, "MaxAttempts"},
		{"negative-timeout", Config{Bucket: "b", DialTimeout: -time.Second}, "DialTimeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestAPIEndpoint(t *testing.T) {
	tests := []struct{ in, want string }{
		{"http://127.0.0.1:4443", "http://127.0.0.1:4443/storage/v1/"},
		{"http://127.0.0.1:4443/", "http://127.0.0.1:4443/storage/v1/"},
		{"https://storage.example.com/storage/v1", "https://storage.example.com/storage/v1/"},
		{"https://storage.example.com/storage/v1/", "https://storage.example.com/storage/v1/"},
	}
	for _, tc := range tests {
		if got := apiEndpoint(tc.in); got != tc.want {
			t.Errorf("apiEndpoint(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestStringAndKeys(t *testing.T) {
	for _, tc := range []struct {
		cfg        Config
		str, jcKey string
	}{
		{Config{Bucket: "b"}, "gs://b", "k/x"},
		{Config{Bucket: "b", Prefix: "/p/q/"}, "gs://b/p/q", "p/q/k/x"},
	} {
		c, err := New(t.Context(), Config{Bucket: tc.cfg.Bucket, Prefix: tc.cfg.Prefix, Endpoint: "http://127.0.0.1:1"})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.String(); got != tc.str {
			t.Errorf("String() = %q, want %q", got, tc.str)
		}
		if got := c.objectName("k/x"); got != tc.jcKey {
			t.Errorf("objectName(k/x) = %q, want %q", got, tc.jcKey)
		}
		c.Close()
	}
	for _, key := range []string{"", "/a", "a/", "a//b", "a/./b", "../a", "a/.."} {
		if err := checkKey("put", key); !errors.Is(err, os.ErrInvalid) {
			t.Errorf("checkKey(%q) = %v, want ErrInvalid", key, err)
		}
	}
	for _, key := range []string{"a", "a/b.c", "a/..b", "a/.hidden"} {
		if err := checkKey("put", key); err != nil {
			t.Errorf("checkKey(%q) = %v, want nil", key, err)
		}
	}
}

func TestClassify(t *testing.T) {
	c := &Client{bucketName: "b", prefix: "p", endpoint: "http://127.0.0.1:9", endpointBy: "test"}
	dial := &url.Error{Op: "Get", URL: "http://127.0.0.1:9/x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	reset := &url.Error{Op: "Put", URL: "http://127.0.0.1:9/x", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}
	tests := []struct {
		name      string
		err       error
		is        error
		retryable bool
		contains  string
	}{
		{"403", &apiError{Code: 403, Message: "denied"}, storage.ErrPermission, false, "GOOGLE_APPLICATION_CREDENTIALS"},
		{"401", &apiError{Code: 401}, storage.ErrPermission, false, "GOOGLE_APPLICATION_CREDENTIALS"},
		{"412", &apiError{Code: 412}, storage.ErrExist, false, ""},
		{"429", &apiError{Code: 429}, nil, true, ""},
		{"503", &apiError{Code: 503}, nil, true, ""},
		{"400", &apiError{Code: 400}, nil, false, ""},
		{"dial", dial, syscall.ECONNREFUSED, true, "cannot connect to http://127.0.0.1:9"},
		{"reset", reset, syscall.ECONNRESET, true, ""},
		{"unexpected-eof", fmt.Errorf("x: %w", io.ErrUnexpectedEOF), io.ErrUnexpectedEOF, true, ""},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), context.Canceled, false, ""},
		{"other", errors.New("boom"), nil, false, "boom"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.classify("get", "k", tc.err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("classify = %v, want it to match %v", err, tc.is)
			}
			if got := storage.IsRetryable(err); got != tc.retryable {
				t.Errorf("IsRetryable(%v) = %v, want %v", err, got, tc.retryable)
			}
			if !strings.HasPrefix(err.Error(), "gcs: get k") || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("message %q should start with %q and contain %q", err, "gcs: get k", tc.contains)
			}
		})
	}
}
