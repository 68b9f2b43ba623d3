package s3

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/storagetest"
)

const mib = 1 << 20

// newTestClient returns a Client on the MinIO test bucket under a fresh
// prefix, creating the bucket if needed, and removes everything under the
// prefix (objects and unfinished multipart uploads) when the test ends.
func newTestClient(t *testing.T, mutate func(*Config)) *Client {
	t.Helper()
	env := testenv.S3(t)
	cfg := Config{
		Bucket:          env.Bucket,
		Prefix:          testenv.UniquePrefix(t),
		Endpoint:        env.Endpoint,
		Region:          env.Region,
		PathStyle:       true,
		AccessKeyID:     env.AccessKey,
		SecretAccessKey: env.SecretKey,
		PartSize:        MinPartSize,
		Concurrency:     4,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ensureBucket(t, c)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		removeAll(t, ctx, c)
		c.Close()
	})
	return c
}

func ensureBucket(t *testing.T, c *Client) {
	t.Helper()
	_, err := c.api.CreateBucket(t.Context(), &s3.CreateBucketInput{Bucket: &c.bucket})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err != nil && !errors.As(err, &owned) && !errors.As(err, &exists) {
		t.Fatalf("create bucket %s: %v", c.bucket, err)
	}
}

func removeAll(t *testing.T, ctx context.Context, c *Client) {
	t.Helper()
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
	for _, u := range listUploads(t, ctx, c) {
		if _, err := c.api.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: &c.bucket, Key: u.Key, UploadId: u.UploadId,
		}); err != nil {
			t.Errorf("cleanup: abort %s: %v", aws.ToString(u.Key), err)
		}
	}
}

// listUploads returns the unfinished multipart uploads under c's prefix.
func listUploads(t *testing.T, ctx context.Context, c *Client) []types.MultipartUpload {
	t.Helper()
	out, err := c.api.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &c.bucket, Prefix: aws.String(c.prefix)})
	if err != nil {
		t.Fatalf("ListMultipartUploads: %v", err)
	}
	return out.Uploads
}

func checkNoUploads(t *testing.T, c *Client) {
	t.Helper()
	if ups := listUploads(t, t.Context(), c); len(ups) != 0 {
		t.Errorf("%d dangling multipart uploads, first on %q", len(ups), aws.ToString(ups[0].Key))
	}
}

func checkObject(t *testing.T, c *Client, key string, seed uint64, size int64) {
	t.Helper()
	rc, err := c.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	if err := storagetest.Verify(rc, seed, size); err != nil {
		t.Errorf("Get(%q): %v", key, err)
	}
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return newTestClient(t, nil)
	})
}

// TestConformanceDefaults runs the suite once more with the default part
// size and concurrency.
func TestConformanceDefaults(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	storagetest.Run(t, func(t *testing.T) storage.Store {
		return newTestClient(t, func(c *Config) { c.PartSize, c.Concurrency = 0, 0 })
	})
}

func TestPutSizes(t *testing.T) {
	c := newTestClient(t, func(c *Config) { c.Concurrency = 2 })
	for i, size := range []int64{0, 1, 5*mib - 1, 5 * mib, 5*mib + 1, 10 * mib, 10*mib + 1, 23*mib + 17} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			key := fmt.Sprintf("sizes/%d", size)
			seed := uint64(i + 1)
			if err := c.Put(t.Context(), key, storagetest.OnlyReader(storagetest.NewReader(seed, size))); err != nil {
				t.Fatalf("Put: %v", err)
			}
			checkObject(t, c, key, seed, size)
			info, err := c.Stat(t.Context(), key)
			if err != nil || info.Size != size {
				t.Errorf("Stat = %+v, %v; want size %d", info, err, size)
			}
		})
	}
	checkNoUploads(t, c)
	if n := len(c.sem); n != 0 {
		t.Errorf("%d part buffers still held after all Puts returned", n)
	}
}

// blockAfter yields r's bytes, then cancels and blocks until ctx is done.
type blockAfter struct {
	ctx    context.Context
	cancel context.CancelFunc
	r      io.Reader
}

func (b *blockAfter) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.cancel()
		<-b.ctx.Done()
		return n, b.ctx.Err()
	}
	return n, err
}

func TestCancelMidMultipart(t *testing.T) {
	c := newTestClient(t, nil)
	for _, ifAbsent := range []bool{false, true} {
		t.Run(fmt.Sprintf("ifAbsent=%t", ifAbsent), func(t *testing.T) {
			const key = "cancel/object"
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			r := &blockAfter{ctx: ctx, cancel: cancel, r: storagetest.NewReader(1, 17*mib)}
			var err error
			if ifAbsent {
				err = c.PutIfAbsent(ctx, key, r)
			} else {
				err = c.Put(ctx, key, r)
			}
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Put = %v, want context.Canceled", err)
			}
			if storage.IsRetryable(err) {
				t.Errorf("cancelled Put is retryable: %v", err)
			}
			if _, err := c.Stat(t.Context(), key); !errors.Is(err, storage.ErrNotExist) {
				t.Errorf("Stat after cancelled Put = %v, want ErrNotExist", err)
			}
			checkNoUploads(t, c)
		})
	}
	// Cancelled while parts are in flight rather than while reading.
	t.Run("during-upload", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			done <- c.Put(ctx, "cancel/inflight", storagetest.OnlyReader(storagetest.NewReader(2, 300*mib)))
		}()
		time.Sleep(300 * time.Millisecond)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Put = %v, want context.Canceled", err)
		}
		if _, err := c.Stat(t.Context(), "cancel/inflight"); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Stat after cancelled Put = %v, want ErrNotExist", err)
		}
		checkNoUploads(t, c)
	})
	if n := len(c.sem); n != 0 {
		t.Errorf("%d part buffers still held after cancelled Puts", n)
	}
}

type errAfter struct {
	r   io.Reader
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = e.err
	}
	return n, err
}

func TestReaderErrorAbortsMultipart(t *testing.T) {
	c := newTestClient(t, nil)
	boom := errors.New("boom")
	err := c.Put(t.Context(), "readerr", &errAfter{r: storagetest.NewReader(1, 13*mib), err: boom})
	if !errors.Is(err, boom) {
		t.Fatalf("Put = %v, want the reader's error", err)
	}
	if storage.IsRetryable(err) {
		t.Errorf("reader error is retryable: %v", err)
	}
	if _, err := c.Stat(t.Context(), "readerr"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat = %v, want ErrNotExist", err)
	}
	checkNoUploads(t, c)
}

// TestConditionalWrites checks that MinIO really honours If-None-Match: *
// on PutObject and on CompleteMultipartUpload.
func TestConditionalWrites(t *testing.T) {
	c := newTestClient(t, nil)
	ctx := t.Context()
	for _, tc := range []struct {
		name      string
		existing  int64
		candidate int64
	}{
		{"single-over-single", 100, 200},
		{"multipart-over-single", 100, 12 * mib},
		{"single-over-multipart", 11 * mib, 200},
		{"multipart-over-multipart", 11 * mib, 12 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "cond/" + tc.name
			if err := c.PutIfAbsent(ctx, key, storagetest.OnlyReader(storagetest.NewReader(1, tc.existing))); err != nil {
				t.Fatalf("PutIfAbsent of a free key: %v", err)
			}
			err := c.PutIfAbsent(ctx, key, storagetest.OnlyReader(storagetest.NewReader(2, tc.candidate)))
			if !errors.Is(err, storage.ErrExist) {
				t.Fatalf("PutIfAbsent of a taken key = %v, want ErrExist", err)
			}
			if code := errorCode(err); code != "PreconditionFailed" {
				t.Errorf("server error code = %q, want PreconditionFailed (%v)", code, err)
			}
			if storage.IsRetryable(err) {
				t.Errorf("ErrExist is retryable: %v", err)
			}
			checkObject(t, c, key, 1, tc.existing)
			checkNoUploads(t, c)
		})
	}

	// The object appears between CreateMultipartUpload and
	// CompleteMultipartUpload: only the completion's condition can catch it.
	t.Run("raw-complete-after-create", func(t *testing.T) {
		full := c.prefix + "cond/raw"
		up, err := c.api.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &c.bucket, Key: &full})
		if err != nil {
			t.Fatal(err)
		}
		part, err := c.api.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: &c.bucket, Key: &full, UploadId: up.UploadId, PartNumber: aws.Int32(1),
			Body: strings.NewReader("hello"), ContentLength: aws.Int64(5),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Put(ctx, "cond/raw", strings.NewReader("winner")); err != nil {
			t.Fatal(err)
		}
		_, err = c.api.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: &c.bucket, Key: &full, UploadId: up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: []types.CompletedPart{{ETag: part.ETag, PartNumber: aws.Int32(1)}}},
			IfNoneMatch:     aws.String("*"),
		})
		var ae smithy.APIError
		if !errors.As(err, &ae) || (ae.ErrorCode() != "PreconditionFailed" && ae.ErrorCode() != "ConditionalRequestConflict") {
			t.Fatalf("CompleteMultipartUpload with If-None-Match over an existing object = %v, want 412 PreconditionFailed", err)
		}
		if !errors.Is(c.classify(err), storage.ErrExist) {
			t.Errorf("classify(%v) does not match ErrExist", err)
		}
		rc, err := c.Get(ctx, "cond/raw")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if string(got) != "winner" {
			t.Errorf("object = %q, want %q", got, "winner")
		}
		if _, err := c.api.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &c.bucket, Key: &full, UploadId: up.UploadId}); err != nil {
			t.Errorf("abort: %v", err)
		}
	})

	// Many multipart writers race for one key: the completions decide.
	t.Run("multipart-race", func(t *testing.T) {
		const writers = 6
		const key = "cond/race"
		size := func(i int) int64 { return 11*mib + int64(i) }
		errs := make([]error, writers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				<-start
				errs[i] = c.PutIfAbsent(ctx, key, storagetest.OnlyReader(storagetest.NewReader(uint64(10+i), size(i))))
			})
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner < 0:
				winner = i
			case err == nil:
				t.Errorf("writers %d and %d both won", winner, i)
			case !errors.Is(err, storage.ErrExist):
				t.Errorf("writer %d: %v, want ErrExist", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no writer won")
		}
		checkObject(t, c, key, uint64(10+winner), size(winner))
		checkNoUploads(t, c)
	})
}

func TestCopyMultipart(t *testing.T) {
	c := newTestClient(t, nil)
	c.copyPartSize = MinPartSize
	ctx := t.Context()
	const size = 12*mib + 5
	if err := c.Put(ctx, "copy/src", storagetest.NewReader(3, size)); err != nil {
		t.Fatal(err)
	}
	info, err := c.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &c.bucket, Key: aws.String(c.prefix + "copy/src")})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.copyMultipart(ctx, "copy/src", "copy/dst with space", size, aws.ToString(info.ETag)); err != nil {
		t.Fatalf("copyMultipart: %v", err)
	}
	checkObject(t, c, "copy/dst with space", 3, size)
	// A changed source (another ETag) must fail and leave nothing behind.
	err = c.copyMultipart(ctx, "copy/src", "copy/dst2", size, `"0123456789abcdef0123456789abcdef"`)
	if err == nil {
		t.Fatal("copyMultipart with a stale ETag succeeded")
	}
	if _, err := c.Stat(ctx, "copy/dst2"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat = %v, want ErrNotExist", err)
	}
	checkNoUploads(t, c)
}

func TestWrongCredentials(t *testing.T) {
	for _, tc := range []struct {
		name, id, secret, hint string
	}{
		{"secret", "", "wrong-secret", "AWS_SECRET_ACCESS_KEY"},
		{"access-key", "no-such-user", "wrong-secret", "AWS_ACCESS_KEY_ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			newTestClient(t, nil) // the bucket must exist
			env := testenv.S3(t)
			id := tc.id
			if id == "" {
				id = env.AccessKey
			}
			c, err := New(t.Context(), Config{
				Bucket: env.Bucket, Prefix: "x", Endpoint: env.Endpoint, Region: env.Region,
				AccessKeyID: id, SecretAccessKey: tc.secret,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx := t.Context()
			errs := map[string]error{}
			errs["Put"] = c.Put(ctx, "k", strings.NewReader("data"))
			_, errs["Get"] = c.Get(ctx, "k")
			_, errs["Stat"] = c.Stat(ctx, "k")
			errs["List"] = c.List(ctx, "", func(storage.ObjectInfo) error { return nil })
			errs["Delete"] = c.Delete(ctx, "k")
			for op, err := range errs {
				if !errors.Is(err, storage.ErrPermission) {
					t.Errorf("%s = %v, want ErrPermission", op, err)
					continue
				}
				if storage.IsRetryable(err) {
					t.Errorf("%s: permission error is retryable: %v", op, err)
				}
				if !strings.Contains(err.Error(), tc.hint) {
					t.Errorf("%s = %q, want it to name %s", op, err, tc.hint)
				}
			}
			t.Logf("Put: %v", errs["Put"])
		})
	}
}

func TestMissingBucket(t *testing.T) {
	env := testenv.S3(t)
	var b [4]byte
	rand.Read(b[:])
	bucket := "walferry-missing-" + hex.EncodeToString(b[:])
	c, err := New(t.Context(), Config{
		Bucket: bucket, Endpoint: env.Endpoint, Region: env.Region, PathStyle: true,
		AccessKeyID: env.AccessKey, SecretAccessKey: env.SecretKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()
	errs := map[string]error{}
	errs["Put"] = c.Put(ctx, "k", strings.NewReader("data"))
	errs["PutMultipart"] = c.Put(ctx, "k", storagetest.NewReader(1, 9*mib))
	_, errs["Get"] = c.Get(ctx, "k")
	_, errs["GetRange"] = c.GetRange(ctx, "k", 5, 10)
	_, errs["Stat"] = c.Stat(ctx, "k")
	errs["List"] = c.List(ctx, "", func(storage.ObjectInfo) error { return nil })
	errs["Copy"] = c.Copy(ctx, "k", "l")
	for op, err := range errs {
		if !errors.Is(err, storage.ErrNoBucket) {
			t.Errorf("%s = %v, want ErrNoBucket", op, err)
			continue
		}
		if errors.Is(err, storage.ErrNotExist) {
			t.Errorf("%s = %v also matches ErrNotExist", op, err)
		}
		if !strings.Contains(err.Error(), bucket) {
			t.Errorf("%s = %q, want it to name the bucket", op, err)
		}
	}
	t.Logf("Stat: %v", errs["Stat"])
}

func TestUnreachableEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	c, err := New(t.Context(), Config{
		Bucket: "b", Endpoint: endpoint, AccessKeyID: "a", SecretAccessKey: "s",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A generous guard only: the assertion is on the error class.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for op, f := range map[string]func() error{
		"Stat": func() error { _, err := c.Stat(ctx, "k"); return err },
		"Put":  func() error { return c.Put(ctx, "k", strings.NewReader("x")) },
		"Get":  func() error { _, err := c.Get(ctx, "k"); return err },
	} {
		err := f()
		if err == nil {
			t.Fatalf("%s against %s succeeded", op, endpoint)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s hung until the guard deadline: %v", op, err)
		}
		if !storage.IsRetryable(err) {
			t.Errorf("%s = %v, want a retryable error", op, err)
		}
		want := "cannot reach endpoint " + endpoint + ": connection refused"
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s = %q, want it to contain %q", op, err, want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string // "" when valid
	}{
		{"minimal", Config{Bucket: "b"}, ""},
		{"full", Config{Bucket: "b", Endpoint: "https://s3.example", PartSize: 16 * mib, Concurrency: 8, AccessKeyID: "a", SecretAccessKey: "s"}, ""},
		{"no-bucket", Config{}, "Bucket"},
		{"endpoint-no-scheme", Config{Bucket: "b", Endpoint: "minio:9000"}, "Endpoint"},
		{"endpoint-ftp", Config{Bucket: "b", Endpoint: "ftp://x"}, "Endpoint"},
		{"half-credentials", Config{Bucket: "b", AccessKeyID: "a"}, "SecretAccessKey"},
		{"small-part", Config{Bucket: "b", PartSize: 1 * mib}, "PartSize"},
		{"huge-part", Config{Bucket: "b", PartSize: 6 << 30}, "PartSize"},
		{"negative-concurrency", Config{Bucket: "b", Concurrency: -1}, "Concurrency"},
		{"negative-attempts", Config{Bucket: "b", MaxAttempts: -1}, "MaxAttempts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.field != "" && (err == nil || !strings.Contains(err.Error(), tc.field)):
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

func TestConfigRedacted(t *testing.T) {
	cfg := Config{Bucket: "b", AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "very-secret", SessionToken: "token-secret"}
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprint(&cfg)} {
		if strings.Contains(s, "very-secret") || strings.Contains(s, "token-secret") {
			t.Errorf("formatted config leaks a secret: %s", s)
		}
	}
}

func TestPathStyleDefault(t *testing.T) {
	for endpoint, want := range map[string]bool{
		"":                         false,
		"https://s3.amazonaws.com": false,
		"http://127.0.0.1:9000":    true,
		"http://[::1]:9000":        true,
		"http://localhost:9000":    true,
		"https://minio.example":    false,
	} {
		if got := hostNeedsPathStyle(endpoint); got != want {
			t.Errorf("hostNeedsPathStyle(%q) = %t, want %t", endpoint, got, want)
		}
	}
}

func TestClassify(t *testing.T) {
	c := &Client{bucket: "b", endpoint: "http://e"}
	tests := []struct {
		code      string
		kind      error
		retryable bool
	}{
		{"NoSuchKey", storage.ErrNotExist, false},
		{"NotFound", storage.ErrNotExist, false},
		{"NoSuchBucket", storage.ErrNoBucket, false},
		{"AccessDenied", storage.ErrPermission, false},
		{"InvalidAccessKeyId", storage.ErrPermission, false},
		{"SignatureDoesNotMatch", storage.ErrPermission, false},
		{"PreconditionFailed", storage.ErrExist, false},
		{"ConditionalRequestConflict", storage.ErrExist, false},
		{"NotImplemented", errors.ErrUnsupported, false},
		{"SlowDown", nil, true},
		{"RequestTimeout", nil, true},
		{"InternalError", nil, true},
		{"ServiceUnavailable", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			err := c.wrap(context.Background(), "get", "k", &smithy.GenericAPIError{Code: tc.code, Message: "m"})
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("%v does not match %v", err, tc.kind)
			}
			if got := storage.IsRetryable(err); got != tc.retryable {
				t.Errorf("IsRetryable(%v) = %t, want %t", err, got, tc.retryable)
			}
			if !strings.HasPrefix(err.Error(), "s3: get k: ") {
				t.Errorf("message %q lacks the operation", err)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.wrap(ctx, "get", "k", fmt.Errorf("sdk: %w", context.Canceled))
	if !errors.Is(err, context.Canceled) || storage.IsRetryable(err) {
		t.Errorf("cancelled: %v (retryable %t)", err, storage.IsRetryable(err))
	}
}

func TestNoCredentials(t *testing.T) {
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"} {
		t.Setenv(v, "")
	}
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/none")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	c, err := New(t.Context(), Config{Bucket: "b", Endpoint: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Stat(t.Context(), "k")
	if !errors.Is(err, storage.ErrPermission) || storage.IsRetryable(err) {
		t.Fatalf("Stat without credentials = %v, want a permanent ErrPermission", err)
	}
	if !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("Stat without credentials = %q, want it to name AWS_ACCESS_KEY_ID", err)
	}
}

// TestSharedBuffers runs more multipart Puts at once than the Client has
// part buffers: they share them, all finish, and no more are allocated.
func TestSharedBuffers(t *testing.T) {
	c := newTestClient(t, func(c *Config) { c.Concurrency = 2 })
	const writers = 6
	size := func(i int) int64 { return 11*mib + int64(i) }
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			errs[i] = c.Put(t.Context(), fmt.Sprintf("shared/%d", i), storagetest.OnlyReader(storagetest.NewReader(uint64(i), size(i))))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
		checkObject(t, c, fmt.Sprintf("shared/%d", i), uint64(i), size(i))
	}
	if len(c.sem) != 0 || len(c.free) > 2 {
		t.Errorf("after all Puts: %d buffers held, %d idle; want 0 held, at most 2 idle", len(c.sem), len(c.free))
	}
}
