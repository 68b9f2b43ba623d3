// Package s3 stores walferry repositories in Amazon S3 and S3-compatible
// object stores (MinIO, Ceph RGW, ...) through aws-sdk-go-v2.
//
// Credentials, region and endpoint come from the SDK's standard chain unless
// Config sets them: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
// AWS_SESSION_TOKEN, shared config and credentials files (AWS_PROFILE), IRSA
// web identity, EKS pod identity, ECS task roles and EC2 IMDS; AWS_REGION;
// AWS_ENDPOINT_URL_S3.
//
// Writes are atomic: small objects go up in one PutObject, larger ones as a
// multipart upload that becomes visible only when completed and is aborted on
// any error or cancellation. Memory is bounded per Client by
// Concurrency x PartSize, however many Puts run at once.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/walferry/walferry/storage"
)

// Limits of the S3 protocol and the defaults walferry uses.
const (
	// MinPartSize is the smallest part S3 accepts (except for the last part).
	MinPartSize = 5 << 20
	// MaxPartSize is the largest part S3 accepts.
	MaxPartSize = 5 << 30
	// MaxParts is the largest number of parts in one multipart upload.
	MaxParts = 10000

	// DefaultPartSize is the part size when Config.PartSize is zero.
	DefaultPartSize = 8 << 20
	// DefaultConcurrency is the number of part buffers when Config.Concurrency is zero.
	DefaultConcurrency = 4
	// DefaultMaxAttempts is the SDK's attempts per request when Config.MaxAttempts is zero.
	DefaultMaxAttempts = 3

	defaultRegion = "us-east-1"

	// maxCopyObjectSize is the largest object one CopyObject call copies.
	maxCopyObjectSize = 5 << 30
	// defaultCopyPartSize is the part size of server-side multipart copies.
	defaultCopyPartSize = 512 << 20

	dialTimeout           = 5 * time.Second
	responseHeaderTimeout = 60 * time.Second
	maxBackoff            = time.Second
	// abortTimeout bounds AbortMultipartUpload, which runs on a fresh
	// context so that a cancelled Put still cleans up.
	abortTimeout = 30 * time.Second
)

// Config locates a bucket and tunes uploads. The zero value of every field
// but Bucket selects a sensible default.
type Config struct {
	// Bucket is the bucket name; required. It must already exist.
	Bucket string
	// Prefix is prepended (as "Prefix/") to every key; leading and trailing
	// slashes are ignored. Empty means the bucket root.
	Prefix string
	// Endpoint is the service URL, "https://minio.example:9000". Empty
	// means the SDK's own, which honours AWS_ENDPOINT_URL_S3.
	Endpoint string
	// Region defaults to the SDK chain (AWS_REGION, shared config), else us-east-1.
	Region string
	// PathStyle addresses buckets as ENDPOINT/BUCKET/KEY instead of
	// BUCKET.ENDPOINT/KEY, as MinIO and Ceph usually need. It is switched on
	// automatically when Endpoint's host is an IP address or "localhost".
	PathStyle bool

	// AccessKeyID, SecretAccessKey and SessionToken are static credentials.
	// Leave AccessKeyID and SecretAccessKey empty to use the SDK's default
	// chain (environment, shared config, IRSA, pod identity, IMDS).
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	// PartSize is the multipart part size in bytes, between MinPartSize and
	// MaxPartSize; default DefaultPartSize. Objects up to PartSize bytes are
	// written with a single PutObject. One object holds at most MaxParts
	// parts, so PartSize caps the largest object (8 MiB: about 78 GiB).
	PartSize int64
	// Concurrency is the number of part buffers the Client owns, hence the
	// number of parts uploaded in parallel; default DefaultConcurrency. The
	// Client buffers at most Concurrency x PartSize bytes in total.
	Concurrency int
	// MaxAttempts bounds the SDK's own attempts per upload request (a part,
	// a small put, with a short backoff); default DefaultMaxAttempts. Get,
	// Stat, List and Delete make one attempt: the storage retry decorator
	// repeats those whole, under walferry's one retry policy.
	MaxAttempts int
}

// String describes the configuration with secrets redacted.
func (c Config) String() string {
	return fmt.Sprintf("s3.Config{Bucket:%q Prefix:%q Endpoint:%q Region:%q PathStyle:%t AccessKeyID:%q SecretAccessKey:%s SessionToken:%s PartSize:%d Concurrency:%d MaxAttempts:%d}",
		c.Bucket, c.Prefix, c.Endpoint, c.Region, c.PathStyle, c.AccessKeyID,
		redact(c.SecretAccessKey), redact(c.SessionToken), c.PartSize, c.Concurrency, c.MaxAttempts)
}

// GoString is String, so that %#v does not print secrets either.
func (c Config) GoString() string { return c.String() }

func redact(s string) string {
	if s == "" {
		return `""`
	}
	return "REDACTED"
}

// Validate checks the configuration without touching the network, naming
// the offending field and the fix.
func (c Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("s3: Bucket is empty: name the bucket (s3://BUCKET/prefix)")
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("s3: Endpoint %q is not a URL: use http://HOST:PORT or https://HOST", c.Endpoint)
		}
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		return errors.New("s3: set both AccessKeyID and SecretAccessKey, or neither to use the AWS credential chain")
	}
	if c.PartSize != 0 && (c.PartSize < MinPartSize || c.PartSize > MaxPartSize) {
		return fmt.Errorf("s3: PartSize %d is out of range: use between %d (5 MiB) and %d (5 GiB)", c.PartSize, MinPartSize, int64(MaxPartSize))
	}
	if c.Concurrency < 0 {
		return fmt.Errorf("s3: Concurrency %d is negative: use 1 or more (0 means %d)", c.Concurrency, DefaultConcurrency)
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("s3: MaxAttempts %d is negative: use 1 or more (0 means %d)", c.MaxAttempts, DefaultMaxAttempts)
	}
	return nil
}

// Client is a storage.Store on one S3 bucket and prefix. It is safe for
// concurrent use.
type Client struct {
	api       *s3.Client
	transport *http.Transport
	bucket    string
	prefix    string // "" or "some/prefix/"
	endpoint  string // for messages; "" when the SDK resolves it

	partSize     int64
	copyPartSize int64

	// sem holds one token per part buffer in use, so that all Puts of this
	// Client together buffer at most cap(sem) x partSize bytes; free keeps
	// returned buffers for reuse. At most cap(sem) buffers ever exist.
	sem  chan struct{}
	free chan []byte

	// bucketSeen records that the bucket was shown to exist, so that a
	// HEAD 404 (which carries no error code) needs no HeadBucket to tell a
	// missing key from a missing bucket.
	bucketSeen atomic.Bool
}

var (
	_ storage.Store              = (*Client)(nil)
	_ storage.ConditionalCreator = (*Client)(nil)
	_ storage.Copier             = (*Client)(nil)
)

// New validates cfg and builds a Client. It reads the environment and the
// shared AWS config files but makes no request: a missing bucket or bad
// credentials show up on the first operation.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	partSize := cfg.PartSize
	if partSize == 0 {
		partSize = DefaultPartSize
	}
	concurrency := cfg.Concurrency
	if concurrency == 0 {
		concurrency = DefaultConcurrency
	}
	maxAttempts := cfg.MaxAttempts
	if maxAttempts == 0 {
		maxAttempts = DefaultMaxAttempts
	}

	opts := []func(*config.LoadOptions) error{
		// A BuildableClient, so that the SDK can add AWS_CA_BUNDLE's roots.
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
			configureTransport(t, concurrency)
		})),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = maxAttempts
				o.MaxBackoff = maxBackoff
				// The default token bucket turns long outages into
				// "retry quota exceeded" errors; the decorator above us
				// owns the retry budget.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = defaultRegion
	}
	// Take the final transport (with any CA bundle) into a client we can
	// close; like the SDK's, it never follows redirects.
	var transport *http.Transport
	if bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		transport = bc.GetTransport()
	} else {
		transport = http.DefaultTransport.(*http.Transport).Clone()
		configureTransport(transport, concurrency)
	}
	awsCfg.HTTPClient = &http.Client{
		Transport:     transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	pathStyle := cfg.PathStyle || hostNeedsPathStyle(cfg.Endpoint)
	api := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = pathStyle
		// S3-compatible stores reject or mangle the newer default
		// checksums (aws-chunked trailers); send them only when an
		// operation requires one. Payloads are still signed (SHA-256).
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
	})

	c := &Client{
		api:          api,
		transport:    transport,
		bucket:       cfg.Bucket,
		prefix:       cleanPrefix(cfg.Prefix),
		endpoint:     cfg.Endpoint,
		partSize:     partSize,
		copyPartSize: defaultCopyPartSize,
		sem:          make(chan struct{}, concurrency),
		free:         make(chan []byte, concurrency),
	}
	return c, nil
}

// configureTransport makes t fail fast when nothing listens (dial timeout)
// or a server accepts but never answers (response header timeout), instead
// of hanging.
func configureTransport(t *http.Transport, concurrency int) {
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = responseHeaderTimeout
	t.ExpectContinueTimeout = time.Second
	t.IdleConnTimeout = 90 * time.Second
	t.MaxIdleConns = 100
	t.MaxIdleConnsPerHost = max(10, 2*concurrency)
}

// hostNeedsPathStyle reports whether endpoint's host cannot carry a bucket
// name as a DNS label (an IP address or localhost).
func hostNeedsPathStyle(endpoint string) bool {
	if endpoint == "" {
		return false
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	_, err = netip.ParseAddr(h)
	return err == nil
}

func cleanPrefix(p string) string {
	p = strings.Trim(p, "/")
	if p == "" {
		return ""
	}
	return p + "/"
}

// String returns "s3://bucket/prefix", with the endpoint when one is set.
func (c *Client) String() string {
	s := "s3://" + c.bucket + "/" + strings.TrimSuffix(c.prefix, "/")
	if c.endpoint != "" {
		s += " (endpoint " + c.endpoint + ")"
	}
	return s
}

// Close releases idle connections and part buffers. The Client must not be used afterwards.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	for {
		select {
		case <-c.free: // let the part buffers be collected
		default:
			return nil
		}
	}
}

// objectKey validates key and returns the full object key in the bucket.
func (c *Client) objectKey(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") {
		return "", fmt.Errorf("invalid key %q: %w", key, fs.ErrInvalid)
	}
	for _, e := range strings.Split(key, "/") {
		if e == "." || e == ".." {
			return "", fmt.Errorf("invalid key %q: %w", key, fs.ErrInvalid)
		}
	}
	return c.prefix + key, nil
}

// decoratorRetries makes one request of an operation the store's retry
// decorator repeats as a whole (Get, Stat, List, Delete): retried in the
// SDK as well, each of the decorator's attempts would be several, and an
// unreachable endpoint would take attempts x attempts to report. The SDK
// keeps its own attempts for what only it can repeat: the parts of an
// upload streamed from a pipe.
func decoratorRetries(o *s3.Options) { o.RetryMaxAttempts = 1 }

// Get opens the object for streaming. A missing key matches
// storage.ErrNotExist. Errors while reading the body are classified like
// request errors (a connection reset is storage.IsRetryable). The caller
// must Close the reader.
func (c *Client) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.GetRange(ctx, key, 0, -1)
}

// GetRange opens length bytes of the object starting at offset; a negative
// length reads to the end. An offset at or past the end yields an empty
// reader, not an error; a missing key matches storage.ErrNotExist.
func (c *Client) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	full, err := c.objectKey(key)
	if err != nil {
		return nil, fmt.Errorf("s3: get %s: %w", key, err)
	}
	if rc, answered, err := storage.TrivialRange(ctx, c, key, offset, length); answered {
		return rc, err
	}
	in := &s3.GetObjectInput{Bucket: &c.bucket, Key: &full}
	switch {
	case length > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", offset, offset+length-1))
	case offset > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", offset))
	}
	out, err := c.api.GetObject(ctx, in, decoratorRetries)
	if err != nil {
		if in.Range != nil && isInvalidRange(err) {
			// The offset is at or past the end (or the object is empty).
			// A missing key would have been NoSuchKey, not 416.
			c.bucketSeen.Store(true)
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, c.wrap(ctx, "get", key, err)
	}
	c.bucketSeen.Store(true)
	return &bodyReader{c: c, key: key, body: out.Body}, nil
}

// bodyReader classifies errors from a streaming response body.
type bodyReader struct {
	c    *Client
	key  string
	body io.ReadCloser
}

func (r *bodyReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if err != nil && err != io.EOF {
		err = r.c.wrap(context.Background(), "read", r.key, err)
	}
	return n, err
}

func (r *bodyReader) Close() error { return r.body.Close() }

// Stat returns the object's size and modification time; a missing key
// matches storage.ErrNotExist, a missing bucket storage.ErrNoBucket.
func (c *Client) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	full, err := c.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("s3: stat %s: %w", key, err)
	}
	out, err := c.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &c.bucket, Key: &full}, decoratorRetries)
	if err != nil {
		if isNotFound(err) && !c.bucketSeen.Load() {
			// HEAD answers 404 without a code for a missing key and a
			// missing bucket alike: ask once which one it is. Any other
			// HeadBucket failure (say, no s3:ListBucket) says nothing
			// about the key, which stays missing.
			var nb *noBucketError
			if berr := c.checkBucket(ctx); errors.As(berr, &nb) {
				return storage.ObjectInfo{}, c.wrap(ctx, "stat", key, berr)
			}
		}
		return storage.ObjectInfo{}, c.wrap(ctx, "stat", key, err)
	}
	c.bucketSeen.Store(true)
	info := storage.ObjectInfo{Key: key, Size: aws.ToInt64(out.ContentLength)}
	if out.LastModified != nil {
		info.ModTime = *out.LastModified
	}
	return info, nil
}

// checkBucket returns nil when the bucket exists, else HeadBucket's error
// with a 404 turned into NoSuchBucket.
func (c *Client) checkBucket(ctx context.Context) error {
	_, err := c.api.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &c.bucket})
	if err == nil {
		c.bucketSeen.Store(true)
		return nil
	}
	if isNotFound(err) {
		return &noBucketError{err: err}
	}
	return err
}

// List calls fn for every object whose key starts with prefix, in lexical
// order, with the Client's own prefix stripped from the keys. An error from
// fn stops the listing and is returned unchanged.
func (c *Client) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	full := c.prefix + prefix
	p := s3.NewListObjectsV2Paginator(c.api, &s3.ListObjectsV2Input{Bucket: &c.bucket, Prefix: &full})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx, decoratorRetries)
		if err != nil {
			return c.wrap(ctx, "list", prefix, err)
		}
		c.bucketSeen.Store(true)
		for _, o := range page.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), c.prefix)
			if k == "" || strings.HasSuffix(k, "/") {
				continue // a "directory" marker some tools create
			}
			info := storage.ObjectInfo{Key: k, Size: aws.ToInt64(o.Size)}
			if o.LastModified != nil {
				info.ModTime = *o.LastModified
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object; a missing key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	full, err := c.objectKey(key)
	if err != nil {
		return fmt.Errorf("s3: delete %s: %w", key, err)
	}
	_, err = c.api.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &c.bucket, Key: &full}, decoratorRetries)
	if err != nil {
		if isNotFound(err) && errors.Is(c.classify(err), storage.ErrNotExist) {
			return nil // some S3-compatible stores answer 404
		}
		return c.wrap(ctx, "delete", key, err)
	}
	return nil
}
