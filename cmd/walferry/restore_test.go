package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/restore"
	"github.com/walferry/walferry/storage/fs"
)

const restoreTestID = "20261122T101500F"

// restoreRepo makes a filesystem repository holding one small full
// backup and returns its URL, the directory of its objects and the
// backup's files.
func restoreRepo(t *testing.T) (url, root string, files map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	root = filepath.Join(t.TempDir(), "repo")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := fs.New(fs.Config{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cl := repo.Cluster{SystemID: 7310012345678901234, PGMajor: 15, WALSegmentSize: 16 << 20, Source: "test"}
	if _, err := repo.Init(ctx, st, repo.InitOptions{Cluster: cl, Compression: "zstd", CreatedBy: "test"}); err != nil {
		t.Fatal(err)
	}
	r, err := repo.Open(ctx, st, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	files = map[string][]byte{
		"PG_VERSION":        []byte("15\n"),
		"global/pg_control": bytes.Repeat([]byte{7}, 8192),
		"base/1/1259":       bytes.Repeat([]byte("page"), 4096),
		"postgresql.conf":   []byte("port = 5432\n"),
	}
	key := repo.BackupDataKey(restoreTestID, 0)
	var obj bytes.Buffer
	m := &backup.Manifest{FormatVersion: backup.ManifestVersion, ID: restoreTestID, Type: backup.Full, Mode: "local",
		SystemID: cl.SystemID, PGVersionNum: 150004, StopTime: time.Date(2026, 11, 22, 10, 16, 0, 0, time.UTC),
		Timeline: 1, StartLSN: 0x3000028, StopLSN: 0x3000100, StartWAL: "000000010000000000000003", StopWAL: "000000010000000000000003",
		BackupLabel: "START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\n",
		Dirs:        []backup.Dir{{Path: "base", Mode: 0o700}, {Path: "base/1", Mode: 0o700}, {Path: "global", Mode: 0o700}, {Path: "pg_wal", Mode: 0o700}}}
	for _, p := range []string{"PG_VERSION", "base/1/1259", "global/pg_control", "postgresql.conf"} {
		b := files[p]
		sum := sha256.Sum256(b)
		m.Files = append(m.Files, backup.File{Path: p, Size: int64(len(b)), Mode: 0o600, MTime: 1763800000,
			Sums: []string{hex.EncodeToString(sum[:])}, Extents: []backup.Extent{{Off: 0, Len: int64(len(b)), Key: key, At: int64(obj.Len())}}})
		obj.Write(b)
	}
	if _, err := r.Put(ctx, key, bytes.NewReader(obj.Bytes())); err != nil {
		t.Fatal(err)
	}
	if err := backup.WriteManifest(ctx, r, m); err != nil {
		t.Fatal(err)
	}
	return "file://" + root, root, files
}

func TestRestoreUsageErrors(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	dir := t.TempDir()
	repoFlag := []string{"--repo", "file:///nonexistent/repo"}
	tests := []struct {
		name  string
		args  []string
		wants []string
	}{
		{"no backup named", []string{"restore", "--pgdata", dir}, []string{"LATEST"}},
		{"two backups named", []string{"restore", "LATEST", "20261122T101500F", "--pgdata", dir}, []string{"one argument"}},
		{"no data directory", []string{"restore", "LATEST"}, []string{"--pgdata"}},
		{"two targets", []string{"restore", "LATEST", "--pgdata", dir, "--target-lsn", "0/1", "--target-immediate"}, []string{"at most one"}},
		{"bad LSN", []string{"restore", "LATEST", "--pgdata", dir, "--target-lsn", "16-B374D848"}, []string{"--target-lsn", "16/B374D848"}},
		{"bad time", []string{"restore", "LATEST", "--pgdata", dir, "--target-time", "noon"}, []string{"--target-time"}},
		{"bad action", []string{"restore", "LATEST", "--pgdata", dir, "--target-lsn", "0/1", "--target-action", "resume"}, []string{"promote, pause or shutdown"}},
		{"action without target", []string{"restore", "--target-action", "promote", "LATEST", "--pgdata", dir}, []string{"needs a recovery target"}},
		{"bad tablespace map", []string{"restore", "LATEST", "--pgdata", dir, "--tablespace-map", "16385:/srv/ts"}, []string{"OID=DIR"}},
		{"relative tablespace map", []string{"restore", "LATEST", "--pgdata", dir, "--tablespace-map", "ts=rel"}, []string{"absolute"}},
		{"unknown flag after the id", []string{"restore", "LATEST", "--pgdata", dir, "--no-such"}, []string{"no-such"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, append(tt.args, repoFlag...)...)
			expectFailure(t, exitUsage, stderr, code, tt.wants...)
		})
	}
}

func TestRestoreCommand(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	url, root, files := restoreRepo(t)
	dir := filepath.Join(t.TempDir(), "pgdata")

	// Flags after the backup id, as in the usage line.
	code, out, stderr := run(t, "restore", "LATEST", "--pgdata", dir, "--repo", url, "--json", "--target-lsn", "0/3000100", "--target-action", "promote")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	var res restore.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if res.Backup != restoreTestID || res.Files != 4 || res.FilesFetched != 4 || res.ObjectsRead != 1 || res.DataDir != dir {
		t.Errorf("result %+v", res)
	}
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if p == "postgresql.conf" {
			got = got[:min(len(got), len(want))] // and the include line
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %v, content differs: %v", p, err, !bytes.Equal(got, want))
		}
	}
	settings, err := os.ReadFile(filepath.Join(dir, "walferry.conf"))
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	for _, want := range []string{"restore_command = '" + exe + " archive-get --repo " + url + " %f %p'",
		"recovery_target_lsn = '0/3000100'", "recovery_target_action = 'promote'"} {
		if !strings.Contains(string(settings), want) {
			t.Errorf("walferry.conf lacks %q:\n%s", want, settings)
		}
	}
	if res.SettingsFile != filepath.Join(dir, "walferry.conf") || res.ConfigFile != filepath.Join(dir, "postgresql.conf") || !res.IncludeAdded {
		t.Errorf("result: settings %s, config %s, include added %v", res.SettingsFile, res.ConfigFile, res.IncludeAdded)
	}
	if conf, _ := os.ReadFile(filepath.Join(dir, "postgresql.conf")); !strings.HasSuffix(string(conf), "\ninclude_if_exists = 'walferry.conf'\n") {
		t.Errorf("postgresql.conf does not include walferry.conf:\n%s", conf)
	}
	if _, err := os.Stat(filepath.Join(dir, "postgresql.auto.conf")); err == nil {
		t.Error("postgresql.auto.conf written")
	}

	// Again: the directory is not empty now.
	code, _, stderr = run(t, "restore", "LATEST", "--pgdata", dir, "--repo", url)
	expectFailure(t, exitUsage, stderr, code, "not empty", "--delta")

	// With --delta everything is kept (postgresql.conf, to which the
	// include line was appended, is cut back to the backup's bytes); the
	// text summary says so and where the settings are.
	code, out, stderr = run(t, "restore", restoreTestID, "--pgdata", dir, "--repo", url, "--delta", "--standby")
	if code != 0 {
		t.Fatalf("restore --delta: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"restored backup " + restoreTestID, "fetched 0 files", "kept 4 files", "standby.signal",
		"recovery settings in " + filepath.Join(dir, "walferry.conf") + "; " + filepath.Join(dir, "postgresql.conf") + " now includes it"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err == nil {
		t.Error("recovery.signal left next to standby.signal")
	}

	// No such backup.
	code, _, stderr = run(t, "restore", "20200101T000000F", "--pgdata", t.TempDir(), "--repo", url)
	if code == 0 || !strings.Contains(stderr, "no backup 20200101T000000F") {
		t.Errorf("missing backup: exit %d: %s", code, stderr)
	}

	// A corrupt object: exit 6, naming it, and the directory cannot start.
	key := repo.BackupDataKey(restoreTestID, 0)
	damageObject(t, filepath.Join(root, filepath.FromSlash(key)))
	dir2 := t.TempDir()
	code, _, stderr = run(t, "restore", "LATEST", "--pgdata", dir2, "--repo", url)
	expectFailure(t, exitCorrupt, stderr, code, key, restoreTestID, "restore incomplete")
	for _, p := range []string{"backup_label", "global/pg_control", "recovery.signal"} {
		if _, err := os.Stat(filepath.Join(dir2, p)); err == nil {
			t.Errorf("%s exists after a failed restore", p)
		}
	}
}

// TestRestoreConfigFileFlag: --config-file (or WALFERRY_CONFIG_FILE)
// names a postgresql.conf outside the data directory, which gets an
// absolute include; a read-only one without the line is a usage error
// that names the line, before the repository is read.
func TestRestoreConfigFileFlag(t *testing.T) {
	t.Setenv("WALFERRY_REPO", "")
	t.Setenv("PGDATA", "")
	url, _, _ := restoreRepo(t)
	_, help, _ := run(t, "restore", "--help")
	for _, want := range []string{"--config-file PATH", "WALFERRY_CONFIG_FILE", "walferry.conf", "include_if_exists", "--alter-system-reset KEY"} {
		if !strings.Contains(help, want) {
			t.Errorf("restore --help lacks %q", want)
		}
	}

	etc := t.TempDir()
	conf := filepath.Join(etc, "postgresql.conf")
	if err := os.WriteFile(conf, []byte("port = 5433\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(conf, 0o444); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pgdata")
	line := "include_if_exists = '" + filepath.Join(dir, "walferry.conf") + "'"
	// The repository does not exist: the refusal comes before it is read.
	code, _, stderr := run(t, "restore", "LATEST", "--pgdata", dir, "--repo", "file://"+filepath.Join(t.TempDir(), "nowhere"), "--config-file", conf)
	expectFailure(t, exitUsage, stderr, code, conf+" is read-only", line)

	if err := os.Chmod(conf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WALFERRY_CONFIG_FILE", conf)
	code, out, stderr := run(t, "restore", "LATEST", "--pgdata", dir, "--repo", url, "--json")
	if code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	var res restore.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.ConfigFile != conf || !res.IncludeAdded {
		t.Errorf("result: config %s, include added %v", res.ConfigFile, res.IncludeAdded)
	}
	if got, _ := os.ReadFile(conf); !strings.HasSuffix(string(got), "\n"+line+"\n") {
		t.Errorf("%s:\n%s", conf, got)
	}
}
