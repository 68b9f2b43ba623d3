package restore

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/pgconf"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		must(t, os.MkdirAll(filepath.Dir(path), 0o755))
		must(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

// awkward is a restore_command whose every part needs quoting.
var awkward = RestoreCommand{
	Executable: "/opt/wal ferry/it's/walferry",
	Repos:      []string{"s3://bucket/db?endpoint=http://minio:9000&path-style=true", `file:///mnt/nfs/back\slash $HOME`},
	Config:     "/etc/wal'ferry.yaml",
}

// TestSettingsGolden writes the recovery settings of a few restores into
// walferry.conf.
func TestSettingsGolden(t *testing.T) {
	tests := []struct {
		name   string
		rc     RestoreCommand
		target Target
	}{
		{"fresh", awkward, Target{Time: "2026-11-22 10:15:00+00", Action: "promote"}},
		{"exclusive", RestoreCommand{Executable: "/usr/local/bin/walferry", Repos: []string{"file:///backups/db"}}, Target{LSN: "0/3000100", Exclusive: true, Timeline: "2"}},
		{"immediate", RestoreCommand{Executable: "/usr/bin/walferry", Repos: []string{"gs://b/p"}, PassphraseFile: "/etc/walferry/pass"}, Target{Immediate: true, Action: "shutdown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{DataDir: t.TempDir(), RestoreCommand: tt.rc, Target: tt.target}
			conf := o.conf()
			conf.Origin = "walferry restore of backup 20261122T101500F at 2026-11-23 08:00:00Z"
			must(t, conf.Write(o.recoverySettings()))
			got, err := os.ReadFile(conf.Path())
			must(t, err)
			golden(t, "walferryconf/"+tt.name+".conf", string(got))
		})
	}
}

// confUnquote reads a postgresql.conf quoted value the way PostgreSQL's
// configuration scanner does.
func confUnquote(t *testing.T, v string) string {
	t.Helper()
	if len(v) < 2 || v[0] != '\'' || v[len(v)-1] != '\'' {
		t.Fatalf("not a quoted value: %s", v)
	}
	v = v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v):
			i++
			b.WriteByte(v[i])
		case v[i] == '\'' && i+1 < len(v) && v[i+1] == '\'':
			i++
			b.WriteByte('\'')
		case v[i] == '\'':
			t.Fatalf("lone quote in %s", v)
		default:
			b.WriteByte(v[i])
		}
	}
	return b.String()
}

// TestRestoreCommandShell writes restore_command for a binary whose path
// has a space and a quote, reads the value back as PostgreSQL would, and
// runs it with /bin/sh: the program gets exactly the intended arguments.
func TestRestoreCommandShell(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "it's a dir")
	must(t, os.MkdirAll(dir, 0o755))
	exe := filepath.Join(dir, "wal ferry")
	must(t, os.WriteFile(exe, []byte("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n"), 0o755))
	rc := awkward
	rc.Executable = exe
	line := pgconf.Setting{Key: "restore_command", Value: rc.commandLine()}.String()
	k, v, _ := strings.Cut(line, " = ")
	if k != "restore_command" {
		t.Fatalf("line %q", line)
	}
	value := confUnquote(t, v)
	// PostgreSQL replaces %f and %p, then runs the line with /bin/sh -c.
	cmdLine := strings.NewReplacer("%f", "000000010000000000000003", "%p", "pg_wal/RECOVERYXLOG").Replace(value)
	out, err := exec.Command("/bin/sh", "-c", cmdLine).Output()
	if err != nil {
		t.Fatalf("sh -c %s: %v", cmdLine, err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	want := []string{"archive-get", "--repo", awkward.Repos[0], "--repo", awkward.Repos[1], "--config", awkward.Config,
		"000000010000000000000003", "pg_wal/RECOVERYXLOG"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the program got\n%q\nwant\n%q", got, want)
	}
}

func TestTablespaceMapFile(t *testing.T) {
	in := "16385 /srv/ts one\n16386 /srv/we\\\\ird\\\nname\n16387 /srv/c\r\n"
	lines, err := parseTablespaceMapFile(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []tablespaceMapLine{{"16385", "/srv/ts one"}, {"16386", "/srv/we\\ird\nname"}, {"16387", "/srv/c"}}
	if !reflect.DeepEqual(lines, want) {
		t.Fatalf("parsed %q, want %q", lines, want)
	}
	if out := formatTablespaceMap(lines); out != "16385 /srv/ts one\n16386 /srv/we\\\\ird\\\nname\n16387 /srv/c\n" {
		t.Errorf("formatted %q", out)
	}
	for _, bad := range []string{"16385\n", "abc /x\n"} {
		if _, err := parseTablespaceMapFile(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/usr/bin/walferry": "/usr/bin/walferry",
		"s3://b/p?x=1&y=2":  "'s3://b/p?x=1&y=2'",
		"it's":              `'it'\''s'`,
		"":                  "''",
		"$HOME":             "'$HOME'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestRestoreCommandSocket: with a socket the hook is told where the
// sidecar's daemon listens, before %f %p.
func TestRestoreCommandSocket(t *testing.T) {
	rc := RestoreCommand{Executable: "/walferry/bin/walferry-hook", Repos: []string{"file:///repo"}, Socket: "/run/walferry/my sock"}
	got := rc.commandLine()
	want := `/walferry/bin/walferry-hook archive-get --repo file:///repo --socket '/run/walferry/my sock' %f %p`
	if got != want {
		t.Errorf("commandLine()\n got %s\nwant %s", got, want)
	}
}
