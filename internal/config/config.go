// Package config holds walferry's settings and their layering: defaults,
// then a YAML file, then WALFERRY_* environment variables and flags (both
// applied by the command line, flags winning), then Validate. Parsing has
// no side effects: nothing here opens a store or a connection.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walferry/walferry/internal/codec"
	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/retry"
)

// Config is everything a walferry command may need. Commands read only the
// fields they use.
type Config struct {
	// Repos are repository URLs; archive-push succeeds only when every one
	// holds the segment.
	Repos []string `yaml:"repos"`
	// PGData is the data directory of the local cluster.
	PGData string `yaml:"pgdata"`
	// PGConn is a libpq connection string or URI; empty means libpq's
	// environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, ...).
	PGConn Secret `yaml:"pg_conn"`
	// Compression for new objects: none, lz4, zstd[:level], gzip[:level].
	// Empty means the repository's default (lz4 for a new repository).
	Compression string `yaml:"compression"`
	// EncryptionPassphrase enables encryption of new objects and decrypts
	// existing ones. Prefer EncryptionPassphraseFile or the environment
	// over writing it into the file.
	EncryptionPassphrase     Secret `yaml:"encryption_passphrase"`
	EncryptionPassphraseFile string `yaml:"encryption_passphrase_file"`
	// LogFormat is auto (JSON inside Kubernetes, text elsewhere), text or json.
	LogFormat string `yaml:"log_format"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// Storage tunes every backend.
	Storage Storage `yaml:"storage"`
	// Archive tunes archive-push, archive-get and the daemon serving them.
	Archive Archive `yaml:"archive"`
}

// Archive holds the settings of the hooks PostgreSQL runs and their daemon.
type Archive struct {
	// PushAhead is how many further .ready segments archive-push uploads in
	// parallel with the requested one: AutoAhead (-1) sizes it for the
	// machine (twice the CPUs, 2..16), 0 turns look-ahead off.
	PushAhead int `yaml:"push_ahead"`
	// Prefetch is how many following segments archive-get fetches in
	// parallel into its spool: AutoAhead (-1) sizes it for the machine,
	// 0 turns prefetch off.
	Prefetch int `yaml:"prefetch"`
	// SpoolDir holds the hooks' working files: <dir>/prefetch (archive-get's
	// spool, which must be on pg_wal's filesystem) and <dir>/pushed
	// (archive-push's look-ahead records). Empty means pg_wal/.walferry.
	SpoolDir string `yaml:"spool_dir"`
	// Socket is the unix socket of walferry daemon. The hooks hand their
	// work to the daemon when it answers there, and work standalone when it
	// does not. Empty means no daemon.
	Socket string `yaml:"socket"`
	// Partial makes archive-get serve a segment that is not archived from
	// its .partial (the unfinished segment wal-receive uploads),
	// zero-padded: recovery then ends at the last streamed byte. For
	// disaster recovery only; off by default.
	Partial bool `yaml:"partial"`
}

// AutoAhead asks for a look-ahead or prefetch depth sized for the machine.
const AutoAhead = -1

// maxAhead bounds Archive.PushAhead and Archive.Prefetch.
const maxAhead = 256

// MaxSocketPath is the longest unix socket path Linux accepts.
const MaxSocketPath = 107

// Storage holds the knobs shared by all backends.
type Storage struct {
	// Concurrency bounds simultaneous requests per repository.
	Concurrency int `yaml:"concurrency"`
	// PartSize is the multipart upload part (S3) or block (Azure) size in bytes.
	PartSize int64 `yaml:"part_size"`
	// RetryAttempts bounds attempts of a transient failure; RetryMaxElapsed
	// bounds the time spent retrying one operation.
	RetryAttempts   int           `yaml:"retry_attempts"`
	RetryMaxElapsed time.Duration `yaml:"retry_max_elapsed"`
}

// Defaults returns the configuration used when nothing is set.
func Defaults() Config {
	return Config{
		LogFormat: "auto",
		// Commands print their result; logs are for what went wrong.
		// Retries of transient failures log at info.
		LogLevel: "warn",
		Storage: Storage{
			Concurrency:     8,
			PartSize:        8 << 20,
			RetryAttempts:   retry.DefaultPolicy().MaxAttempts,
			RetryMaxElapsed: retry.DefaultPolicy().MaxElapsed,
		},
		Archive: Archive{PushAhead: AutoAhead, Prefetch: AutoAhead},
	}
}

// LoadFile applies the YAML file at path over c. Unknown keys are errors,
// so a typo never silently falls back to a default.
func (c *Config) LoadFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return &Error{Field: "config", Problem: err.Error(), Fix: "pass an existing, readable file to --config or unset WALFERRY_CONFIG"}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// io.EOF means an empty file, which is valid.
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return &Error{Field: "config", Problem: fmt.Sprintf("%s: %v", path, err), Fix: "see docs/configuration.md for the valid keys"}
	}
	return nil
}

// Validate checks every field and names the first bad one with its fix.
func (c *Config) Validate() error {
	for i, r := range c.Repos {
		if _, err := storage.ParseURL(r); err != nil {
			return &Error{Field: fmt.Sprintf("repo[%d]", i), Problem: err.Error(), Fix: "fix --repo / WALFERRY_REPO"}
		}
	}
	if c.Compression != "" {
		// One parser for every place a compression is named: the codec's.
		if _, _, err := codec.ParseCompression(c.Compression); err != nil {
			return &Error{Field: "compression", Problem: err.Error(), Fix: "use none, lz4[:1-9], zstd[:1-22] or gzip[:1-9]"}
		}
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		return &Error{Field: "log-format", Problem: fmt.Sprintf("unknown value %q", c.LogFormat), Fix: "use auto, text or json"}
	}
	if _, err := ParseLogLevel(c.LogLevel); err != nil {
		return &Error{Field: "log-level", Problem: err.Error(), Fix: "use debug, info, warn or error"}
	}
	if c.EncryptionPassphrase != "" && c.EncryptionPassphraseFile != "" {
		return &Error{Field: "encryption-passphrase", Problem: "both a passphrase and a passphrase file are set", Fix: "keep only one"}
	}
	if c.Storage.Concurrency < 1 || c.Storage.Concurrency > 256 {
		return &Error{Field: "storage.concurrency", Problem: fmt.Sprintf("%d is out of range", c.Storage.Concurrency), Fix: "use 1..256"}
	}
	if c.Storage.PartSize < 5<<20 || c.Storage.PartSize > 512<<20 {
		return &Error{Field: "storage.part_size", Problem: fmt.Sprintf("%d bytes is out of range", c.Storage.PartSize), Fix: "use 5 MiB (5242880) .. 512 MiB"}
	}
	if c.Storage.RetryAttempts < 1 || c.Storage.RetryAttempts > 100 {
		return &Error{Field: "storage.retry_attempts", Problem: fmt.Sprintf("%d is out of range", c.Storage.RetryAttempts), Fix: "use 1..100"}
	}
	if c.Storage.RetryMaxElapsed <= 0 {
		return &Error{Field: "storage.retry_max_elapsed", Problem: "must be positive", Fix: "use a duration such as 30s"}
	}
	if a := c.Archive.PushAhead; a < AutoAhead || a > maxAhead {
		return &Error{Field: "archive.push_ahead", Problem: fmt.Sprintf("%d is out of range", a), Fix: fmt.Sprintf("use -1 (sized for the machine), 0 (off) or 1..%d", maxAhead)}
	}
	if p := c.Archive.Prefetch; p < AutoAhead || p > maxAhead {
		return &Error{Field: "archive.prefetch", Problem: fmt.Sprintf("%d is out of range", p), Fix: fmt.Sprintf("use -1 (sized for the machine), 0 (off) or 1..%d", maxAhead)}
	}
	if s := c.Archive.Socket; len(s) > MaxSocketPath {
		return &Error{Field: "archive.socket", Problem: fmt.Sprintf("%s is %d bytes long; unix socket paths are at most %d", s, len(s), MaxSocketPath), Fix: "choose a shorter path, e.g. /run/walferry/walferry.sock"}
	}
	return nil
}

// Passphrase returns the encryption passphrase from the flag, environment or
// file, or nil when encryption is not configured.
func (c *Config) Passphrase() ([]byte, error) {
	if c.EncryptionPassphrase != "" {
		return []byte(c.EncryptionPassphrase), nil
	}
	if c.EncryptionPassphraseFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(c.EncryptionPassphraseFile)
	if err != nil {
		return nil, &Error{Field: "encryption-passphrase-file", Problem: err.Error(), Fix: "point it at a readable file holding the passphrase"}
	}
	p := bytes.TrimRight(data, "\r\n")
	if len(p) == 0 {
		return nil, &Error{Field: "encryption-passphrase-file", Problem: c.EncryptionPassphraseFile + " is empty", Fix: "write the passphrase into it"}
	}
	return p, nil
}

// ParseLogLevel maps a level name onto slog's levels.
func ParseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("unknown log level %q", s)
	}
	return l, nil
}

// Error is a configuration problem: which field, what is wrong, how to fix it.
type Error struct {
	Field   string
	Problem string
	Fix     string
}

// FailureKind classifies configuration errors as usage mistakes.
func (e *Error) FailureKind() failure.Kind { return failure.Usage }

func (e *Error) Error() string {
	return fmt.Sprintf("configuration: %s: %s (fix: %s)", e.Field, e.Problem, e.Fix)
}

// Secret is a string that never prints: fmt, JSON, YAML output and slog all
// show it redacted.
type Secret string

const redacted = "[REDACTED]"

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the secret.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// MarshalYAML implements yaml.Marshaler.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// Reveal returns the secret itself, for the one place that needs it.
func (s Secret) Reveal() string { return string(s) }
