package pgconf

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/walferry/walferry/internal/testenv"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return string(b)
}

// newDataDir returns Files for a fresh data directory holding
// postgresql.conf with conf (none when conf is "-").
func newDataDir(t *testing.T, conf string) Files {
	t.Helper()
	dir := t.TempDir()
	if conf != "-" {
		must(t, os.WriteFile(filepath.Join(dir, ConfigName), []byte(conf), 0o600))
	}
	return Files{DataDir: dir}
}

func TestWriteSetRemove(t *testing.T) {
	f := newDataDir(t, "")
	f.Origin = "walferry restore of backup 20261122T101500F"
	if got, err := f.Read(); err != nil || got != nil {
		t.Fatalf("Read without walferry.conf: %v, %v", got, err)
	}
	awkward := `/opt/it's here\now 'quoted' %f %p`
	must(t, f.Write([]Setting{{"restore_command", awkward}, {"recovery_target_lsn", "0/3000100"}, {"Recovery_Target_LSN", "0/3000200"}}))
	content := read(t, f.Path())
	if !strings.HasPrefix(content, header) || !strings.Contains(content, "# Written by walferry restore of backup 20261122T101500F.\n") ||
		!strings.HasSuffix(content, "\nrestore_command = '/opt/it''s here\\\\now ''quoted'' %f %p'\nrecovery_target_lsn = '0/3000200'\n") {
		t.Errorf("walferry.conf:\n%s", content)
	}
	if fi, err := os.Stat(f.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	want := []Setting{{"restore_command", awkward}, {"recovery_target_lsn", "0/3000200"}}
	if got, err := f.Read(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Read: %q, %v; want %q", got, err, want)
	}

	// Set one key: the others stay, in place; a new key goes last.
	changed, err := f.Set(Setting{"primary_conninfo", "host=primary passfile=/etc/pgpass"})
	must(t, err)
	want = append(want, Setting{"primary_conninfo", "host=primary passfile=/etc/pgpass"})
	if got, _ := f.Read(); !changed || !reflect.DeepEqual(got, want) {
		t.Errorf("after Set: %q (changed %v); want %q", got, changed, want)
	}
	changed, err = f.Set(Setting{"RECOVERY_TARGET_LSN", "0/4000000"})
	must(t, err)
	want[1].Value = "0/4000000"
	if got, _ := f.Read(); !changed || !reflect.DeepEqual(got, want) {
		t.Errorf("after Set of an existing key: %q (changed %v); want %q", got, changed, want)
	}

	// The same values again: nothing is written.
	before := read(t, f.Path())
	must(t, os.Chmod(f.Path(), 0o640)) // a write would make it 0600 again
	changed, err = f.Set(Setting{"primary_conninfo", "host=primary passfile=/etc/pgpass"})
	if err != nil || changed {
		t.Errorf("Set of the same value: changed %v, %v", changed, err)
	}
	if fi, _ := os.Stat(f.Path()); fi.Mode().Perm() != 0o640 || read(t, f.Path()) != before {
		t.Error("Set of the same value wrote the file")
	}

	// Remove one key: the others stay.
	changed, err = f.Remove("Primary_Conninfo", "primary_slot_name")
	must(t, err)
	if got, _ := f.Read(); !changed || !reflect.DeepEqual(got, want[:2]) {
		t.Errorf("after Remove: %q (changed %v); want %q", got, changed, want[:2])
	}
	if changed, err := f.Remove("primary_conninfo"); err != nil || changed {
		t.Errorf("Remove of a missing key: changed %v, %v", changed, err)
	}

	for _, bad := range []string{"", "bad key", "x = 1", "1st", "k#"} {
		if err := f.Write([]Setting{{bad, "v"}}); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
	if got, _ := f.Read(); !reflect.DeepEqual(got, want[:2]) {
		t.Errorf("a refused Write changed the file: %q", got)
	}
}

// TestWriteOwner: walferry.conf belongs to postgresql.auto.conf's owner,
// or the data directory's when there is none.
func TestWriteOwner(t *testing.T) {
	testenv.Root(t)
	f := newDataDir(t, "")
	must(t, os.Chown(f.DataDir, 4242, 4243))
	must(t, f.Write([]Setting{{"restore_command", "x"}}))
	checkOwner(t, f.Path(), 4242, 4243)
	must(t, os.WriteFile(f.AutoConfPath(), nil, 0o600))
	must(t, os.Chown(f.AutoConfPath(), 5252, 5253))
	must(t, f.Write([]Setting{{"restore_command", "y"}}))
	checkOwner(t, f.Path(), 5252, 5253)
}

func checkOwner(t *testing.T, p string, uid, gid int) {
	t.Helper()
	fi, err := os.Stat(p)
	must(t, err)
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
	}
}

func TestEnsureInclude(t *testing.T) {
	f := newDataDir(t, "port = 5433") // no final newline
	added, err := f.EnsureInclude()
	if err != nil || !added {
		t.Fatalf("EnsureInclude: %v, %v", added, err)
	}
	want := "port = 5433\n" + IncludeComment + "include_if_exists = 'walferry.conf'\n"
	if got := read(t, f.ConfigPath()); got != want {
		t.Errorf("postgresql.conf:\n%s\nwant\n%s", got, want)
	}
	// Twice: still one include line.
	added, err = f.EnsureInclude()
	if err != nil || added {
		t.Errorf("second EnsureInclude: %v, %v", added, err)
	}
	if got := read(t, f.ConfigPath()); got != want {
		t.Errorf("postgresql.conf after a second EnsureInclude:\n%s", got)
	}
	must(t, f.CheckInclude())

	// Lines that already include it, however written.
	for _, line := range []string{
		"include_if_exists = 'walferry.conf'",
		"include 'walferry.conf'  # walferry",
		"INCLUDE_IF_EXISTS='" + filepath.Join(f.DataDir, "walferry.conf") + "'",
		"include_if_exists = './sub/../walferry.conf'",
	} {
		must(t, os.WriteFile(f.ConfigPath(), []byte("port = 1\n"+line+"\n"), 0o600))
		if added, err := f.EnsureInclude(); err != nil || added {
			t.Errorf("%q: EnsureInclude added %v, %v", line, added, err)
		}
	}
	// Lines that do not.
	for _, line := range []string{
		"# include_if_exists = 'walferry.conf'",
		"include_if_exists = 'other.conf'",
		"include_dir = 'walferry.conf'",
		"include_if_exists = 'walferry.conf", // unterminated
	} {
		must(t, os.WriteFile(f.ConfigPath(), []byte(line+"\n"), 0o600))
		if added, err := f.EnsureInclude(); err != nil || !added {
			t.Errorf("%q: EnsureInclude added %v, %v", line, added, err)
		}
	}
}

// TestEnsureIncludeElsewhere: a postgresql.conf outside the data
// directory (Debian's /etc/postgresql/15/main) includes walferry.conf by
// its absolute path; a relative line that reaches it counts.
func TestEnsureIncludeElsewhere(t *testing.T) {
	root := t.TempDir()
	data, etc := filepath.Join(root, "data"), filepath.Join(root, "etc")
	must(t, os.Mkdir(data, 0o700))
	must(t, os.Mkdir(etc, 0o755))
	f := Files{DataDir: data, ConfigFile: filepath.Join(etc, ConfigName)}
	must(t, os.WriteFile(f.ConfigFile, []byte("data_directory = '"+data+"'\n"), 0o644))
	line := "include_if_exists = '" + filepath.Join(data, FileName) + "'"
	if f.IncludeLine() != line {
		t.Errorf("IncludeLine() = %s, want %s", f.IncludeLine(), line)
	}
	if added, err := f.EnsureInclude(); err != nil || !added {
		t.Fatalf("EnsureInclude: %v, %v", added, err)
	}
	if got := read(t, f.ConfigFile); !strings.HasSuffix(got, "\n"+line+"\n") {
		t.Errorf("%s:\n%s", f.ConfigFile, got)
	}
	must(t, os.WriteFile(f.ConfigFile, []byte("include_if_exists = '../data/walferry.conf'\n"), 0o644))
	if added, err := f.EnsureInclude(); err != nil || added {
		t.Errorf("relative include reaching walferry.conf: added %v, %v", added, err)
	}
	// A relative line naming the data directory's walferry.conf from
	// elsewhere does not reach it.
	must(t, os.WriteFile(f.ConfigFile, []byte("include_if_exists = 'walferry.conf'\n"), 0o644))
	if added, err := f.EnsureInclude(); err != nil || !added {
		t.Errorf("relative include of etc/walferry.conf: added %v, %v", added, err)
	}
}

// TestEnsureIncludeKeepsFile: the rewritten postgresql.conf keeps its
// mode and owner, and a symlink to it stays a symlink.
func TestEnsureIncludeKeepsFile(t *testing.T) {
	root := t.TempDir()
	data := filepath.Join(root, "data")
	must(t, os.Mkdir(data, 0o700))
	real := filepath.Join(root, "conf", "postgresql.conf")
	must(t, os.Mkdir(filepath.Dir(real), 0o755))
	must(t, os.WriteFile(real, []byte("port = 1\n"), 0o640))
	must(t, os.Chmod(real, 0o640))
	root0 := os.Geteuid() == 0
	if root0 {
		must(t, os.Chown(real, 4242, 4243))
	}
	link := filepath.Join(data, ConfigName)
	must(t, os.Symlink(real, link))
	f := Files{DataDir: data}
	if added, err := f.EnsureInclude(); err != nil || !added {
		t.Fatalf("EnsureInclude: %v, %v", added, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("%s is no longer a symlink: %v", link, err)
	}
	// Included from the link's directory: the data directory.
	if got := read(t, real); got != "port = 1\n"+IncludeComment+"include_if_exists = 'walferry.conf'\n" {
		t.Errorf("%s:\n%s", real, got)
	}
	if fi, _ := os.Stat(real); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if root0 {
		checkOwner(t, real, 4242, 4243)
	}
	if entries, _ := os.ReadDir(filepath.Dir(real)); len(entries) != 1 {
		t.Errorf("temporary file left: %v", entries)
	}
}

// TestIncludeReadOnly: a postgresql.conf walferry may not write is left
// alone, and the error gives the exact line.
func TestIncludeReadOnly(t *testing.T) {
	f := newDataDir(t, "port = 1\n")
	must(t, os.Chmod(f.ConfigPath(), 0o444))
	for _, call := range []func() error{
		f.CheckInclude,
		func() error { _, err := f.EnsureInclude(); return err },
	} {
		err := call()
		var ie *IncludeError
		if !errors.As(err, &ie) || !errors.Is(err, ErrNotIncluded) || ie.Missing || ie.Line != "include_if_exists = 'walferry.conf'" {
			t.Fatalf("got %v; want an IncludeError with the line", err)
		}
		want := f.ConfigPath() + " is read-only (mode 0444) and does not include walferry.conf: add this line at its end " +
			"(walferry's settings then win over the ones above it): include_if_exists = 'walferry.conf'"
		if err.Error() != want {
			t.Errorf("error:\n%s\nwant\n%s", err, want)
		}
	}
	if got := read(t, f.ConfigPath()); got != "port = 1\n" {
		t.Errorf("the read-only file changed: %q", got)
	}
	// Read-only and already including it: fine, untouched.
	must(t, os.Chmod(f.ConfigPath(), 0o644))
	must(t, os.WriteFile(f.ConfigPath(), []byte("port = 1\ninclude_if_exists = 'walferry.conf'\n"), 0o644))
	must(t, os.Chmod(f.ConfigPath(), 0o444))
	if added, err := f.EnsureInclude(); err != nil || added {
		t.Errorf("read-only with the line: added %v, %v", added, err)
	}
}

// TestIncludeMissing: no postgresql.conf where it was looked for.
func TestIncludeMissing(t *testing.T) {
	f := newDataDir(t, "-")
	err := f.CheckInclude()
	var ie *IncludeError
	if !errors.As(err, &ie) || !ie.Missing || !ie.Unlocated {
		t.Fatalf("got %v; want a missing, unlocated IncludeError", err)
	}
	line := "include_if_exists = '" + filepath.Join(f.DataDir, FileName) + "'"
	want := "postgresql.conf is not in the data directory " + f.DataDir + " and its location was not given: " +
		"PostgreSQL must read walferry's settings, with this line at the end of postgresql.conf: " + line
	if err.Error() != want {
		t.Errorf("error:\n%s\nwant\n%s", err, want)
	}
	f.ConfigFile = filepath.Join(t.TempDir(), "postgresql.conf")
	if _, err := f.EnsureInclude(); !errors.As(err, &ie) || !ie.Missing || ie.Unlocated || !strings.HasSuffix(err.Error(), ": "+line) {
		t.Errorf("missing --config-file: %v", err)
	}
	if _, err := os.Stat(f.ConfigFile); err == nil {
		t.Error("a missing postgresql.conf was created")
	}
}
