// Package azure stores walferry repositories in Azure Blob Storage (and
// Azurite) as block blobs, through the official azblob SDK.
//
// Writes stream through at most Concurrency blocks of BlockSize bytes held in
// memory. An object of up to BlockSize bytes is one Put Blob request; a larger
// one is staged block by block and becomes visible only when its block list
// is committed, so a failed or cancelled Put never shows a partial object.
//
// Every error is classified for the storage package: missing blobs match
// storage.ErrNotExist, a missing container storage.ErrNoBucket, rejected
// credentials storage.ErrPermission (with a hint naming the credential to
// check), and throttling, 5xx answers, timeouts and broken connections are
// marked storage.Retryable.
package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/walferry/walferry/storage"
)

// stallTimeout is how long a download body may deliver nothing before the
// read is resumed with a new ranged request.
const stallTimeout = time.Minute

// Client is a storage.Store on one Azure blob container, optionally under a
// key prefix. It is safe for concurrent use.
type Client struct {
	cfg       resolved
	transport *http.Transport
	container *container.Client
	// getRetry replaces the client's retry options for downloads: no
	// per-try timeout, which in the SDK would also cut the body stream of a
	// large object (stalls are caught by stallReader instead), and one
	// try, like wholeRetry.
	getRetry policy.RetryOptions
	// wholeRetry is one try, for the operations the store's retry
	// decorator repeats as a whole (Get, Stat, List, Delete): retried here
	// as well, every attempt of the decorator would be several. The SDK
	// keeps its own retries for what only it can repeat: the blocks of an
	// upload streamed from a pipe.
	wholeRetry policy.RetryOptions
}

var (
	_ storage.Store              = (*Client)(nil)
	_ storage.ConditionalCreator = (*Client)(nil)
	_ storage.Copier             = (*Client)(nil)
)

// New validates cfg, fills empty fields from the AZURE_STORAGE_* environment
// (see Config) and builds a client. It does no network I/O: a missing
// container or a wrong key surfaces on the first operation, classified as
// described in the package documentation. ctx is not retained.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := resolve(cfg)
	if err != nil {
		return nil, err
	}

	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: r.dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.ResponseHeaderTimeout = r.tryTimeout
	// Several Puts (look-ahead archiving) each run Concurrency requests;
	// keep their connections warm rather than re-dialling TLS.
	tr.MaxIdleConnsPerHost = max(64, 2*r.concurrency)

	retries := int32(r.maxRetries)
	if retries == 0 {
		retries = -1 // the SDK reads 0 as "default"; negative is "no retry"
	}
	retry := policy.RetryOptions{
		MaxRetries:    retries,
		TryTimeout:    r.tryTimeout,
		RetryDelay:    250 * time.Millisecond,
		MaxRetryDelay: 8 * time.Second,
		ShouldRetry:   shouldRetry,
	}
	wholeRetry := retry
	wholeRetry.MaxRetries = -1
	getRetry := wholeRetry
	getRetry.TryTimeout = 0

	opts := &container.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: &http.Client{Transport: tr},
		Retry:     retry,
		Telemetry: policy.TelemetryOptions{ApplicationID: "walferry"},
	}}
	containerURL := r.serviceURL + url.PathEscape(r.container)

	var cc *container.Client
	switch {
	case r.accountKey != "":
		cred, err := container.NewSharedKeyCredential(r.account, r.accountKey)
		if err != nil {
			return nil, fmt.Errorf("azure: invalid account key for account %q (check %s or the connection string's AccountKey): %w", r.account, EnvAccountKey, err)
		}
		cc, err = container.NewClientWithSharedKeyCredential(containerURL, cred, opts)
		if err != nil {
			return nil, fmt.Errorf("azure: %w", err)
		}
	case r.sas != "":
		cc, err = container.NewClientWithNoCredential(containerURL+"?"+r.sas, opts)
		if err != nil {
			return nil, fmt.Errorf("azure: %w", err)
		}
	default:
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("azure: no credential: set %s, %s + %s, or %s, or configure workload identity: %w",
				EnvConnectionString, EnvAccount, EnvAccountKey, EnvSASToken, err)
		}
		cc, err = container.NewClient(containerURL, markedCredential{cred}, opts)
		if err != nil {
			return nil, fmt.Errorf("azure: %w", err)
		}
	}
	return &Client{cfg: r, transport: tr, container: cc, getRetry: getRetry, wholeRetry: wholeRetry}, nil
}

// String returns azure://container/prefix, with ?account= when the account
// is known. It never contains a credential.
func (c *Client) String() string {
	s := "azure://" + c.cfg.container
	if p := strings.TrimSuffix(c.cfg.prefix, "/"); p != "" {
		s += "/" + p
	}
	if c.cfg.account != "" {
		s += "?account=" + url.QueryEscape(c.cfg.account)
	}
	return s
}

// Close releases idle connections. Requests in flight are not interrupted.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	return nil
}

// blobName maps a store key to the blob's name in the container (see
// names.go for the escaping of dots that end a path segment).
func (c *Client) blobName(key string) string { return encodeName(c.cfg.prefix + key) }

// checkKey enforces the key syntax of package storage.
func checkKey(op, key string) error {
	if key == "" {
		return fmt.Errorf("azure: %s: empty key", op)
	}
	if strings.HasPrefix(key, "/") {
		return fmt.Errorf("azure: %s %s: invalid key: starts with /", op, key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "." || el == ".." {
			return fmt.Errorf("azure: %s %s: invalid key: contains a %q element", op, key, el)
		}
	}
	return nil
}

// Put uploads everything read from r under key, replacing an existing object
// atomically. See PutIfAbsent for the memory bound and the failure contract.
func (c *Client) Put(ctx context.Context, key string, r io.Reader) error {
	return c.put(ctx, "put", key, r, nil)
}

// PutIfAbsent uploads r under key only if no object has that key; otherwise
// it returns an error matching storage.ErrExist and leaves the existing
// object untouched (If-None-Match: * on the Put Blob or Put Block List that
// makes the object visible).
//
// Put and PutIfAbsent read r to its end, holding at most BlockSize x
// Concurrency bytes. On any failure, a read error from r or cancellation of
// ctx, no block list is committed and nothing new becomes visible; staged,
// uncommitted blocks are discarded by Azure after a week. A read error from r
// is returned wrapped and unclassified.
func (c *Client) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	ac := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: ptr(azcore.ETagAny)}}
	return c.put(ctx, "put-if-absent", key, r, ac)
}

func (c *Client) put(ctx context.Context, op, key string, r io.Reader, ac *blob.AccessConditions) error {
	if err := checkKey(op, key); err != nil {
		return err
	}
	src := &sourceReader{ctx: ctx, r: r}
	bb := c.container.NewBlockBlobClient(c.blobName(key))
	_, err := bb.UploadStream(ctx, src, &blockblob.UploadStreamOptions{
		BlockSize:        c.cfg.blockSize,
		Concurrency:      c.cfg.concurrency,
		AccessConditions: ac,
	})
	if err == nil {
		return nil
	}
	if src.err != nil {
		return fmt.Errorf("azure: %s %s: reading input: %w", op, key, src.err)
	}
	if ac != nil {
		// If-None-Match: * fails with 409 BlobAlreadyExists on Put Blob and
		// 412 ConditionNotMet on Put Block List. A racing writer that
		// commits first also discards our uncommitted blocks, so the
		// commit may instead fail with InvalidBlockList: ErrExist too, once
		// the winner's object is seen.
		if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) {
			return &opError{msg: "azure: " + op + " " + key + ": object already exists", kind: storage.ErrExist, cause: err}
		}
		if bloberror.HasCode(err, bloberror.InvalidBlockList) {
			if _, serr := c.Stat(ctx, key); serr == nil {
				return &opError{msg: "azure: " + op + " " + key + ": object already exists (created concurrently)", kind: storage.ErrExist, cause: err}
			}
		}
	}
	return c.mapErr(ctx, op, key, err)
}

// sourceReader stops reading when ctx is done (the SDK's upload loop keeps
// reading its source after a cancel otherwise) and records the source's own
// read error so it is not mistaken for a service error.
type sourceReader struct {
	ctx context.Context
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// Get opens the whole object. A missing key matches storage.ErrNotExist.
func (c *Client) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return c.GetRange(ctx, key, 0, -1)
}

// GetRange opens length bytes from offset (length < 0: to the end). A range
// starting at or past the end yields an empty reader (Azure answers 416;
// that is mapped to "nothing there"). The reader resumes from its position
// with a new request, pinned to the same object version by ETag, after a
// broken or stalled connection; if the object was replaced meanwhile the
// read fails with an error marked retryable.
func (c *Client) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := checkKey("get", key); err != nil {
		return nil, err
	}
	if rc, answered, err := storage.TrivialRange(ctx, c, key, offset, length); answered {
		return rc, err
	}
	count := length
	if count < 0 {
		count = blob.CountToEnd
	}
	dctx := policy.WithRetryOptions(ctx, c.getRetry)
	bc := c.container.NewBlobClient(c.blobName(key))
	resp, err := bc.DownloadStream(dctx, &blob.DownloadStreamOptions{Range: blob.HTTPRange{Offset: offset, Count: count}})
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) && re.StatusCode == http.StatusRequestedRangeNotSatisfiable {
			// Only an existing blob has a range to violate.
			return http.NoBody, nil
		}
		return nil, c.mapErr(ctx, "get", key, err)
	}
	rr := resp.NewRetryReader(dctx, &blob.RetryReaderOptions{MaxRetries: int32(max(c.cfg.maxRetries, 1))})
	return &stallReader{c: c, ctx: ctx, key: key, rr: rr}, nil
}

// stallReader forces the SDK's RetryReader to resume with a new ranged
// request when one Read makes no progress for stallTimeout (closing the
// current body from another goroutine is the RetryReader's documented way to
// force that), and classifies read errors.
type stallReader struct {
	c   *Client
	ctx context.Context
	key string
	rr  *blob.RetryReader
}

func (s *stallReader) Read(p []byte) (int, error) {
	t := time.AfterFunc(stallTimeout, func() { _ = s.rr.Close() })
	n, err := s.rr.Read(p)
	t.Stop()
	if err != nil && err != io.EOF {
		err = s.c.mapErr(s.ctx, "get", s.key, err)
		if !storage.IsRetryable(err) && s.ctx.Err() == nil && bloberror.HasCode(err, bloberror.ConditionNotMet) {
			// The object was replaced mid-read; starting over will succeed.
			err = storage.Retryable(err)
		}
	}
	return n, err
}

func (s *stallReader) Close() error { return s.rr.Close() }

// Stat returns the object's size and modification time; a missing key
// matches storage.ErrNotExist.
func (c *Client) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey("stat", key); err != nil {
		return storage.ObjectInfo{}, err
	}
	p, err := c.container.NewBlobClient(c.blobName(key)).GetProperties(policy.WithRetryOptions(ctx, c.wholeRetry), nil)
	if err != nil {
		return storage.ObjectInfo{}, c.mapErr(ctx, "stat", key, err)
	}
	info := storage.ObjectInfo{Key: key}
	if p.ContentLength != nil {
		info.Size = *p.ContentLength
	}
	if p.LastModified != nil {
		info.ModTime = *p.LastModified
	}
	return info, nil
}

// List calls fn for every object whose key starts with prefix, in lexical
// order (Azure lists blob names sorted; see names.go for the one exception),
// fetching pages of up to 5000 names as fn consumes them. Directory markers of accounts with a hierarchical
// namespace are skipped. An error from fn stops the listing and is returned
// as is.
func (c *Client) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	full := listPrefix(c.cfg.prefix + prefix)
	opts := &container.ListBlobsFlatOptions{Include: container.ListBlobsInclude{Metadata: true}}
	if full != "" {
		opts.Prefix = &full
	}
	pager := c.container.NewListBlobsFlatPager(opts)
	for pager.More() {
		page, err := pager.NextPage(policy.WithRetryOptions(ctx, c.wholeRetry))
		if err != nil {
			return c.mapErr(ctx, "list", prefix, err)
		}
		if page.Segment == nil {
			continue
		}
		for _, item := range page.Segment.BlobItems {
			if item == nil || item.Name == nil || isDirectoryMarker(item.Metadata) {
				continue
			}
			key, ok := strings.CutPrefix(decodeName(*item.Name), c.cfg.prefix)
			if !ok || !strings.HasPrefix(key, prefix) {
				continue
			}
			info := storage.ObjectInfo{Key: key}
			if item.Properties != nil {
				if item.Properties.ContentLength != nil {
					info.Size = *item.Properties.ContentLength
				}
				if item.Properties.LastModified != nil {
					info.ModTime = *item.Properties.LastModified
				}
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// isDirectoryMarker reports the empty blobs that stand for directories in
// storage accounts with a hierarchical namespace (ADLS Gen2).
func isDirectoryMarker(md map[string]*string) bool {
	for k, v := range md {
		if strings.EqualFold(k, "hdi_isfolder") && v != nil && strings.EqualFold(*v, "true") {
			return true
		}
	}
	return false
}

// Delete removes the object and its snapshots. A missing key is not an
// error; a missing container is (storage.ErrNoBucket).
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey("delete", key); err != nil {
		return err
	}
	_, err := c.container.NewBlobClient(c.blobName(key)).Delete(policy.WithRetryOptions(ctx, c.wholeRetry), &blob.DeleteOptions{
		DeleteSnapshots: ptr(blob.DeleteSnapshotsOptionTypeInclude),
	})
	if err == nil || bloberror.HasCode(err, bloberror.BlobNotFound) {
		return nil
	}
	return c.mapErr(ctx, "delete", key, err)
}

// Copy copies srcKey to dstKey inside the container, server-side, replacing
// dstKey. A missing srcKey matches storage.ErrNotExist. Azure completes a
// copy within one account synchronously in practice; when it reports the
// copy pending, Copy polls the destination (Azure offers no notification)
// until it succeeds, fails or ctx ends.
func (c *Client) Copy(ctx context.Context, srcKey, dstKey string) error {
	if err := checkKey("copy", srcKey); err != nil {
		return err
	}
	if err := checkKey("copy", dstKey); err != nil {
		return err
	}
	what := srcKey + " to " + dstKey
	src := c.container.NewBlobClient(c.blobName(srcKey)).URL()
	dst := c.container.NewBlobClient(c.blobName(dstKey))
	resp, err := dst.StartCopyFromURL(ctx, src, nil)
	if err != nil {
		return c.mapErr(ctx, "copy", what, err)
	}
	status, desc := derefStatus(resp.CopyStatus), ""
	for delay := 50 * time.Millisecond; status == blob.CopyStatusTypePending; delay = min(2*delay, 2*time.Second) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("azure: copy %s: %w (the copy continues server-side)", what, ctx.Err())
		case <-time.After(delay):
		}
		p, err := dst.GetProperties(ctx, nil)
		if err != nil {
			return c.mapErr(ctx, "copy", what, err)
		}
		if p.CopyID != nil && resp.CopyID != nil && *p.CopyID != *resp.CopyID {
			return storage.Retryable(fmt.Errorf("azure: copy %s: destination overwritten by another writer during the copy", what))
		}
		status = derefStatus(p.CopyStatus)
		if p.CopyStatusDescription != nil {
			desc = *p.CopyStatusDescription
		}
	}
	if status != blob.CopyStatusTypeSuccess && status != "" {
		return storage.Retryable(fmt.Errorf("azure: copy %s: copy %s: %s", what, status, desc))
	}
	return nil
}

func derefStatus(s *blob.CopyStatusType) blob.CopyStatusType {
	if s == nil {
		return ""
	}
	return *s
}

func ptr[T any](v T) *T { return &v }
