package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBootstrapHelp(t *testing.T) {
	code, out, _ := run(t, "bootstrap", "--help")
	if code != 0 {
		t.Fatalf("bootstrap --help: exit %d", code)
	}
	for _, want := range []string{"--from", "--source-conn", "WALFERRY_SOURCE_CONN", "--slot", "WALFERRY_SLOT", "--no-slot",
		"--install-bin", "--reinit", "--auto-max-wal-ratio", "--socket", "--json", "left alone", "passfile"} {
		if !strings.Contains(out, want) {
			t.Errorf("bootstrap --help does not mention %s", want)
		}
	}
}

// TestBootstrapUsage: mistakes are refused with exit 2 before any work.
func TestBootstrapUsage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pgdata")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing to copy from", []string{"bootstrap", "--pgdata", dir}, "--source-conn"},
		{"bad --from", []string{"bootstrap", "--pgdata", dir, "--from", "tape", "--source-conn", "host=h"}, "--from"},
		{"inline password", []string{"bootstrap", "--pgdata", dir, "--from", "primary", "--source-conn", "host=h password=s3cret"}, "passfile"},
		{"bad slot", []string{"bootstrap", "--pgdata", dir, "--from", "primary", "--source-conn", "host=h", "--slot", "Bad-Slot"}, "--slot"},
		{"repo without --repo", []string{"bootstrap", "--pgdata", dir, "--from", "repo"}, "--repo"},
		{"an argument", []string{"bootstrap", "--pgdata", dir, "extra"}, "no arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, tt.args...)
			if code != 2 || !strings.Contains(stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want 2 mentioning %s", code, stderr, tt.want)
			}
			if strings.Contains(stderr, "s3cret") {
				t.Errorf("the password is in the message: %q", stderr)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Error("the data directory was created")
			}
		})
	}
}
