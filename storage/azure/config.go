package azure

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultBlockSize   = 8 << 20 // 8 MiB
	DefaultConcurrency = 4
	DefaultMaxRetries  = 3
	DefaultDialTimeout = 5 * time.Second

	minBlockSize = 1 << 20    // the SDK raises anything smaller to 1 MiB
	maxBlockSize = 4000 << 20 // Azure's limit for one staged block
)

// Environment variables New consults for fields left empty (see Config).
const (
	EnvConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
	EnvAccount          = "AZURE_STORAGE_ACCOUNT"
	EnvAccountKey       = "AZURE_STORAGE_KEY"
	EnvSASToken         = "AZURE_STORAGE_SAS_TOKEN"
)

// devStoreKey is the published, well-known key of the storage emulator's
// account (UseDevelopmentStorage=true); it is not a secret.
const (
	devStoreAccount  = "devstoreaccount1"
	devStoreKey      = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	devStoreEndpoint = "http://127.0.0.1:10000/devstoreaccount1/"
)

// Config configures a Client.
//
// Credentials are used in this order, the first one present wins:
// ConnectionString; Account + AccountKey; SASToken (with Account or
// Endpoint); otherwise an Azure AD token from azidentity's
// DefaultAzureCredential (workload identity, managed identity, Azure CLI),
// which needs Account or Endpoint.
//
// New fills empty fields from the environment, never overriding a field the
// caller set: Account from AZURE_STORAGE_ACCOUNT, and, only when none of
// ConnectionString, AccountKey and SASToken is set, those three from
// AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY and
// AZURE_STORAGE_SAS_TOKEN. So a credential given explicitly (flags, config
// file) is never mixed with one from the environment.
type Config struct {
	// Container is the blob container holding the repository. Required.
	// New does not create it; a missing container surfaces as
	// storage.ErrNoBucket on first use.
	Container string
	// Prefix is prepended (with a "/") to every key and stripped from
	// listings. Leading and trailing slashes are ignored.
	Prefix string

	// Account is the storage account name.
	Account string
	// Endpoint is the blob service URL, https://ACCOUNT.blob.core.windows.net/
	// by default. It overrides the connection string's BlobEndpoint too. For
	// emulators such as Azurite it includes the account as first path
	// element: http://127.0.0.1:10000/devstoreaccount1.
	Endpoint string

	// ConnectionString is an Azure storage connection string
	// (AccountName=...;AccountKey=...;BlobEndpoint=... or
	// SharedAccessSignature=...; UseDevelopmentStorage=true is understood).
	ConnectionString string
	// AccountKey is the account's shared key (base64), used with Account.
	AccountKey string
	// SASToken is a shared access signature query string, with or without
	// its leading "?".
	SASToken string

	// BlockSize is the size of one staged block in bytes, 1 MiB to 4000 MiB;
	// zero means DefaultBlockSize. An object holds at most 50,000 blocks, so
	// BlockSize also caps the object size (8 MiB blocks: about 390 GiB).
	BlockSize int64
	// Concurrency is how many blocks one Put uploads at once; zero means
	// DefaultConcurrency. One Put holds at most BlockSize x Concurrency bytes
	// of memory.
	Concurrency int

	// MaxRetries is how often the SDK repeats one failed HTTP request
	// (5xx, throttling, timeouts, resets) before giving up; zero means
	// DefaultMaxRetries, negative means no retry. Failures to connect at all
	// (connection refused, unknown host, dial timeout) are never repeated
	// here, so a dead endpoint fails fast; they are returned marked
	// storage.Retryable for the caller's retry policy to decide.
	MaxRetries int
	// TryTimeout bounds one HTTP request other than a download (one staged
	// block, one commit, one metadata call); zero means one minute plus the
	// time to send BlockSize at 256 KiB/s. Downloads are instead bounded by
	// a stall timeout: a body that delivers nothing for a minute is resumed
	// with a new ranged request.
	TryTimeout time.Duration
	// DialTimeout bounds establishing one TCP connection; zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration

	// Getenv reads the environment; nil means os.Getenv. Tests set it to
	// keep the process environment out.
	Getenv func(key string) string
}

// credKind names where the credential came from, for messages.
type credKind int

const (
	credConnString credKind = iota
	credSharedKey
	credSAS
	credToken
)

// resolved is a Config after defaults, environment and connection string
// parsing: everything New needs to build the SDK client.
type resolved struct {
	container  string
	prefix     string // "" or ending in "/"
	account    string // for messages; may be empty with an explicit Endpoint
	serviceURL string // ends in "/", no query
	kind       credKind
	accountKey string // credConnString/credSharedKey with a key
	sas        string // credConnString/credSAS with a signature, no leading "?"

	blockSize   int64
	concurrency int
	maxRetries  int
	tryTimeout  time.Duration
	dialTimeout time.Duration
}

// resolve validates cfg, applies defaults and the environment. Errors name
// the field and the fix; they never contain a secret.
func resolve(cfg Config) (resolved, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	r := resolved{container: cfg.Container}
	if err := validContainer(cfg.Container); err != nil {
		return resolved{}, err
	}
	if p := strings.Trim(cfg.Prefix, "/"); p != "" {
		r.prefix = p + "/"
	}

	explicitAccount := cfg.Account != ""
	if !explicitAccount {
		cfg.Account = getenv(EnvAccount)
	}
	if cfg.ConnectionString == "" && cfg.AccountKey == "" && cfg.SASToken == "" {
		cfg.ConnectionString = getenv(EnvConnectionString)
		cfg.AccountKey = getenv(EnvAccountKey)
		cfg.SASToken = getenv(EnvSASToken)
	}

	switch {
	case cfg.ConnectionString != "":
		cs, err := parseConnectionString(cfg.ConnectionString)
		if err != nil {
			return resolved{}, err
		}
		if explicitAccount && cs.account != "" && cs.account != cfg.Account {
			return resolved{}, fmt.Errorf("azure: account %q conflicts with AccountName %q in the connection string: drop one of them", cfg.Account, cs.account)
		}
		r.kind, r.account, r.serviceURL, r.accountKey, r.sas = credConnString, cs.account, cs.serviceURL, cs.accountKey, cs.sas
		if r.account == "" {
			r.account = cfg.Account
		}
	case cfg.AccountKey != "":
		if cfg.Account == "" {
			return resolved{}, errors.New("azure: an account key is set but no account name: set " + EnvAccount + " or the repository URL's ?account=")
		}
		r.kind, r.account, r.accountKey = credSharedKey, cfg.Account, cfg.AccountKey
	case cfg.SASToken != "":
		r.kind, r.account, r.sas = credSAS, cfg.Account, strings.TrimPrefix(cfg.SASToken, "?")
	default:
		r.kind, r.account = credToken, cfg.Account
	}

	if cfg.Endpoint != "" {
		u, err := normalizeEndpoint(cfg.Endpoint)
		if err != nil {
			return resolved{}, err
		}
		r.serviceURL = u
	}
	if r.serviceURL == "" {
		if r.account == "" {
			return resolved{}, errors.New("azure: no storage account: set " + EnvAccount + " (or the repository URL's ?account=), " +
				EnvConnectionString + ", or ?endpoint=")
		}
		r.serviceURL = "https://" + r.account + ".blob.core.windows.net/"
	}

	// Zero takes the default (cmp.Or); a negative value is refused, except
	// MaxRetries, where it means no retry.
	r.blockSize = cmp.Or(cfg.BlockSize, DefaultBlockSize)
	if r.blockSize < minBlockSize || r.blockSize > maxBlockSize {
		return resolved{}, fmt.Errorf("azure: block size %d out of range: it must be between %d (1 MiB) and %d (4000 MiB)", cfg.BlockSize, minBlockSize, int64(maxBlockSize))
	}
	r.concurrency = cmp.Or(cfg.Concurrency, DefaultConcurrency)
	r.maxRetries = max(cmp.Or(cfg.MaxRetries, DefaultMaxRetries), 0)
	r.tryTimeout = cmp.Or(cfg.TryTimeout, time.Minute+time.Duration(r.blockSize/(256<<10))*time.Second)
	r.dialTimeout = cmp.Or(cfg.DialTimeout, DefaultDialTimeout)
	switch {
	case r.concurrency < 0:
		return resolved{}, fmt.Errorf("azure: concurrency %d must be positive", cfg.Concurrency)
	case r.tryTimeout < 0:
		return resolved{}, fmt.Errorf("azure: try timeout %s must be positive", cfg.TryTimeout)
	case r.dialTimeout < 0:
		return resolved{}, fmt.Errorf("azure: dial timeout %s must be positive", cfg.DialTimeout)
	}
	return r, nil
}

// validContainer checks Azure's container naming rules so that a typo fails
// before any request: 3 to 63 lowercase letters, digits and single hyphens,
// starting and ending with a letter or digit ($root and $web are special).
func validContainer(name string) error {
	if name == "" {
		return errors.New("azure: no container: the repository URL must be azure://CONTAINER/prefix")
	}
	if name == "$root" || name == "$web" {
		return nil
	}
	bad := func(why string) error {
		return fmt.Errorf("azure: invalid container name %q: %s (use 3-63 lowercase letters, digits and single hyphens)", name, why)
	}
	if len(name) < 3 || len(name) > 63 {
		return bad("wrong length")
	}
	for i, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(name)-1 || name[i-1] == '-' {
				return bad("a hyphen must sit between letters or digits")
			}
		default:
			return bad(fmt.Sprintf("character %q not allowed", c))
		}
	}
	return nil
}

// normalizeEndpoint checks an explicit blob service URL and returns it
// ending in "/".
func normalizeEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("azure: endpoint must be an http:// or https:// URL such as https://ACCOUNT.blob.core.windows.net, got %q", raw)
	}
	if u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("azure: endpoint %s must not carry credentials or a query; put a SAS token in %s", u.Scheme+"://"+u.Host+u.Path, EnvSASToken)
	}
	s := u.Scheme + "://" + u.Host + u.EscapedPath()
	if !strings.HasSuffix(s, "/") {
		s += "/"
	}
	return s, nil
}

// connString is a parsed connection string.
type connString struct {
	account    string
	accountKey string
	sas        string
	serviceURL string // ends in "/"
}

// parseConnectionString understands the keys Azure's tools write:
// DefaultEndpointsProtocol, AccountName, AccountKey, BlobEndpoint,
// EndpointSuffix, SharedAccessSignature and UseDevelopmentStorage. Keys are
// case-insensitive; other keys (QueueEndpoint, ...) are ignored. Errors never
// echo the string, which holds a secret.
func parseConnectionString(s string) (connString, error) {
	kv := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return connString{}, errors.New("azure: malformed connection string: every element must be Key=Value (check " + EnvConnectionString + ")")
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if strings.EqualFold(kv["usedevelopmentstorage"], "true") {
		cs := connString{account: devStoreAccount, accountKey: devStoreKey, serviceURL: devStoreEndpoint}
		if proxy := kv["developmentstorageproxyuri"]; proxy != "" {
			cs.serviceURL = strings.TrimSuffix(proxy, "/") + ":10000/" + devStoreAccount + "/"
		}
		return cs, nil
	}
	cs := connString{account: kv["accountname"], accountKey: kv["accountkey"], sas: strings.TrimPrefix(kv["sharedaccesssignature"], "?")}
	if ep := kv["blobendpoint"]; ep != "" {
		u, err := normalizeEndpoint(ep)
		if err != nil {
			return connString{}, fmt.Errorf("azure: connection string BlobEndpoint: %w", err)
		}
		cs.serviceURL = u
	} else if cs.account != "" {
		proto := kv["defaultendpointsprotocol"]
		if proto == "" {
			proto = "https"
		}
		suffix := kv["endpointsuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		cs.serviceURL = proto + "://" + cs.account + ".blob." + suffix + "/"
	} else {
		return connString{}, errors.New("azure: connection string needs AccountName or BlobEndpoint (check " + EnvConnectionString + ")")
	}
	switch {
	case cs.account != "" && cs.accountKey != "":
		cs.sas = "" // the key wins, as in Azure's own SDKs
	case cs.sas != "":
		cs.accountKey = ""
	default:
		return connString{}, errors.New("azure: connection string needs AccountName with AccountKey, or SharedAccessSignature (check " + EnvConnectionString + ")")
	}
	return cs, nil
}
