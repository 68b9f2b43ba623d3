package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/walferry/walferry/storage"
)

// opError is what every method returns for a failed service call: a short,
// single-line message (the SDK's own errors span a dozen lines with headers
// and XML), matching a storage sentinel when one applies, and still
// unwrapping to the SDK's error for errors.As(*azcore.ResponseError).
type opError struct {
	msg   string
	kind  error // storage.ErrNotExist, ... or nil
	cause error // the SDK's error, or nil when it must not be in the chain
}

func (e *opError) Error() string { return e.msg }

func (e *opError) Unwrap() []error {
	var errs []error
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// credError marks a failure to obtain an Azure AD token, so it can be told
// apart from a transport failure of the storage request itself.
type credError struct{ err error }

func (e *credError) Error() string { return e.err.Error() }
func (e *credError) Unwrap() error { return e.err }

// markedCredential wraps a TokenCredential so its failures are credErrors.
type markedCredential struct{ azcore.TokenCredential }

func (m markedCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tok, err := m.TokenCredential.GetToken(ctx, opts)
	if err != nil {
		return tok, &credError{err: err}
	}
	return tok, nil
}

// permissionHint tells the user what to check for a 401/403, by where the
// credential came from.
func (c *Client) permissionHint() string {
	switch c.cfg.kind {
	case credConnString:
		if c.cfg.sas != "" {
			return "check the SharedAccessSignature in the connection string (" + EnvConnectionString + "): expired, or missing read/add/create/write/delete/list permissions"
		}
		return "check the AccountKey in the connection string (" + EnvConnectionString + "): it must be a current key of account " + quoteOr(c.cfg.account, "in AccountName")
	case credSharedKey:
		return "check " + EnvAccountKey + ": it must be a current key of account " + quoteOr(c.cfg.account, "in "+EnvAccount)
	case credSAS:
		return "check " + EnvSASToken + ": expired, for another account or container, or missing read/add/create/write/delete/list permissions"
	default:
		return "the Azure AD identity (workload identity, managed identity or az login) needs the Storage Blob Data Contributor role on the container, " +
			"or set " + EnvConnectionString + " or " + EnvAccount + " + " + EnvAccountKey
	}
}

func quoteOr(s, alt string) string {
	if s == "" {
		return alt
	}
	return fmt.Sprintf("%q", s)
}

// mapErr turns an SDK error from operation op on key into the error the
// storage contract promises: wrapped with context, matching
// storage.ErrNotExist / ErrNoBucket / ErrPermission / ErrExist, or marked
// storage.Retryable when repeating the call may help. ctx is the caller's
// context, used to tell a caller's cancellation from an SDK timeout.
func (c *Client) mapErr(ctx context.Context, op, key string, err error) error {
	if err == nil {
		return nil
	}
	where := "azure: " + op + " " + key + ": "

	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return c.mapResponseError(where, re, err)
	}

	if ctxErr := ctx.Err(); ctxErr != nil {
		// The caller gave up; whatever the transport said is a consequence.
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s%w", where, err)
		}
		return fmt.Errorf("%s%w (%v)", where, ctxErr, err)
	}

	if ue := storage.UntrustedCertificate(err); ue != nil {
		return fmt.Errorf("%s%w", where, ue)
	}

	var ce *credError
	if errors.As(err, &ce) {
		e := &opError{msg: where + "cannot get an Azure AD token: " + ce.err.Error() + "; " + c.permissionHint(), kind: storage.ErrPermission, cause: ce.err}
		if isTransportError(ce.err) {
			return storage.Retryable(e)
		}
		return e
	}

	// From here on the caller's context is alive, so a deadline in err is
	// the SDK's per-try timeout or a dial timeout. Such errors keep
	// context.DeadlineExceeded out of their chain: the caller did not run
	// out of time, and storage.IsRetryable treats deadline errors as final.
	timeout := errors.Is(err, context.DeadlineExceeded)
	if isDialError(err) {
		e := &opError{msg: where + "cannot connect to " + c.cfg.serviceURL + " (is the endpoint right and the service up?): " + err.Error()}
		if !timeout {
			e.cause = err
		}
		return storage.Retryable(e)
	}
	if timeout {
		return storage.Retryable(&opError{msg: where + "timed out talking to " + c.cfg.serviceURL + ": " + err.Error()})
	}
	if isTransportError(err) {
		return storage.Retryable(&opError{msg: where + "talking to " + c.cfg.serviceURL + ": " + err.Error(), cause: err})
	}
	return fmt.Errorf("%s%w", where, err)
}

func (c *Client) mapResponseError(where string, re *azcore.ResponseError, err error) error {
	code := re.ErrorCode
	status := fmt.Sprintf("HTTP %d", re.StatusCode)
	if code != "" {
		status += " " + code
	}
	e := &opError{cause: err}
	switch {
	case code == string(bloberror.ContainerNotFound):
		e.kind = storage.ErrNoBucket
		e.msg = fmt.Sprintf("%scontainer %q does not exist in storage account %s (%s): create it (az storage container create --account-name %s --name %s) or fix the container in the repository URL",
			where, c.cfg.container, quoteOr(c.cfg.account, "at "+c.cfg.serviceURL), status, orDefault(c.cfg.account, "ACCOUNT"), c.cfg.container)
	case code == string(bloberror.BlobNotFound),
		re.StatusCode == http.StatusNotFound && (code == "" || code == string(bloberror.CannotVerifyCopySource)):
		e.kind = storage.ErrNotExist
		e.msg = where + "object does not exist (" + status + ")"
	case re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden || isAuthCode(code):
		e.kind = storage.ErrPermission
		e.msg = where + "access denied by " + c.cfg.serviceURL + " (" + status + "): " + c.permissionHint()
	case code == string(bloberror.BlobAlreadyExists):
		e.kind = storage.ErrExist
		e.msg = where + "object already exists (" + status + ")"
	case re.StatusCode >= 500 || re.StatusCode == http.StatusRequestTimeout || re.StatusCode == http.StatusTooManyRequests ||
		code == string(bloberror.ServerBusy) || code == string(bloberror.OperationTimedOut) || code == string(bloberror.InternalError):
		e.msg = where + "service error (" + status + ")"
		return storage.Retryable(e)
	default:
		e.msg = where + "request rejected (" + status + ")"
	}
	return e
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// isAuthCode reports service error codes that mean the credential or its
// rights are wrong, whatever the status code.
func isAuthCode(code string) bool {
	switch bloberror.Code(code) {
	case bloberror.AuthenticationFailed, bloberror.AuthorizationFailure,
		bloberror.AuthorizationPermissionMismatch, bloberror.AuthorizationProtocolMismatch,
		bloberror.AuthorizationResourceTypeMismatch, bloberror.AuthorizationServiceMismatch,
		bloberror.AuthorizationSourceIPMismatch, bloberror.InsufficientAccountPermissions,
		bloberror.InvalidAuthenticationInfo, bloberror.NoAuthenticationInformation:
		return true
	}
	return false
}

// isDialError reports a failure to reach the endpoint at all: DNS or TCP
// connect. The SDK does not repeat these (see shouldRetry) so that a wrong
// endpoint fails within DialTimeout instead of after minutes of backoff.
func isDialError(err error) bool {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// isTransportError reports errors of the connection rather than of the
// request: resets, early EOFs, timeouts, refused connections.
func isTransportError(err error) bool {
	if isDialError(err) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	// Not net.Error: *url.Error implements it too and wraps every failure
	// of http.Client.Do, including configuration mistakes.
	var op *net.OpError
	return errors.As(err, &op)
}

// retryStatus are the HTTP statuses the SDK repeats by itself (its defaults).
var retryStatus = [...]int{
	http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
	http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout,
}

// shouldRetry is the SDK retry predicate: the SDK's own status list, and
// every transport error except failing to connect at all.
func shouldRetry(resp *http.Response, err error) bool {
	if err != nil {
		var ce *credError
		if errors.As(err, &ce) {
			return false // azidentity retries its own requests
		}
		return !isDialError(err)
	}
	for _, s := range retryStatus {
		if resp.StatusCode == s {
			return true
		}
	}
	return false
}
