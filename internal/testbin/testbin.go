// Package testbin builds the walferry binary once per test process, for
// integration tests whose PostgreSQL runs it as archive_command or
// restore_command.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	once  sync.Once
	built string
	err   error
)

// Walferry returns the path of a walferry binary built from this checkout.
// The binary and its directory are readable and executable by everyone
// (PostgreSQL runs it as the postgres user); it is removed by Cleanup, which
// TestMain should call after m.Run.
func Walferry(t testing.TB) string {
	t.Helper()
	path, err := Build()
	if err != nil {
		t.Fatalf("testbin: build walferry: %v", err)
	}
	return path
}

// Build is Walferry for a TestMain: it builds once and returns the path.
func Build() (string, error) {
	once.Do(func() { built, err = build() })
	return built, err
}

// Cleanup removes the built binary, if any.
func Cleanup() {
	if built != "" {
		os.RemoveAll(filepath.Dir(built))
	}
}

func build() (string, error) {
	dir, err := os.MkdirTemp("", "walferry-testbin-")
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	// walferry-hook beside walferry, as make build and the image put
	// them: the hook execs the walferry next to it, bootstrap
	// --install-bin copies both.
	out := filepath.Join(dir, "walferry")
	cmd := exec.Command(goCmd, "build", "-trimpath", "-o", dir+"/", "github.com/walferry/walferry/cmd/walferry", "github.com/walferry/walferry/cmd/walferry-hook")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w\n%s", err, b)
	}
	if err := os.Chmod(filepath.Join(dir, "walferry-hook"), 0o755); err != nil {
		return "", err
	}
	return out, os.Chmod(out, 0o755)
}
