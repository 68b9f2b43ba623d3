// Package gcs is the Google Cloud Storage backend of walferry repositories
// (gs://bucket/prefix), built on the official cloud.google.com/go/storage
// client over its JSON/XML HTTP API.
//
// Credentials come from the library's default chain: GOOGLE_APPLICATION_CREDENTIALS
// (service-account key or workload-identity-federation config), the gcloud
// application-default file, GKE workload identity and the GCE metadata server.
// STORAGE_EMULATOR_HOST points the client at an emulator without
// authentication, as the library itself does. An explicit Config.Endpoint
// (the repository URL's ?endpoint= parameter) overrides both; a plain http://
// endpoint is taken to be an emulator and is used without authentication.
//
// Retries are bounded so that a dead endpoint fails within seconds: the
// library retries idempotent calls at most Config.MaxAttempts times and never
// retries a failed dial (the error is returned marked storage.Retryable, for
// the retry decorator above the backend to decide). Uploads are never
// restarted by the library; only chunks of a resumable upload already in
// progress are resent, within Config.ChunkRetryDeadline.
package gcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"cloud.google.com/go/auth"
	gcs "cloud.google.com/go/storage"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/api/option/internaloption"
	htransport "google.golang.org/api/transport/http"

	"github.com/walferry/walferry/storage"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultChunkSize is the upload buffer of one Put: objects up to this
	// size go in one request, larger ones as a resumable upload in chunks of
	// this size. 16 MiB holds a default-sized WAL segment in one request.
	DefaultChunkSize = 16 << 20
	// DefaultMaxAttempts bounds the library's attempts at one non-upload call.
	DefaultMaxAttempts = 3
	// DefaultDialTimeout bounds establishing one TCP connection.
	DefaultDialTimeout = 5 * time.Second
	// DefaultChunkRetryDeadline bounds the resending of one upload chunk.
	DefaultChunkRetryDeadline = 32 * time.Second

	emulatorHostEnv = "STORAGE_EMULATOR_HOST"
	defaultEndpoint = "https://storage.googleapis.com/storage/v1/"
	credentialsHint = "check GOOGLE_APPLICATION_CREDENTIALS (or workload identity / the metadata server's service account) and that it holds roles/storage.objectAdmin on the bucket"
)

// Config selects a bucket, a key prefix inside it and how to reach it.
type Config struct {
	// Bucket is the bucket name (required). It must already exist.
	Bucket string
	// Prefix is prepended (with a "/") to every key; empty for the bucket root.
	// Leading and trailing slashes are ignored.
	Prefix string
	// Endpoint overrides the API endpoint, e.g. "http://127.0.0.1:4443" for
	// fake-gcs-server or a private-service-connect host. A path-less URL gets
	// "/storage/v1/" appended. http:// endpoints are used without credentials.
	Endpoint string
	// CredentialsFile is a JSON credentials file (service-account key,
	// external_account / workload-identity-federation config, authorized_user),
	// used instead of the default chain.
	CredentialsFile string
	// ChunkSize is the upload buffer per Put in bytes, rounded up by the
	// library to a multiple of 256 KiB; 0 means DefaultChunkSize. It bounds
	// the memory of one upload.
	ChunkSize int
	// ChunkRetryDeadline bounds retries of one upload chunk; 0 means
	// DefaultChunkRetryDeadline.
	ChunkRetryDeadline time.Duration
	// MaxAttempts bounds the library's attempts at one idempotent non-upload
	// call (Get, Stat, List pages); 0 means DefaultMaxAttempts, 1 disables
	// retries.
	MaxAttempts int
	// DialTimeout bounds one TCP connect; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
}

// Validate reports the first invalid field, naming it and the fix.
func (c Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("gcs: config: Bucket is empty: give the repository as gs://BUCKET/prefix")
	}
	if strings.ContainsAny(c.Bucket, "/ ") || c.Bucket != strings.ToLower(c.Bucket) {
		return fmt.Errorf("gcs: config: Bucket %q is not a bucket name: use lowercase letters, digits, '-', '_' and '.' only", c.Bucket)
	}
	if p := strings.Trim(c.Prefix, "/"); p != "" {
		for _, e := range strings.Split(p, "/") {
			if e == "" || e == "." || e == ".." {
				return fmt.Errorf("gcs: config: Prefix %q has an empty, \".\" or \"..\" element: use a plain path such as cluster1/main", c.Prefix)
			}
		}
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("gcs: config: Endpoint %q is not an http:// or https:// URL with a host (e.g. http://127.0.0.1:4443)", c.Endpoint)
		}
	}
	if c.ChunkSize < 0 {
		return fmt.Errorf("gcs: config: ChunkSize %d is negative: use 0 for the default (%d) or a positive size in bytes", c.ChunkSize, DefaultChunkSize)
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("gcs: config: MaxAttempts %d is negative: use 0 for the default (%d)", c.MaxAttempts, DefaultMaxAttempts)
	}
	if c.DialTimeout < 0 || c.ChunkRetryDeadline < 0 {
		return errors.New("gcs: config: DialTimeout and ChunkRetryDeadline must not be negative: use 0 for the defaults")
	}
	return nil
}

// Client is a storage.Store on one GCS bucket and prefix. It is safe for
// concurrent use.
type Client struct {
	gcs        *gcs.Client
	bucket     *gcs.BucketHandle
	transport  *http.Transport
	bucketName string
	prefix     string // without slashes; "" for the bucket root
	endpoint   string // where requests go, for messages
	endpointBy string // what chose endpoint, for messages
	chunkSize  int
	chunkRetry time.Duration

	// bucketOK caches that the bucket was seen to exist, so that a 404 on
	// an object no longer needs a probe to tell a missing object from a
	// missing bucket.
	bucketOK atomic.Bool
}

var (
	_ storage.Store              = (*Client)(nil)
	_ storage.ConditionalCreator = (*Client)(nil)
	_ storage.Copier             = (*Client)(nil)
)

// New creates a client for cfg. It sends no request: a missing bucket or a
// dead endpoint shows on the first call. It fails when cfg is invalid or no
// credentials can be found.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ChunkRetryDeadline == 0 {
		cfg.ChunkRetryDeadline = DefaultChunkRetryDeadline
	}
	c := &Client{
		bucketName: cfg.Bucket,
		prefix:     strings.Trim(cfg.Prefix, "/"),
		chunkSize:  cfg.ChunkSize,
		chunkRetry: cfg.ChunkRetryDeadline,
		endpoint:   defaultEndpoint,
		endpointBy: "the default GCS endpoint",
	}

	var opts []option.ClientOption
	anonymous := false
	switch emu := os.Getenv(emulatorHostEnv); {
	case cfg.Endpoint != "":
		c.endpoint = apiEndpoint(cfg.Endpoint)
		c.endpointBy = "the repository's endpoint parameter"
		anonymous = strings.HasPrefix(c.endpoint, "http://")
		opts = append(opts, option.WithEndpoint(c.endpoint))
	case emu != "":
		// The library sets the endpoint from the variable itself.
		c.endpoint = emu
		c.endpointBy = emulatorHostEnv
		anonymous = true
	}

	c.transport = newBaseTransport(cfg.DialTimeout)
	authOpts := []option.ClientOption{internaloption.EnableNewAuthLibrary(), option.WithScopes(gcs.ScopeReadWrite)}
	switch {
	case anonymous:
		authOpts = []option.ClientOption{option.WithoutAuthentication()}
	case cfg.CredentialsFile != "":
		credType, err := credentialsType(cfg.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("gcs: %s: %w", c, err)
		}
		authOpts = append(authOpts, option.WithAuthCredentialsFile(credType, cfg.CredentialsFile))
	}
	rt, err := htransport.NewTransport(ctx, c.transport, authOpts...)
	if err != nil {
		return nil, fmt.Errorf("gcs: %s: no usable credentials (%s): %w: %w", c, credentialsHint, storage.ErrPermission, err)
	}
	opts = append(opts, option.WithHTTPClient(&http.Client{Transport: rt}))

	client, err := gcs.NewClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcs: %s: %w", c, err)
	}
	client.SetRetry(
		gcs.WithMaxAttempts(cfg.MaxAttempts),
		gcs.WithBackoff(gax.Backoff{Initial: 100 * time.Millisecond, Max: 2 * time.Second, Multiplier: 2}),
		gcs.WithErrorFunc(shouldRetry),
	)
	c.gcs = client
	c.bucket = client.Bucket(cfg.Bucket)
	return c, nil
}

// apiEndpoint turns a user's endpoint into the JSON API base URL the
// library expects ("http://host:port" -> "http://host:port/storage/v1/").
func apiEndpoint(endpoint string) string {
	u, err := url.Parse(endpoint) // validated by Config.Validate
	if err != nil {
		return endpoint
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/storage/v1/"
	} else if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	return u.String()
}

// credentialsType reads the "type" field of a JSON credentials file, which
// the library needs to load it.
func credentialsType(path string) (option.CredentialsType, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("credentials file: %w", err)
	}
	var f struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return "", fmt.Errorf("credentials file %s: not a JSON credentials file: %w", path, err)
	}
	switch t := option.CredentialsType(f.Type); t {
	case option.ServiceAccount, option.AuthorizedUser, option.ExternalAccount, option.ImpersonatedServiceAccount,
		"external_account_authorized_user":
		return t, nil
	default:
		return "", fmt.Errorf("credentials file %s: unsupported type %q: use a service_account key or an external_account (workload identity federation) config", path, f.Type)
	}
}

// newBaseTransport is http.DefaultTransport with bounded connects, so an
// address where nothing answers fails in DialTimeout rather than 30 s, and
// HTTP/2 health checks that drop dead connections.
func newBaseTransport(dialTimeout time.Duration) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}
	}
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.MaxIdleConnsPerHost = 100
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 31 * time.Second, PingTimeout: 15 * time.Second}
	return t
}

// shouldRetry is the library's own retry predicate minus failed dials: when
// nothing listens at the endpoint, repeating the call at once does not help
// and only delays the error.
func shouldRetry(err error) bool {
	return gcs.ShouldRetry(err) && !isDialError(err)
}

func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// String returns "gs://bucket/prefix".
func (c *Client) String() string {
	if c.prefix == "" {
		return "gs://" + c.bucketName
	}
	return "gs://" + c.bucketName + "/" + c.prefix
}

// Close releases the client's connections.
func (c *Client) Close() error {
	err := c.gcs.Close()
	c.transport.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("gcs: close %s: %w", c, err)
	}
	return nil
}

// objectName maps a key (or a listing prefix) to its object name.
func (c *Client) objectName(key string) string {
	if c.prefix == "" {
		return key
	}
	return c.prefix + "/" + key
}

// checkKey rejects keys outside the storage package's key contract.
func checkKey(op, key string) error {
	bad := key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/")
	if !bad {
		for _, e := range strings.Split(key, "/") {
			if e == "" || e == "." || e == ".." {
				bad = true
				break
			}
		}
	}
	if bad {
		return fmt.Errorf("gcs: %s %q: invalid key (want a relative slash-separated path without empty, \".\" or \"..\" elements): %w", op, key, fs.ErrInvalid)
	}
	return nil
}

// Put streams r into key through a resumable upload. Memory is bounded by
// Config.ChunkSize. When reading r fails, the upload fails or ctx is
// cancelled, the upload is abandoned before its final request, so no object
// (and no change to an existing one) becomes visible under key.
func (c *Client) Put(ctx context.Context, key string, r io.Reader) error {
	if err := checkKey("put", key); err != nil {
		return err
	}
	return c.upload(ctx, "put", key, c.bucket.Object(c.objectName(key)), r)
}

// PutIfAbsent is Put with the precondition that no live object exists under
// key (ifGenerationMatch=0). When one exists, or a concurrent PutIfAbsent
// wins the race, it returns an error matching storage.ErrExist and the
// existing object is untouched.
//
// The upload is not retried after a lost answer, so a caller seeing an
// error may still have created the object; compare contents to find out.
func (c *Client) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	if err := checkKey("put-if-absent", key); err != nil {
		return err
	}
	obj := c.bucket.Object(c.objectName(key)).If(gcs.Conditions{DoesNotExist: true})
	return c.upload(ctx, "put-if-absent", key, obj, r)
}

// upload copies r into a Writer for obj.
//
// The Writer runs the HTTP upload in a goroutine fed through a pipe; the only
// reliable way to abandon it is cancelling the context it was created with
// (Writer.CloseWithError is deprecated for that, and Close would commit what
// was written so far). The upload sends its final request, the one that
// commits the object, only after reading io.EOF from the pipe, which a
// cancelled Writer never delivers.
//
// The handle's retry policy is RetryNever: the library would otherwise
// retry the upload's first request without any attempt limit (WithMaxAttempts
// does not apply to uploads), hanging on an endpoint where nothing listens.
// Chunks of a started resumable upload are still retried by the library
// within ChunkRetryDeadline.
func (c *Client) upload(ctx context.Context, op, key string, obj *gcs.ObjectHandle, r io.Reader) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.Retryer(gcs.WithPolicy(gcs.RetryNever)).NewWriter(wctx)
	w.ChunkSize = c.chunkSize
	w.ChunkRetryDeadline = c.chunkRetry
	w.ContentType = "application/octet-stream"

	src := &sourceReader{r: r}
	if _, err := io.Copy(w, src); err != nil {
		cancel()
		werr := w.Close()
		if src.err != nil {
			return fmt.Errorf("gcs: %s %s: reading the source: %w", op, key, src.err)
		}
		if werr != nil && !errors.Is(werr, context.Canceled) {
			err = werr
		}
		return c.mapErr(ctx, op, key, err)
	}
	if err := w.Close(); err != nil {
		return c.mapErr(ctx, op, key, err)
	}
	c.bucketOK.Store(true)
	return nil
}

// sourceReader records the caller's read error, to tell it from upload errors.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Get opens key for streaming; a missing key matches storage.ErrNotExist.
// The library checks the CRC32C of a whole-object read.
func (c *Client) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.getRange(ctx, "get", key, 0, -1)
}

// GetRange opens length bytes of key from offset (length < 0: to the end).
// An offset at or past the end yields an empty reader, not an error.
func (c *Client) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return c.getRange(ctx, "get-range", key, offset, length)
}

func (c *Client) getRange(ctx context.Context, op, key string, offset, length int64) (io.ReadCloser, error) {
	if err := checkKey(op, key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("gcs: %s %s: negative offset %d: %w", op, key, offset, fs.ErrInvalid)
	}
	r, err := c.bucket.Object(c.objectName(key)).NewRangeReader(ctx, offset, length)
	if err != nil {
		// GCS answers 416 when the range starts at or past the end of an
		// existing object (a missing one is a 404).
		var ge *googleapi.Error
		if errors.As(err, &ge) && ge.Code == http.StatusRequestedRangeNotSatisfiable {
			c.bucketOK.Store(true)
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, c.mapErr(ctx, op, key, err)
	}
	c.bucketOK.Store(true)
	return &reader{r: r, c: c, op: op, key: key}, nil
}

// reader classifies errors met mid-stream (after the library's own resumes).
type reader struct {
	r       *gcs.Reader
	c       *Client
	op, key string
}

func (r *reader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = r.c.classify(r.op, r.key, err)
	}
	return n, err
}

func (r *reader) Close() error { return r.r.Close() }

// Stat returns key's size and last update time; a missing key matches
// storage.ErrNotExist.
func (c *Client) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("stat", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	attrs, err := c.bucket.Object(c.objectName(key)).Attrs(ctx)
	if err != nil {
		return storage.ObjectInfo{}, c.mapErr(ctx, "stat", key, err)
	}
	c.bucketOK.Store(true)
	return storage.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}, nil
}

// List calls fn for every object under prefix in lexical order (GCS lists
// by name), one page in memory at a time. Objects whose names end in "/"
// (folder placeholders made by the console) are not keys and are skipped.
func (c *Client) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	what := fmt.Sprintf("prefix %q", prefix)
	q := &gcs.Query{Prefix: c.objectName(prefix), Projection: gcs.ProjectionNoACL}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
		return fmt.Errorf("gcs: list %s: %w", what, err)
	}
	strip := ""
	if c.prefix != "" {
		strip = c.prefix + "/"
	}
	it := c.bucket.Objects(ctx, q)
	for {
		attrs, err := it.Next()
		if errors.Is(err, iterator.Done) {
			c.bucketOK.Store(true)
			return nil
		}
		if err != nil {
			return c.mapErr(ctx, "list", what, err)
		}
		key, ok := strings.CutPrefix(attrs.Name, strip)
		if !ok || key == "" || strings.HasSuffix(key, "/") {
			continue
		}
		if err := fn(storage.ObjectInfo{Key: key, Size: attrs.Size, ModTime: attrs.Updated}); err != nil {
			return err
		}
	}
}

// Delete removes key; a missing key is not an error (a missing bucket is).
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey("delete", key); err != nil {
		return err
	}
	err := c.bucket.Object(c.objectName(key)).Delete(ctx)
	if err == nil {
		c.bucketOK.Store(true)
		return nil
	}
	err = c.mapErr(ctx, "delete", key, err)
	if errors.Is(err, storage.ErrNotExist) {
		return nil
	}
	return err
}

// Copy copies srcKey to dstKey server-side (rewrite), replacing dstKey. A
// missing srcKey matches storage.ErrNotExist.
func (c *Client) Copy(ctx context.Context, srcKey, dstKey string) error {
	if err := checkKey("copy", srcKey); err != nil {
		return err
	}
	if err := checkKey("copy", dstKey); err != nil {
		return err
	}
	src := c.bucket.Object(c.objectName(srcKey))
	dst := c.bucket.Object(c.objectName(dstKey))
	if _, err := dst.CopierFrom(src).Run(ctx); err != nil {
		return c.mapErr(ctx, "copy", srcKey+" to "+dstKey, err)
	}
	c.bucketOK.Store(true)
	return nil
}

// mapErr maps a library error onto the storage package's classes. A 404 on
// an object is ambiguous (the XML read path and objects.get answer the same
// for a missing bucket), so until the bucket has been seen to exist it is
// probed with a one-item listing.
func (c *Client) mapErr(ctx context.Context, op, key string, err error) error {
	var ge *googleapi.Error
	if errors.As(err, &ge) && ge.Code == http.StatusNotFound && (op == "put" || op == "put-if-absent") {
		// An upload's only 404 is a missing bucket.
		return c.noBucket(op, key, err)
	}
	if errors.Is(err, gcs.ErrBucketNotExist) {
		return c.noBucket(op, key, err)
	}
	if errors.Is(err, gcs.ErrObjectNotExist) || (errors.As(err, &ge) && ge.Code == http.StatusNotFound) {
		if ctx.Err() == nil && c.bucketMissing(ctx) {
			return c.noBucket(op, key, err)
		}
		return fmt.Errorf("gcs: %s %s: %w", op, key, storage.ErrNotExist)
	}
	return c.classify(op, key, err)
}

// classify maps errors that need no probe.
func (c *Client) classify(op, key string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("gcs: %s %s: %w", op, key, err)
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		switch code := ge.Code; {
		case code == http.StatusPreconditionFailed:
			return fmt.Errorf("gcs: %s %s: %w", op, key, storage.ErrExist)
		case code == http.StatusUnauthorized || code == http.StatusForbidden:
			return fmt.Errorf("gcs: %s %s in %s: %w (%s): %w", op, key, c, storage.ErrPermission, credentialsHint, err)
		case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code >= 500:
			return storage.Retryable(fmt.Errorf("gcs: %s %s: %w", op, key, err))
		case code == http.StatusNotFound:
			return fmt.Errorf("gcs: %s %s: %w", op, key, storage.ErrNotExist)
		}
		return fmt.Errorf("gcs: %s %s: %w", op, key, err)
	}
	var ae *auth.Error
	if errors.As(err, &ae) {
		if ae.Response != nil && ae.Response.StatusCode >= 400 && ae.Response.StatusCode < 500 {
			return fmt.Errorf("gcs: %s %s: obtaining a token: %w (%s): %w", op, key, storage.ErrPermission, credentialsHint, err)
		}
		return storage.Retryable(fmt.Errorf("gcs: %s %s: obtaining a token: %w", op, key, err))
	}
	if isDialError(err) {
		// The *url.Error's text repeats the whole request URL; the dial
		// error inside says all there is to say.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return storage.Retryable(fmt.Errorf("gcs: %s %s: cannot connect to %s (set by %s; is the address right and the service up?): %w",
			op, key, c.endpoint, c.endpointBy, err))
	}
	if isNetError(err) {
		return storage.Retryable(fmt.Errorf("gcs: %s %s: %w", op, key, err))
	}
	return fmt.Errorf("gcs: %s %s: %w", op, key, err)
}

// isNetError reports transport failures worth repeating.
func isNetError(err error) bool {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ue *url.Error
	return errors.As(err, &ue) || gcs.ShouldRetry(err)
}

func (c *Client) noBucket(op, key string, err error) error {
	return fmt.Errorf("gcs: %s %s in %s: %w (create it with `gcloud storage buckets create gs://%s` or fix the repository URL): %w",
		op, key, c, storage.ErrNoBucket, c.bucketName, err)
}

// bucketMissing probes whether the bucket exists with a listing of at most
// one object, which needs only storage.objects.list (not buckets.get). Any
// answer other than "no such bucket" counts as "exists".
func (c *Client) bucketMissing(ctx context.Context) bool {
	if c.bucketOK.Load() {
		return false
	}
	q := &gcs.Query{Prefix: c.objectName(""), Projection: gcs.ProjectionNoACL}
	_ = q.SetAttrSelection([]string{"Name"})
	it := c.bucket.Objects(ctx, q)
	it.PageInfo().MaxSize = 1
	_, err := it.Next()
	if errors.Is(err, gcs.ErrBucketNotExist) {
		return true
	}
	if err == nil || errors.Is(err, iterator.Done) {
		c.bucketOK.Store(true)
	}
	return false
}
