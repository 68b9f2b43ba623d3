package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pushPartial archives a .partial of segment segNo holding n random bytes
// (the received prefix) through archive-push, and returns the segment's
// name and the prefix.
func pushPartial(t *testing.T, e hookEnv, segNo, n int) (string, []byte) {
	t.Helper()
	name, data := writeSegment(t, e.dataDir, segNo)
	walDir := filepath.Join(e.dataDir, "pg_wal")
	os.Remove(filepath.Join(walDir, "archive_status", name+".ready"))
	os.Remove(filepath.Join(walDir, name))
	prefix := data[:n]
	if err := os.WriteFile(filepath.Join(walDir, name+".partial"), prefix, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := run(t, "archive-push", "--repo", e.repoURL, "--ahead", "0", "pg_wal/"+name+".partial"); code != 0 {
		t.Fatalf("archive-push of %s.partial: code %d, stderr %q", name, code, stderr)
	}
	return name, prefix
}

// checkPadded asserts that path holds prefix, then zeros up to a segment.
func checkPadded(t *testing.T, path string, prefix []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte(nil), prefix...), make([]byte, hookSegmentBytes-len(prefix))...)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %d bytes, not the partial's %d then zeros up to %d", path, len(got), len(prefix), hookSegmentBytes)
	}
}

// setPartialEnv sets WALFERRY_ARCHIVE_PARTIAL, or unsets it for "" (set
// but empty, urfave/cli reads it as false), until the test ends.
func setPartialEnv(t *testing.T, v string) {
	t.Helper()
	t.Setenv("WALFERRY_ARCHIVE_PARTIAL", v)
	if v == "" {
		os.Unsetenv("WALFERRY_ARCHIVE_PARTIAL")
	}
}

// TestArchiveGetPartialFlag: archive-get serves a .partial only with
// --partial, WALFERRY_ARCHIVE_PARTIAL or archive.partial (the flag winning
// over the environment, the environment over the file), standalone or
// through the daemon; a bad value exits 1 like every archive-get failure.
func TestArchiveGetPartialFlag(t *testing.T) {
	e := newHookEnv(t)
	setPartialEnv(t, "")
	name, prefix := pushPartial(t, e, 0x21, 5000)
	dest := filepath.Join(e.dataDir, "pg_wal", "RECOVERYXLOG")
	conf := filepath.Join(t.TempDir(), "walferry.yaml")
	if err := os.WriteFile(conf, []byte("archive:\n  partial: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	get := func(t *testing.T, env string, args ...string) (int, string, string) {
		t.Helper()
		os.Remove(dest)
		setPartialEnv(t, env)
		return run(t, append(append([]string{"archive-get", "--repo", e.repoURL}, args...), name, "pg_wal/RECOVERYXLOG")...)
	}
	for _, tt := range []struct {
		name    string
		env     string
		args    []string
		partial bool
	}{
		{"default", "", nil, false},
		{"flag", "", []string{"--partial"}, true},
		{"environment", "true", nil, true},
		{"flag over environment", "true", []string{"--partial=false"}, false},
		{"file", "", []string{"--config", conf}, true},
		{"environment over file", "false", []string{"--config", conf}, false},
		{"flag over file", "", []string{"--config", conf, "--partial=false"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := get(t, tt.env, tt.args...)
			if !tt.partial {
				if code != 1 || out != "" || stderr != "" {
					t.Fatalf("code %d, stdout %q, stderr %q; want 1 quietly (not archived)", code, out, stderr)
				}
				if _, err := os.Stat(dest); !os.IsNotExist(err) {
					t.Fatalf("%s written without --partial (%v)", dest, err)
				}
				return
			}
			if code != 0 || out != "" || stderr != "" {
				t.Fatalf("code %d, stdout %q, stderr %q; want 0 quietly", code, out, stderr)
			}
			checkPadded(t, dest, prefix)
		})
	}

	t.Run("neither", func(t *testing.T) {
		os.Remove(dest)
		setPartialEnv(t, "")
		missing := fmt.Sprintf("00000001%08X%08X", 0, 0x22)
		code, out, stderr := run(t, "archive-get", "--repo", e.repoURL, "--partial", missing, "pg_wal/RECOVERYXLOG")
		if code != 1 || out != "" || stderr != "" {
			t.Errorf("code %d, stdout %q, stderr %q; want 1 quietly", code, out, stderr)
		}
	})

	t.Run("bad values", func(t *testing.T) {
		code, _, stderr := get(t, "", "--partial=maybe")
		expectFailure(t, exitFailure, stderr, code, "maybe")
		code, _, stderr = get(t, "maybe")
		expectFailure(t, exitFailure, stderr, code, "WALFERRY_ARCHIVE_PARTIAL")
	})

	t.Run("daemon", func(t *testing.T) {
		setPartialEnv(t, "")
		sock := socketPath(t)
		stop := runDaemon(t, "--socket", sock, "--pgdata", e.dataDir, "--repo", e.repoURL)
		waitSocket(t, sock)
		os.Remove(dest)
		// No --repo: only the daemon can serve these.
		code, _, stderr := run(t, "archive-get", "--socket", sock, name, "pg_wal/RECOVERYXLOG")
		if code != 1 || stderr != "" {
			t.Fatalf("archive-get through the daemon without --partial: code %d, stderr %q; want 1 quietly", code, stderr)
		}
		code, _, stderr = run(t, "archive-get", "--socket", sock, "--log-level", "info", "--partial", name, "pg_wal/RECOVERYXLOG")
		if code != 0 || stderr != "" {
			t.Fatalf("archive-get --partial through the daemon: code %d, stderr %q", code, stderr)
		}
		checkPadded(t, dest, prefix)
		if code, logs := stop(); code != 0 {
			t.Errorf("daemon exit %d:\n%s", code, logs)
		}
	})
}

// TestRestoreUsePartial: restore --use-partial puts --partial into
// restore_command; without it restore_command has none; a bad value is a
// usage error (2).
func TestRestoreUsePartial(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	url, _, _ := restoreRepo(t)
	exe, _ := os.Executable()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "restore_command = '" + exe + " archive-get --repo " + url + " %f %p'"},
		{[]string{"--use-partial"}, "restore_command = '" + exe + " archive-get --repo " + url + " --partial %f %p'"},
	} {
		dir := filepath.Join(t.TempDir(), "pgdata")
		code, _, stderr := run(t, append([]string{"restore", "LATEST", "--pgdata", dir, "--repo", url}, tt.args...)...)
		if code != 0 {
			t.Fatalf("restore %v: exit %d: %s", tt.args, code, stderr)
		}
		settings, err := os.ReadFile(filepath.Join(dir, "walferry.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(settings), tt.want+"\n") {
			t.Errorf("restore %v: walferry.conf lacks %q:\n%s", tt.args, tt.want, settings)
		}
	}
	code, _, stderr := run(t, "restore", "LATEST", "--pgdata", t.TempDir(), "--repo", url, "--use-partial=sometimes")
	expectFailure(t, exitUsage, stderr, code, "sometimes")
}
