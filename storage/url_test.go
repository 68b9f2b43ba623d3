package storage

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		raw                  string
		scheme, bucket, path string
	}{
		{"file:///var/lib/walferry", "file", "", "/var/lib/walferry"},
		{"file:///var/lib/walferry/", "file", "", "/var/lib/walferry"},
		{"s3://bucket", "s3", "bucket", ""},
		{"s3://bucket/", "s3", "bucket", ""},
		{"s3://bucket/a/b/", "s3", "bucket", "a/b"},
		{"S3://bucket/a?endpoint=http://127.0.0.1:9000&path-style=true", "s3", "bucket", "a"},
		{"gs://b/p", "gs", "b", "p"},
		{"azure://container/p/q?account=acct", "azure", "container", "p/q"},
	}
	for _, tt := range tests {
		got, err := ParseURL(tt.raw)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.raw, err)
			continue
		}
		if got.Scheme != tt.scheme || got.Bucket != tt.bucket || got.Path != tt.path {
			t.Errorf("ParseURL(%q) = %+v, want %s %s %s", tt.raw, got, tt.scheme, tt.bucket, tt.path)
		}
		again, err := ParseURL(got.String())
		if err != nil || again.String() != got.String() {
			t.Errorf("round trip of %q: %q, %v", tt.raw, again.String(), err)
		}
	}
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"", "empty"},
		{"bucket/prefix", "missing scheme"},
		{"ftp://host/x", "unknown scheme"},
		{"s3://", "missing bucket"},
		{"s3://key:secret@bucket/x", "credentials do not belong"},
		{"s3://bucket/x?foo=1", `unknown parameter "foo"`},
		{"s3://bucket/x?path-style=yes", "path-style must be true or false"},
		{"s3://bucket/x?endpoint=127.0.0.1:9000", "endpoint must be an http"},
		{"s3://bucket/a//b", "must not contain"},
		{"s3://bucket/a/../b", "must not contain"},
		{"file://relative/path", "absolute path"},
		{"file:///x?endpoint=http://a", "takes no query parameters"},
		{"gs://b/p?region=x", `unknown parameter "region"`},
		{"s3://bucket/x#frag", "fragment"},
		{"s3://bu cket/x", "invalid repository URL"},
	}
	for _, tt := range tests {
		_, err := ParseURL(tt.raw)
		if err == nil {
			t.Errorf("ParseURL(%q) succeeded, want error containing %q", tt.raw, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "examples:") {
			t.Errorf("ParseURL(%q) error %q, want it to contain %q and examples", tt.raw, err, tt.want)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"file:///a", "s3://b/p?endpoint=http://x:1", "gs://b", "azure://c/p?account=a", "s3://b/../x", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		loc, err := ParseURL(raw)
		if err != nil {
			return
		}
		again, err := ParseURL(loc.String())
		if err != nil {
			t.Fatalf("ParseURL(%q) ok but its String %q fails: %v", raw, loc.String(), err)
		}
		if again.String() != loc.String() {
			t.Fatalf("not stable: %q -> %q -> %q", raw, loc.String(), again.String())
		}
	})
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"s3://bucket/p?endpoint=https://minio:9000&region=eu", "s3://bucket/p?endpoint=https%3A%2F%2Fminio%3A9000&region=eu"},
		{"s3://AKIA:secret@bucket/p", "s3://REDACTED@bucket/p"},
		{"azure://c/p?sig=secret&account=a", "azure://c/p?account=a&sig=REDACTED"},
		{"https://user:secret@minio:9000", "https://REDACTED@minio:9000"},
		{"s3://bucket/%zz?sig=secret", "(unparsable URL, not shown)"},
	}
	for _, tt := range tests {
		if got := RedactURL(tt.raw); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.raw, got, tt.want)
		}
		if _, err := ParseURL(tt.raw); err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%q) error shows the secret: %v", tt.raw, err)
		}
	}
}
