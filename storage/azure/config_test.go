package azure

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/walferry/walferry/storage"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

const testKey = "a2V5LWJ5dGVzLWFyZS1iYXNlNjQ=" // base64, not a real key

func TestResolve(t *testing.T) {
	azEnv := map[string]string{
		EnvConnectionString: "AccountName=envacct;AccountKey=" + testKey,
		EnvAccount:          "envacct2",
		EnvAccountKey:       testKey,
		EnvSASToken:         "sv=x&sig=y",
	}
	tests := []struct {
		name    string
		cfg     Config
		env     map[string]string
		kind    credKind
		account string
		url     string
		sas     string
		wantErr string
	}{
		{
			name: "connection string from env wins",
			cfg:  Config{Container: "ccc"}, env: azEnv,
			kind: credConnString, account: "envacct", url: "https://envacct.blob.core.windows.net/",
		},
		{
			name: "explicit key ignores env credentials",
			cfg:  Config{Container: "ccc", Account: "mine", AccountKey: testKey}, env: azEnv,
			kind: credSharedKey, account: "mine", url: "https://mine.blob.core.windows.net/",
		},
		{
			name: "key with account from env",
			cfg:  Config{Container: "ccc"}, env: map[string]string{EnvAccount: "a1", EnvAccountKey: testKey},
			kind: credSharedKey, account: "a1", url: "https://a1.blob.core.windows.net/",
		},
		{
			name: "sas with leading question mark",
			cfg:  Config{Container: "ccc", Account: "a1", SASToken: "?sv=1&sig=2"},
			kind: credSAS, account: "a1", url: "https://a1.blob.core.windows.net/", sas: "sv=1&sig=2",
		},
		{
			name: "token credential",
			cfg:  Config{Container: "ccc", Account: "a1"},
			kind: credToken, account: "a1", url: "https://a1.blob.core.windows.net/",
		},
		{
			name: "endpoint overrides connection string",
			cfg: Config{Container: "ccc", Endpoint: "http://127.0.0.1:9/devstoreaccount1",
				ConnectionString: "UseDevelopmentStorage=true"},
			kind: credConnString, account: devStoreAccount, url: "http://127.0.0.1:9/devstoreaccount1/",
		},
		{
			name: "emulator shorthand",
			cfg:  Config{Container: "ccc", ConnectionString: "UseDevelopmentStorage=true"},
			kind: credConnString, account: devStoreAccount, url: devStoreEndpoint,
		},
		{
			name: "connection string with endpoint suffix",
			cfg: Config{Container: "ccc", ConnectionString: "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=" + testKey +
				";EndpointSuffix=core.chinacloudapi.cn"},
			kind: credConnString, account: "x", url: "https://x.blob.core.chinacloudapi.cn/",
		},
		{
			name: "connection string with sas",
			cfg:  Config{Container: "ccc", ConnectionString: "BlobEndpoint=https://x.blob.core.windows.net;SharedAccessSignature=sv=1&sig=2"},
			kind: credConnString, url: "https://x.blob.core.windows.net/", sas: "sv=1&sig=2",
		},
		{name: "no container", cfg: Config{Account: "a"}, wantErr: "no container"},
		{name: "bad container", cfg: Config{Container: "Has_Upper", Account: "a"}, wantErr: "invalid container name"},
		{name: "double hyphen", cfg: Config{Container: "a--b", Account: "a"}, wantErr: "invalid container name"},
		{name: "no account", cfg: Config{Container: "ccc"}, wantErr: EnvAccount},
		{name: "key without account", cfg: Config{Container: "ccc", AccountKey: testKey}, wantErr: "no account name"},
		{
			name:    "account conflicts with connection string",
			cfg:     Config{Container: "ccc", Account: "other", ConnectionString: "AccountName=x;AccountKey=" + testKey},
			wantErr: "conflicts",
		},
		{name: "malformed connection string", cfg: Config{Container: "ccc", ConnectionString: "garbage"}, wantErr: "malformed"},
		{name: "connection string without key", cfg: Config{Container: "ccc", ConnectionString: "AccountName=x"}, wantErr: "needs AccountName with AccountKey"},
		{name: "bad endpoint", cfg: Config{Container: "ccc", Account: "a", Endpoint: "127.0.0.1:10000"}, wantErr: "endpoint must be"},
		{name: "endpoint with sas", cfg: Config{Container: "ccc", Account: "a", Endpoint: "https://a.blob.core.windows.net/?sig=secret"}, wantErr: "must not carry"},
		{name: "block size too small", cfg: Config{Container: "ccc", Account: "a", BlockSize: 1000}, wantErr: "block size"},
		{name: "negative concurrency", cfg: Config{Container: "ccc", Account: "a", Concurrency: -1}, wantErr: "concurrency"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Getenv = envOf(tc.env)
			r, err := resolve(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("resolve: %v, want an error containing %q", err, tc.wantErr)
				}
				for _, secret := range []string{testKey, "secret"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q leaks a secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			if r.kind != tc.kind || r.account != tc.account || r.serviceURL != tc.url || r.sas != tc.sas {
				t.Errorf("resolve = kind %d account %q url %q sas %q; want kind %d account %q url %q sas %q",
					r.kind, r.account, r.serviceURL, r.sas, tc.kind, tc.account, tc.url, tc.sas)
			}
		})
	}
}

func TestResolveDefaults(t *testing.T) {
	r, err := resolve(Config{Container: "ccc", Prefix: "/a/b/", Account: "x", Getenv: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if r.prefix != "a/b/" || r.blockSize != DefaultBlockSize || r.concurrency != DefaultConcurrency ||
		r.maxRetries != DefaultMaxRetries || r.dialTimeout != DefaultDialTimeout || r.tryTimeout < time.Minute {
		t.Errorf("defaults: %+v", r)
	}
}

func TestString(t *testing.T) {
	c, err := New(t.Context(), Config{Container: "ccc", Prefix: "p/q", Account: "acct", AccountKey: testKey, Getenv: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := c.String(), "azure://ccc/p/q?account=acct"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestMapError(t *testing.T) {
	c := &Client{cfg: resolved{container: "ccc", account: "acct", serviceURL: "https://acct.blob.core.windows.net/", kind: credSharedKey}}
	respErr := func(status int, code string) error {
		req, _ := http.NewRequest(http.MethodGet, "https://acct.blob.core.windows.net/ccc/k", nil)
		resp := &http.Response{StatusCode: status, Status: http.StatusText(status), Header: http.Header{}, Request: req,
			Body: http.NoBody}
		return runtime.NewResponseErrorWithErrorCode(resp, code)
	}
	tests := []struct {
		name      string
		err       error
		kind      error
		retryable bool
		contains  string
	}{
		{"blob not found", respErr(404, "BlobNotFound"), storage.ErrNotExist, false, "does not exist"},
		{"head 404 without code", respErr(404, ""), storage.ErrNotExist, false, ""},
		{"container not found", respErr(404, "ContainerNotFound"), storage.ErrNoBucket, false, `"ccc"`},
		{"auth failed", respErr(403, "AuthenticationFailed"), storage.ErrPermission, false, EnvAccountKey},
		{"authorization", respErr(403, "AuthorizationPermissionMismatch"), storage.ErrPermission, false, ""},
		{"exists", respErr(409, "BlobAlreadyExists"), storage.ErrExist, false, ""},
		{"server busy", respErr(503, "ServerBusy"), nil, true, "503"},
		{"internal", respErr(500, "InternalError"), nil, true, ""},
		{"throttled", respErr(429, ""), nil, true, ""},
		{"bad request", respErr(400, "InvalidHeaderValue"), nil, false, "InvalidHeaderValue"},
		{"connection reset", &url.Error{Op: "Get", URL: "u", Err: errors.New("x")}, nil, false, ""},
		{"timeout", &url.Error{Op: "Get", URL: "u", Err: context.DeadlineExceeded}, nil, true, "timed out"},
		{"refused", &url.Error{Op: "Get", URL: "u", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}, nil, true, "cannot connect to https://acct"},
		{"dial timeout", &url.Error{Op: "Get", URL: "u", Err: &net.OpError{Op: "dial", Net: "tcp", Err: context.DeadlineExceeded}}, nil, true, "cannot connect"},
		{"reset", &url.Error{Op: "Get", URL: "u", Err: &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}}, nil, true, ""},
		{"unexpected EOF", io.ErrUnexpectedEOF, nil, true, ""},
		{"token", &credError{err: errors.New("no credential")}, storage.ErrPermission, false, "Azure AD"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.mapErr(context.Background(), "get", "k", tc.err)
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("mapErr = %v, want it to match %v", err, tc.kind)
			}
			if got := storage.IsRetryable(err); got != tc.retryable {
				t.Errorf("IsRetryable(%v) = %v, want %v", err, got, tc.retryable)
			}
			if !strings.HasPrefix(err.Error(), "azure: get k: ") || !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("message %q", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("message spans lines: %q", err)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.mapErr(ctx, "get", "k", &url.Error{Op: "Get", URL: "u", Err: context.Canceled})
	if !errors.Is(err, context.Canceled) || storage.IsRetryable(err) {
		t.Errorf("cancelled: %v", err)
	}
}
