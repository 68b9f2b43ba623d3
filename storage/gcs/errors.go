package gcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"golang.org/x/oauth2"

	"github.com/walferry/walferry/storage"
)

// apiError is a GCS answer with an error status.
type apiError struct {
	Code    int
	Message string
}

func (e *apiError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("HTTP %d %s", e.Code, http.StatusText(e.Code))
	}
	return fmt.Sprintf("HTTP %d: %s", e.Code, e.Message)
}

// newAPIError reads the JSON error of resp ({"error":{"code":..,"message":..}}),
// or the start of a body that is not one.
func newAPIError(resp *http.Response) *apiError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	e := &apiError{Code: resp.StatusCode}
	var body struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error.Message != "" {
		e.Message = body.Error.Message
	} else {
		e.Message = strings.TrimSpace(string(b[:min(len(b), 200)]))
	}
	return e
}

// tokenError is a failure to obtain an access token.
type tokenError struct{ err error }

func (e *tokenError) Error() string { return e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }

// shouldRetry tells whether an idempotent call that failed with err is
// worth repeating at once: throttling, 5xx answers and broken connections,
// but not a failed dial (when nothing listens at the endpoint, repeating the
// call does not help and only delays the error) nor ctx's end.
func shouldRetry(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code == http.StatusTooManyRequests || ae.Code == http.StatusRequestTimeout || ae.Code >= 500
	}
	var te *tokenError
	if errors.As(err, &te) || isDialError(err) {
		return false
	}
	return isNetError(err)
}

func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// mapErr maps a request's error onto the storage package's classes. A 404
// on an object is ambiguous (objects.get answers the same for a missing
// bucket), so until the bucket has been seen to exist it is probed with a
// one-item listing.
func (c *Client) mapErr(ctx context.Context, op, key string, err error) error {
	var ae *apiError
	var se *sessionError
	if errors.As(err, &ae) && errors.As(err, &se) && (ae.Code == http.StatusNotFound || ae.Code == http.StatusGone) {
		// The session URI no longer exists: the upload can only be restarted.
		return storage.Retryable(fmt.Errorf("gcs: %s %s: the resumable upload session expired or was cancelled: %w", op, key, err))
	}
	if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
		if op == "put" || op == "put-if-absent" {
			// An upload's only 404 is a missing bucket.
			return c.noBucket(op, key, err)
		}
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
	if ue := storage.UntrustedCertificate(err); ue != nil {
		return fmt.Errorf("gcs: %s %s: %w", op, key, ue)
	}
	var ae *apiError
	if errors.As(err, &ae) {
		switch code := ae.Code; {
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
	var te *tokenError
	if errors.As(err, &te) {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode >= 400 && re.Response.StatusCode < 500 {
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
	return errors.As(err, &ue)
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
	q := url.Values{"prefix": {c.objectName("")}, "maxResults": {"1"}, "fields": {"items(name)"}}
	var page struct{}
	err := c.getJSON(ctx, c.bucketURL(q), &page)
	var ae *apiError
	if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
		return true
	}
	if err == nil {
		c.bucketOK.Store(true)
	}
	return false
}
