package storage

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/walferry/walferry/internal/failure"
)

// ErrUntrustedCertificate means a store's TLS certificate failed
// verification. Every backend verifies certificates and none can be told
// to skip it: the fix is trusting the CA that signed the certificate.
// It is a configuration mistake (failure.Usage), never retried.
var ErrUntrustedCertificate = failure.New(failure.Usage, "the store's TLS certificate is not trusted")

// certificateFix is what the user does about an untrusted certificate, for
// every backend (SSL_CERT_FILE and SSL_CERT_DIR are Go's own; the AWS SDK
// adds AWS_CA_BUNDLE).
const certificateFix = "add the CA that signed it to the system's trust store, or point SSL_CERT_FILE at a PEM bundle that holds it (s3:// also reads AWS_CA_BUNDLE); walferry never skips certificate verification"

// untrustedCertificateError keeps the provider's error for errors.As and
// prints the verification failure with its fix.
type untrustedCertificateError struct {
	cause string
	err   error
}

func (e *untrustedCertificateError) Error() string {
	return fmt.Sprintf("%s (%s): %s", ErrUntrustedCertificate, e.cause, certificateFix)
}

func (e *untrustedCertificateError) Unwrap() []error { return []error{ErrUntrustedCertificate, e.err} }

// UntrustedCertificate returns an error naming the fix when err is a
// failure to verify a store's TLS certificate (unknown authority, wrong
// host name, expired), and nil otherwise. Backends call it first when
// classifying a provider's error, so that such a failure is never taken
// for a transient one.
func UntrustedCertificate(err error) error {
	var (
		cv *tls.CertificateVerificationError
		ua x509.UnknownAuthorityError
		hn x509.HostnameError
		ci x509.CertificateInvalidError
	)
	var cause error
	switch {
	case errors.As(err, &cv):
		cause = cv.Err
	case errors.As(err, &ua):
		cause = ua
	case errors.As(err, &hn):
		cause = hn
	case errors.As(err, &ci):
		cause = ci
	default:
		return nil
	}
	return &untrustedCertificateError{cause: cause.Error(), err: err}
}
