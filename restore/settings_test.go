package restore

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/repo"
)

// newConfiglessBackup writes a one-file full backup without
// postgresql.conf, as taken from a Debian server (its configuration is
// in /etc/postgresql).
func newConfiglessBackup(t *testing.T, r *repo.Repo) {
	t.Helper()
	ctx := context.Background()
	content := randomBytes(1, 5000)
	o := &object{key: repo.BackupDataKey(parentID, 0)}
	at := o.put(content)
	m := fullManifest(parentID, 0x3000028, 0x3000100)
	m.Dirs = []backup.Dir{{Path: "base", Mode: 0o700}, {Path: "base/1", Mode: 0o700}}
	m.Files = []backup.File{{Path: "base/1/1", Size: 5000, Mode: 0o600, Sums: sums(content), CRCs: crcs(content),
		Extents: []backup.Extent{{Off: 0, Len: 5000, Key: o.key, At: at}}}}
	if _, err := r.Put(ctx, o.key, bytes.NewReader(o.buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	must(t, backup.WriteManifest(ctx, r, m))
}

// TestRestoreConfigFile: where postgresql.conf is and whether walferry
// may add the include line decide before anything is fetched or written.
func TestRestoreConfigFile(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	newConfiglessBackup(t, r)

	// Its postgresql.conf is not in the backup and its location is not
	// given: refused after reading the manifest, before writing anything.
	dir := filepath.Join(t.TempDir(), "pgdata")
	_, err := Run(ctx, r, testOptions(dir))
	t.Logf("no postgresql.conf: %v", err)
	line := "include_if_exists = '" + filepath.Join(dir, "walferry.conf") + "'"
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "has no postgresql.conf") ||
		!strings.Contains(err.Error(), "--config-file") || !strings.HasSuffix(err.Error(), line) {
		t.Errorf("no postgresql.conf: got %v; want ErrInvalid asking for --config-file and ending with %s", err, line)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the data directory was created: %v", err)
	}

	// A read-only postgresql.conf (a ConfigMap) without the line: refused
	// by Validate, which runs before the repository is read, with the
	// exact line; the file is left alone.
	cm := filepath.Join(t.TempDir(), "postgresql.conf")
	must(t, os.WriteFile(cm, []byte("port = 5433\n"), 0o444))
	o := testOptions(dir)
	o.ConfigFile = cm
	err = o.Validate()
	t.Logf("read-only postgresql.conf: %v", err)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, pgconf.ErrNotIncluded) || !strings.Contains(err.Error(), "read-only") ||
		!strings.HasSuffix(err.Error(), ": "+line) {
		t.Errorf("read-only postgresql.conf: got %v; want ErrInvalid, read-only, ending with the line %s", err, line)
	}
	if _, err := Run(ctx, r, o); !errors.Is(err, ErrInvalid) {
		t.Errorf("Run with a read-only postgresql.conf: %v", err)
	}
	if got, _ := os.ReadFile(cm); string(got) != "port = 5433\n" {
		t.Errorf("the read-only file changed: %q", got)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the data directory was created: %v", err)
	}

	// The same file with the line, as the ConfigMap should be: accepted
	// and left alone.
	must(t, os.Chmod(cm, 0o644))
	must(t, os.WriteFile(cm, []byte("port = 5433\n"+line+"\n"), 0o644))
	must(t, os.Chmod(cm, 0o444))
	res, err := Run(ctx, r, o)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(cm); string(got) != "port = 5433\n"+line+"\n" {
		t.Errorf("the read-only file changed: %q", got)
	}
	if res.IncludeAdded || res.ConfigFile != cm || res.SettingsFile != filepath.Join(dir, "walferry.conf") {
		t.Errorf("result: include added %v, config %s, settings %s", res.IncludeAdded, res.ConfigFile, res.SettingsFile)
	}
	if _, err := os.Stat(filepath.Join(dir, "walferry.conf")); err != nil {
		t.Error(err)
	}

	// A --config-file that does not exist.
	o = testOptions(filepath.Join(t.TempDir(), "pgdata"))
	o.ConfigFile = filepath.Join(t.TempDir(), "nowhere", "postgresql.conf")
	if err := o.Validate(); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing --config-file: %v", err)
	}

	// A delta restore over a data directory whose postgresql.conf is
	// read-only (a ConfigMap mounted into it) and lacks the line.
	fx := newFixture(t, r)
	dir = filepath.Join(t.TempDir(), "pgdata")
	o = testOptions(dir)
	o.Backup, o.TablespaceMap = fx.m.ID, []string{"16385=" + t.TempDir()}
	if _, err := Run(ctx, r, o); err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "postgresql.conf"), []byte("port = 5433\n"), 0o600))
	must(t, os.Chmod(filepath.Join(dir, "postgresql.conf"), 0o400))
	o.Delta = true
	if err := o.Validate(); !errors.Is(err, ErrInvalid) || !strings.HasSuffix(err.Error(), "include_if_exists = 'walferry.conf'") {
		t.Errorf("read-only postgresql.conf in the data directory: %v", err)
	}
}

// TestRestoreAutoConfOverride: an ALTER SYSTEM restore_command in the
// backup's postgresql.auto.conf would replace walferry's: the restore
// refuses, and --alter-system-reset restore_command removes it; another
// recovery setting there is a warning.
func TestRestoreAutoConfOverride(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	auto := userAutoConf + "restore_command = 'cp /old/%f %p'\nrecovery_target_time = '2026-11-01 00:00:00+00'\n"
	fx := newFixtureAuto(t, r, []byte(auto))
	dir := filepath.Join(t.TempDir(), "pgdata")
	o := testOptions(dir)
	o.TablespaceMap = []string{"16385=" + t.TempDir()}
	_, err := Run(ctx, r, o)
	t.Logf("restore_command in postgresql.auto.conf: %v", err)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("got %v; want ErrIncomplete", err)
	}
	for _, want := range []string{"postgresql.auto.conf line 4 sets restore_command = 'cp /old/%f %p'", "--delta --alter-system-reset restore_command",
		"ALTER SYSTEM RESET restore_command", fx.m.ID} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	for _, p := range []string{"global/pg_control", backupLabel, recoverySig, pgconf.FileName} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s written by the refused restore", p)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(dir, autoConf)); string(got) != auto {
		t.Errorf("postgresql.auto.conf changed:\n%s", got)
	}

	o.Delta, o.AlterSystemReset = true, []string{"restore_command"}
	res, err := Run(ctx, r, o)
	if err != nil {
		t.Fatal(err)
	}
	fx.restored[autoConf] = []byte(userAutoConf + "recovery_target_time = '2026-11-01 00:00:00+00'\n")
	checkRestored(t, fx, dir)
	if len(res.AutoConfRemoved) != 1 || res.AutoConfRemoved[0] != "restore_command = 'cp /old/%f %p'" {
		t.Errorf("removed from postgresql.auto.conf: %q", res.AutoConfRemoved)
	}
	t.Logf("warnings: %q", res.Warnings)
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "recovery_target_time = '2026-11-01 00:00:00+00'") ||
		!strings.Contains(res.Warnings[0], "ALTER SYSTEM RESET recovery_target_time") {
		t.Errorf("warnings %q; want one naming recovery_target_time and ALTER SYSTEM RESET", res.Warnings)
	}
}
