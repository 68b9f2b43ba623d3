package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/codec"
)

func TestDefaultsValidate(t *testing.T) {
	c := Defaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := Defaults()
	if err := c.LoadFile(write("ok.yaml", "repos: [\"s3://b/p\", \"file:///r\"]\ncompression: zstd:3\nstorage:\n  concurrency: 4\n  retry_max_elapsed: 10s\n")); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(c.Repos, ","), "s3://b/p,file:///r"; got != want {
		t.Errorf("repos = %q, want %q", got, want)
	}
	if c.Compression != "zstd:3" || c.Storage.Concurrency != 4 || c.Storage.PartSize != Defaults().Storage.PartSize {
		t.Errorf("file not layered over defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}

	arch := Defaults()
	if err := arch.LoadFile(write("archive.yaml", "archive:\n  push_ahead: 0\n  prefetch: 8\n  spool_dir: /var/spool/walferry\n  socket: /run/walferry/walferry.sock\n")); err != nil {
		t.Fatal(err)
	}
	if want := (Archive{PushAhead: 0, Prefetch: 8, SpoolDir: "/var/spool/walferry", Socket: "/run/walferry/walferry.sock"}); arch.Archive != want {
		t.Errorf("archive = %+v, want %+v", arch.Archive, want)
	}
	if d := Defaults().Archive; d.PushAhead != AutoAhead || d.Prefetch != AutoAhead || d.SpoolDir != "" || d.Socket != "" {
		t.Errorf("archive defaults = %+v", d)
	}

	empty := Defaults()
	if err := empty.LoadFile(write("empty.yaml", "")); err != nil {
		t.Errorf("empty file: %v", err)
	}

	typo := Defaults()
	err := typo.LoadFile(write("typo.yaml", "compresion: lz4\n"))
	if err == nil || !strings.Contains(err.Error(), "compresion") {
		t.Errorf("typo in key: got %v, want an error naming the key", err)
	}

	missing := Defaults()
	if err := missing.LoadFile(filepath.Join(dir, "nope.yaml")); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing file: got %v", err)
	}
}

func TestValidateNamesField(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(*Config)
		field string
	}{
		{"bad repo", func(c *Config) { c.Repos = []string{"s3:/x"} }, "repo[0]"},
		{"bad compression", func(c *Config) { c.Compression = "lz5" }, "compression"},
		{"bad zstd level", func(c *Config) { c.Compression = "zstd:23" }, "compression"},
		{"lz4 level too high", func(c *Config) { c.Compression = "lz4:10" }, "compression"},
		{"bad log format", func(c *Config) { c.LogFormat = "xml" }, "log-format"},
		{"bad log level", func(c *Config) { c.LogLevel = "loud" }, "log-level"},
		{"both passphrases", func(c *Config) { c.EncryptionPassphrase = "x"; c.EncryptionPassphraseFile = "/f" }, "encryption-passphrase"},
		{"concurrency", func(c *Config) { c.Storage.Concurrency = 0 }, "storage.concurrency"},
		{"part size", func(c *Config) { c.Storage.PartSize = 1 }, "storage.part_size"},
		{"push ahead", func(c *Config) { c.Archive.PushAhead = -2 }, "archive.push_ahead"},
		{"prefetch", func(c *Config) { c.Archive.Prefetch = 100000 }, "archive.prefetch"},
		{"socket too long", func(c *Config) { c.Archive.Socket = "/" + strings.Repeat("s", 120) }, "archive.socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Defaults()
			tt.mod(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate succeeded")
			}
			if !strings.Contains(err.Error(), tt.field+":") || !strings.Contains(err.Error(), "fix:") {
				t.Errorf("error %q does not name field %q and a fix", err, tt.field)
			}
		})
	}
}

// TestCompressionOneAnswer: the configuration accepts exactly what the
// codec parses (it once refused lz4:9, ZSTD:3 and " gzip ", which the
// codec takes).
func TestCompressionOneAnswer(t *testing.T) {
	for _, s := range []string{"lz4:9", "ZSTD:3", " gzip ", "zstd:22", "none", "lz4:10", "zstd:0", "gzip:10", "none:1", "brotli", "zstd:"} {
		c := Defaults()
		c.Compression = s
		_, _, codecErr := codec.ParseCompression(s)
		if err := c.Validate(); (err == nil) != (codecErr == nil) {
			t.Errorf("compression %q: configuration says %v, the codec says %v", s, err, codecErr)
		}
	}
}

func TestSecretRedacted(t *testing.T) {
	c := Defaults()
	c.EncryptionPassphrase = "hunter2"
	c.PGConn = "host=db password=hunter2"
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("cfg", "passphrase", c.EncryptionPassphrase, "config", c)
	js, _ := json.Marshal(c)
	for name, out := range map[string]string{
		"%v": fmt.Sprintf("%v", c), "%+v": fmt.Sprintf("%+v", c), "%#v": fmt.Sprintf("%#v", c),
		"%s": fmt.Sprintf("%s", c.EncryptionPassphrase), "json": string(js), "slog": logs.String(),
	} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("%s output leaks the secret: %s", name, out)
		}
	}
	if c.EncryptionPassphrase.Reveal() != "hunter2" {
		t.Error("Reveal lost the secret")
	}
}

func TestPassphraseFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(p, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := Defaults()
	c.EncryptionPassphraseFile = p
	got, err := c.Passphrase()
	if err != nil || string(got) != "s3cret" {
		t.Errorf("Passphrase() = %q, %v", got, err)
	}
}

func FuzzLoadFile(f *testing.F) {
	f.Add("repos: [s3://b]\n")
	f.Add("storage: {concurrency: 3}\n")
	f.Add("compression: [1,2]\n")
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c := Defaults()
		if err := c.LoadFile(p); err == nil {
			_ = c.Validate()
		}
	})
}
