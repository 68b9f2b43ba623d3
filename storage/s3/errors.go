package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"

	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/walferry/walferry/storage"
)

// classified is a provider error mapped onto walferry's error classes. Its
// message is short and says what to fix; it unwraps to both the storage
// sentinel (kind, may be nil) and the SDK's full error.
type classified struct {
	kind error
	msg  string
	err  error
}

func (e *classified) Error() string { return e.msg }

func (e *classified) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// noBucketError marks a 404 from HeadBucket, which carries no error code.
type noBucketError struct{ err error }

func (e *noBucketError) Error() string { return "NoSuchBucket: " + e.err.Error() }
func (e *noBucketError) Unwrap() error { return e.err }

// wrap prefixes err with the operation and key and classifies it:
// storage.ErrNotExist, ErrExist, ErrPermission, ErrNoBucket, or
// storage.Retryable for transient failures. Cancellation of ctx is returned
// as such (errors.Is(err, context.Canceled)), never as retryable.
func (c *Client) wrap(ctx context.Context, op, key string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("s3: %s %s: %w", op, key, ctx.Err())
	}
	ce := c.classify(err)
	out := fmt.Errorf("s3: %s %s: %w", op, key, ce)
	if isRetryable(err) && !errors.Is(ce, storage.ErrPermission) && !errors.Is(ce, storage.ErrUntrustedCertificate) {
		return storage.Retryable(out)
	}
	return out
}

// classify maps an SDK error onto a *classified error, or returns err
// unchanged when no class fits.
func (c *Client) classify(err error) error {
	if ue := storage.UntrustedCertificate(err); ue != nil {
		return ue
	}
	var nb *noBucketError
	if errors.As(err, &nb) {
		return c.noBucket(err)
	}
	code, status := errorCode(err), httpStatus(err)
	switch {
	case code == "NoSuchBucket":
		return c.noBucket(err)
	case code == "NoSuchKey" || code == "NotFound" || (code == "" && status == http.StatusNotFound):
		return &classified{kind: storage.ErrNotExist, msg: "object does not exist (" + detail(err) + ")", err: err}
	case code == "PreconditionFailed" || status == http.StatusPreconditionFailed:
		return &classified{kind: storage.ErrExist, msg: "object already exists (" + detail(err) + ")", err: err}
	case code == "ConditionalRequestConflict":
		return &classified{kind: storage.ErrExist, msg: "object created concurrently by another writer (" + detail(err) + ")", err: err}
	case code == "InvalidAccessKeyId":
		return c.permission(err, "the access key id is unknown to %s: check AWS_ACCESS_KEY_ID (or the credentials your environment supplies)")
	case code == "SignatureDoesNotMatch":
		return c.permission(err, "the request signature was rejected by %s: check AWS_SECRET_ACCESS_KEY (a wrong region or clock skew can also cause this)")
	case code == "ExpiredToken" || code == "InvalidToken" || code == "TokenRefreshRequired":
		return c.permission(err, "the session token was rejected by %s: refresh the credentials or check AWS_SESSION_TOKEN")
	case code == "AccessDenied" || code == "AllAccessDisabled" || code == "InvalidSecurity" || status == http.StatusForbidden:
		return c.permission(err, "access denied by %s: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and that their policy allows s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the bucket")
	case code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || code == "IllegalLocationConstraintException" || status == http.StatusMovedPermanently:
		return &classified{msg: fmt.Sprintf("bucket %q is in another region: set AWS_REGION or ?region= to the bucket's region (%s)", c.bucket, detail(err)), err: err}
	case code == "NotImplemented" || status == http.StatusNotImplemented:
		return &classified{kind: errors.ErrUnsupported, msg: "the store does not implement this request (" + detail(err) + ")", err: err}
	}
	if isCredentialsError(err) {
		return &classified{kind: storage.ErrPermission,
			msg: "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or IRSA / pod identity (" + rootCause(err) + ")",
			err: err}
	}
	var ue *url.Error
	var apiErr smithy.APIError
	if errors.As(err, &ue) && !errors.As(err, &apiErr) {
		return &classified{msg: fmt.Sprintf("cannot reach endpoint %s: %s", endpointOf(ue.URL), netReason(err)), err: err}
	}
	return err
}

// isCredentialsError reports a failure to obtain credentials from the
// chain before any request was sent. The SDK has no type for it.
func isCredentialsError(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "get identity: ") ||
		strings.Contains(msg, "failed to refresh cached credentials") ||
		strings.Contains(msg, "failed to retrieve credentials")
}

func (c *Client) noBucket(err error) error {
	where := c.endpoint
	if where == "" {
		where = endpointOfResponse(err)
	}
	return &classified{
		kind: storage.ErrNoBucket,
		msg: fmt.Sprintf("bucket does not exist: bucket %q not found at %s: create it (aws s3 mb s3://%s, or mc mb ALIAS/%s for MinIO) or fix the bucket name in the repository URL",
			c.bucket, where, c.bucket, c.bucket),
		err: err,
	}
}

func (c *Client) permission(err error, format string) error {
	where := c.endpoint
	if where == "" {
		where = endpointOfResponse(err)
	}
	return &classified{
		kind: storage.ErrPermission,
		msg:  "permission denied: " + fmt.Sprintf(format, where) + " (" + detail(err) + ")",
		err:  err,
	}
}

// errorCode returns the S3 error code ("NoSuchKey"), or "" when the answer
// had none (HEAD responses) or there was no answer.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// httpStatus returns the HTTP status of the failed answer, or 0.
func httpStatus(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// detail summarises an SDK error: code, message, status and request id.
func detail(err error) string {
	var parts []string
	var ae smithy.APIError
	if errors.As(err, &ae) {
		s := ae.ErrorCode()
		if m := ae.ErrorMessage(); m != "" && m != s {
			s += ": " + m
		}
		parts = append(parts, s)
	}
	if st := httpStatus(err); st != 0 {
		parts = append(parts, fmt.Sprintf("HTTP %d", st))
	}
	var rid interface{ ServiceRequestID() string }
	if errors.As(err, &rid) && rid.ServiceRequestID() != "" {
		parts = append(parts, "request id "+rid.ServiceRequestID())
	}
	if len(parts) == 0 {
		return rootCause(err)
	}
	return strings.Join(parts, ", ")
}

// rootCause returns the message of the innermost wrapped error.
func rootCause(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}

// endpointOf returns scheme://host of a request URL.
func endpointOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return raw
	}
	return u.Scheme + "://" + u.Host
}

// endpointOfResponse returns scheme://host of the request that failed, or
// "the S3 endpoint" when the error does not carry it.
func endpointOfResponse(err error) string {
	var re interface{ HTTPResponse() *smithyhttp.Response }
	if errors.As(err, &re) {
		if r := re.HTTPResponse(); r != nil && r.Response != nil && r.Request != nil && r.Request.URL != nil {
			return r.Request.URL.Scheme + "://" + r.Request.URL.Host
		}
	}
	return "the S3 endpoint"
}

// netReason names a transport failure in a few words.
func netReason(err error) string {
	var dnsErr *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.As(err, &dnsErr):
		return "cannot resolve host " + dnsErr.Name + ": " + dnsErr.Err
	case errors.As(err, &ne) && ne.Timeout():
		return "timed out"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return rootCause(err)
}

// retryableCodes are S3 error codes worth repeating the request for.
var retryableCodes = map[string]bool{
	"SlowDown":                   true,
	"RequestTimeout":             true,
	"RequestTimeoutException":    true,
	"InternalError":              true,
	"ServiceUnavailable":         true,
	"Throttling":                 true,
	"ThrottlingException":        true,
	"RequestLimitExceeded":       true,
	"TooManyRequests":            true,
	"OperationAborted":           true,
	"BadDigest":                  true,
	"XAmzContentSHA256Mismatch":  true,
	"XMinioServerNotInitialized": true,
}

// isRetryable reports whether the same request may succeed if repeated:
// throttling, 5xx answers, timeouts, resets and refused connections. The
// caller (wrap) has already returned the cancellation or deadline of its
// own ctx; a deadline error here is the transport's (net/http's "timeout
// awaiting response headers" is errors.Is context.DeadlineExceeded): a
// store that did not answer in time, which is transient.
func isRetryable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	if retryableCodes[errorCode(err)] {
		return true
	}
	if st := httpStatus(err); st >= 500 || st == http.StatusTooManyRequests {
		return true
	}
	if httpStatus(err) != 0 {
		return false // the server answered; its verdict is not transient
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// isNotFound reports an HTTP 404 answer, whatever its code.
func isNotFound(err error) bool {
	return httpStatus(err) == http.StatusNotFound
}

// isInvalidRange reports a 416 answer to a ranged GET.
func isInvalidRange(err error) bool {
	return errorCode(err) == "InvalidRange" || httpStatus(err) == http.StatusRequestedRangeNotSatisfiable
}
