// Package gcs is the Google Cloud Storage backend of walferry repositories
// (gs://bucket/prefix), a small client of the GCS JSON API on net/http.
// It deliberately does not use cloud.google.com/go/storage, whose package
// initialisation (gRPC, xDS, OpenTelemetry) would cost every walferry
// process, GCS user or not, several milliseconds and megabytes.
//
// Credentials come from Application Default Credentials
// (golang.org/x/oauth2/google): GOOGLE_APPLICATION_CREDENTIALS
// (service-account key, external_account / workload-identity-federation
// config or authorized_user), the gcloud application-default file, GKE
// workload identity and the GCE metadata server; or from
// Config.CredentialsFile. STORAGE_EMULATOR_HOST (host:port or URL) points the
// client at an emulator without authentication. An explicit Config.Endpoint
// (the repository URL's ?endpoint= parameter) overrides both; a plain http://
// endpoint is taken to be an emulator and is used without authentication.
//
// Retries are bounded so that a dead endpoint fails within seconds:
// idempotent calls (Get, Stat, List pages, Delete) are attempted at most
// Config.MaxAttempts times and a failed dial is never repeated (the error is
// returned marked storage.Retryable, for the retry decorator above the
// backend to decide). Uploads are never restarted; only chunks of a
// resumable upload already in progress are resent, within
// Config.ChunkRetryDeadline.
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
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultChunkSize is the upload buffer of one Put: objects up to this
	// size go in one request, larger ones as a resumable upload in chunks of
	// this size. 16 MiB holds a default-sized WAL segment in one request.
	DefaultChunkSize = 16 << 20
	// DefaultMaxAttempts bounds the attempts at one idempotent call: one,
	// since the store's retry decorator repeats those calls whole under
	// walferry's one retry policy (retried here too, each of its attempts
	// would be several).
	DefaultMaxAttempts = 1
	// DefaultDialTimeout bounds establishing one TCP connection.
	DefaultDialTimeout = 5 * time.Second
	// DefaultChunkRetryDeadline bounds the resending of one upload chunk.
	DefaultChunkRetryDeadline = 32 * time.Second

	// chunkAlign is the granularity GCS requires of non-final chunks.
	chunkAlign = 256 << 10
	// responseHeaderTimeout bounds the wait for an answer once a request
	// is sent (a rewrite step or the commit of a chunk takes seconds).
	responseHeaderTimeout = 2 * time.Minute

	scopeReadWrite  = "https://www.googleapis.com/auth/devstorage.read_write"
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
	// ChunkSize is the upload buffer per Put in bytes, rounded up to a
	// multiple of 256 KiB; 0 means DefaultChunkSize. It bounds the memory of
	// one upload.
	ChunkSize int
	// ChunkRetryDeadline bounds retries of one upload chunk; 0 means
	// DefaultChunkRetryDeadline.
	ChunkRetryDeadline time.Duration
	// MaxAttempts bounds the attempts at one idempotent call (Get, Stat,
	// List pages, Delete); 0 means DefaultMaxAttempts, 1 disables retries.
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
	hc          *http.Client
	transport   *http.Transport
	tokens      oauth2.TokenSource // nil: no authentication (emulator)
	api         string             // JSON API base, ".../storage/v1/"
	upload      string             // upload base, ".../upload/storage/v1/"
	bucketName  string
	prefix      string // without slashes; "" for the bucket root
	endpoint    string // where requests go, for messages
	endpointBy  string // what chose endpoint, for messages
	chunkSize   int
	chunkRetry  time.Duration
	maxAttempts int

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

// New creates a client for cfg. It sends no request to the bucket: a missing
// bucket or a dead endpoint shows on the first call. It fails when cfg is
// invalid or no credentials can be found.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	cfg.ChunkSize = (cfg.ChunkSize + chunkAlign - 1) / chunkAlign * chunkAlign
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
		bucketName:  cfg.Bucket,
		prefix:      strings.Trim(cfg.Prefix, "/"),
		chunkSize:   cfg.ChunkSize,
		chunkRetry:  cfg.ChunkRetryDeadline,
		maxAttempts: cfg.MaxAttempts,
		api:         defaultEndpoint,
		endpoint:    defaultEndpoint,
		endpointBy:  "the default GCS endpoint",
	}

	anonymous := false
	switch emu := os.Getenv(emulatorHostEnv); {
	case cfg.Endpoint != "":
		c.api = apiEndpoint(cfg.Endpoint)
		c.endpoint = c.api
		c.endpointBy = "the repository's endpoint parameter"
		anonymous = strings.HasPrefix(c.api, "http://")
	case emu != "":
		base := emu
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		if u, err := url.Parse(base); err != nil || u.Host == "" {
			return nil, fmt.Errorf("gcs: %s: %s=%q is not a host:port or URL", c, emulatorHostEnv, emu)
		}
		c.api = apiEndpoint(base)
		c.endpoint = emu
		c.endpointBy = emulatorHostEnv
		anonymous = true
	}
	c.upload = uploadEndpoint(c.api)

	c.transport = newBaseTransport(cfg.DialTimeout)
	c.hc = &http.Client{
		Transport: c.transport,
		// The API never redirects; its 308 means "resume incomplete".
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if !anonymous {
		ts, err := c.tokenSource(ctx, cfg.CredentialsFile)
		if err != nil {
			return nil, err
		}
		c.tokens = ts
	}
	return c, nil
}

// tokenSource finds the credentials and returns a caching token source. Its
// token requests use the client's bounded transport and outlive ctx's
// cancellation (the source lives as long as the Client).
func (c *Client) tokenSource(ctx context.Context, credentialsFile string) (oauth2.TokenSource, error) {
	tctx := context.WithValue(context.WithoutCancel(ctx), oauth2.HTTPClient,
		&http.Client{Transport: c.transport, Timeout: time.Minute})
	var (
		creds *google.Credentials
		err   error
	)
	if credentialsFile != "" {
		var credType google.CredentialsType
		credType, err = credentialsType(credentialsFile)
		if err != nil {
			return nil, fmt.Errorf("gcs: %s: %w", c, err)
		}
		var b []byte
		if b, err = os.ReadFile(credentialsFile); err == nil {
			creds, err = google.CredentialsFromJSONWithType(tctx, b, credType, scopeReadWrite)
		}
	} else {
		creds, err = google.FindDefaultCredentials(tctx, scopeReadWrite)
	}
	if err != nil {
		return nil, fmt.Errorf("gcs: %s: no usable credentials (%s): %w: %w", c, credentialsHint, storage.ErrPermission, err)
	}
	return oauth2.ReuseTokenSource(nil, creds.TokenSource), nil
}

// apiEndpoint turns a user's endpoint into the JSON API base URL
// ("http://host:port" -> "http://host:port/storage/v1/").
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

// uploadEndpoint derives the media upload base from the JSON API base:
// "https://host/storage/v1/" -> "https://host/upload/storage/v1/".
func uploadEndpoint(api string) string {
	u, err := url.Parse(api)
	if err != nil {
		return api
	}
	if p, ok := strings.CutSuffix(u.Path, "storage/v1/"); ok {
		u.Path = p + "upload/storage/v1/"
	} else {
		u.Path = "/upload/storage/v1/"
	}
	return u.String()
}

// credentialsType reads the "type" field of a JSON credentials file, which
// is needed to load it safely.
func credentialsType(path string) (google.CredentialsType, error) {
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
	switch t := google.CredentialsType(f.Type); t {
	case google.ServiceAccount, google.AuthorizedUser, google.ExternalAccount, google.ImpersonatedServiceAccount,
		google.ExternalAccountAuthorizedUser:
		return t, nil
	default:
		return "", fmt.Errorf("credentials file %s: unsupported type %q: use a service_account key or an external_account (workload identity federation) config", path, f.Type)
	}
}

// newBaseTransport is http.DefaultTransport with bounded connects, so an
// address where nothing answers fails in DialTimeout rather than 30 s, a
// bounded wait for response headers, and HTTP/2 health checks that drop
// dead connections.
func newBaseTransport(dialTimeout time.Duration) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}
	}
	t.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	t.ResponseHeaderTimeout = responseHeaderTimeout
	t.MaxIdleConnsPerHost = 100
	// Objects are stored as they are; no transparent gzip on ranged reads.
	t.DisableCompression = true
	t.HTTP2 = &http.HTTP2Config{SendPingTimeout: 31 * time.Second, PingTimeout: 15 * time.Second}
	return t
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
	c.transport.CloseIdleConnections()
	return nil
}

// objectName maps a key (or a listing prefix) to its object name.
func (c *Client) objectName(key string) string {
	if c.prefix == "" {
		return key
	}
	return c.prefix + "/" + key
}

// objectURL is the JSON API URL of an object's resource (the whole name is
// one path segment: "/" becomes %2F), with suffix (e.g. "/rewriteTo/...")
// and query appended.
func (c *Client) objectURL(name, suffix string, q url.Values) string {
	u := c.api + "b/" + url.PathEscape(c.bucketName) + "/o/" + url.PathEscape(name) + suffix
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// bucketURL is the JSON API URL of the bucket's object collection.
func (c *Client) bucketURL(q url.Values) string {
	return c.api + "b/" + url.PathEscape(c.bucketName) + "/o?" + q.Encode()
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

// send authenticates and sends req. A non-2xx answer other than those in
// pass is returned as an *apiError, its body consumed and closed.
func (c *Client) send(req *http.Request, pass ...int) (*http.Response, error) {
	if c.tokens != nil {
		tok, err := c.tokens.Token()
		if err != nil {
			return nil, &tokenError{err: err}
		}
		tok.SetAuthHeader(req)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	for _, code := range pass {
		if resp.StatusCode == code {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	return nil, newAPIError(resp)
}

// call sends a request without a body, repeating it within MaxAttempts when
// the failure is transient (not a failed dial, not ctx's end).
func (c *Client) call(ctx context.Context, method, u string, hdr http.Header, pass ...int) (*http.Response, error) {
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return nil, err
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := c.send(req, pass...)
		if err == nil || attempt >= c.maxAttempts || !shouldRetry(ctx, err) {
			return resp, err
		}
		if err := retry.Sleep(ctx, callRetry.Backoff(attempt)); err != nil {
			return nil, err
		}
	}
}

// getJSON is an idempotent call decoding a JSON answer into v.
func (c *Client) getJSON(ctx context.Context, u string, v any) error {
	return decodeJSON(c.call(ctx, http.MethodGet, u, nil))(v)
}

// decodeJSON decodes the JSON answer of a call into v, closing its body;
// the call's error comes first.
func decodeJSON(resp *http.Response, err error) func(v any) error {
	return func(v any) error {
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return fmt.Errorf("decoding the answer: %w", err)
		}
		return nil
	}
}

// callRetry spaces the attempts of one call when MaxAttempts allows more
// than one: 100 ms doubling up to 2 s, jittered.
var callRetry = retry.Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}

// Get opens key for streaming; a missing key matches storage.ErrNotExist.
// The CRC32C of a whole-object read is checked against the one GCS sends,
// and a read interrupted by a connection failure resumes where it stopped
// (on the same object generation), within MaxAttempts.
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
	if rc, answered, err := storage.TrivialRange(ctx, c, key, offset, length); answered {
		return rc, err
	}
	r := &reader{c: c, ctx: ctx, op: op, key: key, name: c.objectName(key), pos: offset, remaining: length}
	if offset == 0 && length < 0 {
		r.crc = newCRCCheck()
	}
	empty, err := r.open()
	if err != nil {
		return nil, c.mapErr(ctx, op, key, err)
	}
	c.bucketOK.Store(true)
	if empty {
		return io.NopCloser(strings.NewReader("")), nil
	}
	return r, nil
}

// Stat returns key's size and last update time; a missing key matches
// storage.ErrNotExist.
func (c *Client) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("stat", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	var o object
	q := url.Values{"fields": {"size,updated"}, "projection": {"noAcl"}}
	if err := c.getJSON(ctx, c.objectURL(c.objectName(key), "", q), &o); err != nil {
		return storage.ObjectInfo{}, c.mapErr(ctx, "stat", key, err)
	}
	c.bucketOK.Store(true)
	info, err := o.info(key)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("gcs: stat %s: %w", key, err)
	}
	return info, nil
}

// object is the part of an object resource walferry reads.
type object struct {
	Name    string `json:"name"`
	Size    string `json:"size"` // a decimal string: JSON numbers stop at 2^53
	Updated string `json:"updated"`
}

func (o object) info(key string) (storage.ObjectInfo, error) {
	size, err := strconv.ParseInt(o.Size, 10, 64)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("object %q: size %q: %w", o.Name, o.Size, err)
	}
	var mt time.Time
	if o.Updated != "" {
		if mt, err = time.Parse(time.RFC3339Nano, o.Updated); err != nil {
			return storage.ObjectInfo{}, fmt.Errorf("object %q: updated %q: %w", o.Name, o.Updated, err)
		}
	}
	return storage.ObjectInfo{Key: key, Size: size, ModTime: mt}, nil
}

// List calls fn for every object under prefix in lexical order (GCS lists
// by name), one page in memory at a time. Objects whose names end in "/"
// (folder placeholders made by the console) are not keys and are skipped.
func (c *Client) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	what := fmt.Sprintf("prefix %q", prefix)
	strip := ""
	if c.prefix != "" {
		strip = c.prefix + "/"
	}
	q := url.Values{
		"prefix":     {c.objectName(prefix)},
		"fields":     {"items(name,size,updated),nextPageToken"},
		"projection": {"noAcl"},
	}
	for {
		var page struct {
			Items         []object `json:"items"`
			NextPageToken string   `json:"nextPageToken"`
		}
		if err := c.getJSON(ctx, c.bucketURL(q), &page); err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
				// A listing's only 404 is a missing bucket.
				return c.noBucket("list", what, err)
			}
			return c.mapErr(ctx, "list", what, err)
		}
		c.bucketOK.Store(true)
		for _, o := range page.Items {
			key, ok := strings.CutPrefix(o.Name, strip)
			if !ok || key == "" || strings.HasSuffix(key, "/") {
				continue
			}
			info, err := o.info(key)
			if err != nil {
				return fmt.Errorf("gcs: list %s: %w", what, err)
			}
			if err := fn(info); err != nil {
				return err
			}
		}
		if page.NextPageToken == "" {
			return nil
		}
		q.Set("pageToken", page.NextPageToken)
	}
}

// Delete removes key; a missing key is not an error (a missing bucket is).
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey("delete", key); err != nil {
		return err
	}
	resp, err := c.call(ctx, http.MethodDelete, c.objectURL(c.objectName(key), "", nil), nil)
	if err == nil {
		drain(resp)
		c.bucketOK.Store(true)
		return nil
	}
	err = c.mapErr(ctx, "delete", key, err)
	if errors.Is(err, storage.ErrNotExist) {
		return nil
	}
	return err
}

// Copy copies srcKey to dstKey server-side (objects rewrite, repeated until
// done), replacing dstKey. A missing srcKey matches storage.ErrNotExist.
func (c *Client) Copy(ctx context.Context, srcKey, dstKey string) error {
	if err := checkKey("copy", srcKey); err != nil {
		return err
	}
	if err := checkKey("copy", dstKey); err != nil {
		return err
	}
	what := srcKey + " to " + dstKey
	suffix := "/rewriteTo/b/" + url.PathEscape(c.bucketName) + "/o/" + url.PathEscape(c.objectName(dstKey))
	q := url.Values{"fields": {"done,rewriteToken"}}
	for {
		var res struct {
			Done         bool   `json:"done"`
			RewriteToken string `json:"rewriteToken"`
		}
		err := c.rewrite(ctx, c.objectURL(c.objectName(srcKey), suffix, q), &res)
		if err != nil {
			return c.mapErr(ctx, "copy", what, err)
		}
		c.bucketOK.Store(true)
		if res.Done {
			return nil
		}
		if res.RewriteToken == "" {
			return fmt.Errorf("gcs: copy %s: the rewrite is not done and gave no token to continue", what)
		}
		q.Set("rewriteToken", res.RewriteToken)
	}
}

// rewrite sends one objects.rewrite step. It is not repeated on failure:
// the retry decorator restarts the copy.
func (c *Client) rewrite(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader("{}"))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return decodeJSON(c.send(req))(v)
}

// drain consumes a little of an answer's body, so its connection can be
// reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}
