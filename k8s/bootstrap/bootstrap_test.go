package bootstrap

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
)

func TestDecide(t *testing.T) {
	const gib = 1 << 30
	backup := &candidate{ID: "20261206T080000F", Bytes: 10 * gib, StopLSN: pg.LSN(100 * gib)}
	src := func(lsn int64) *replication.System { return &replication.System{XLogPos: pg.LSN(lsn)} }
	tests := []struct {
		name     string
		b        *candidate
		source   *replication.System
		want     string
		wantWAL  int64
		wantKind failure.Kind
	}{
		{"little WAL since: repository", backup, src(100*gib + 2*gib), FromRepo, 2 * gib, 0},
		{"exactly the ratio: repository", backup, src(100*gib + 5*gib), FromRepo, 5 * gib, 0},
		{"much WAL since: primary", backup, src(100*gib + 6*gib), FromPrimary, 6 * gib, 0},
		{"source behind the backup: repository", backup, src(90 * gib), FromRepo, 0, 0},
		{"no backup: primary", nil, src(gib), FromPrimary, 0, 0},
		{"no source: repository", backup, nil, FromRepo, 0, 0},
		{"neither: no backup error", nil, nil, "", 0, failure.NoBackup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := decide(tt.b, tt.source, 0.5)
			if tt.wantKind != 0 {
				if err == nil || failure.Of(err) != tt.wantKind {
					t.Fatalf("err = %v, want kind %v", err, tt.wantKind)
				}
				if !strings.Contains(err.Error(), "--source-conn") {
					t.Errorf("error does not name the fix: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.From != tt.want || d.WALSinceBytes != tt.wantWAL {
				t.Errorf("decide = from %s, WAL since %d (%s); want %s, %d", d.From, d.WALSinceBytes, d.Reason, tt.want, tt.wantWAL)
			}
			if d.Reason == "" || d.MaxRatio != 0.5 {
				t.Errorf("decision without its reason or threshold: %+v", d)
			}
		})
	}
}

func TestDefaultSlotName(t *testing.T) {
	for in, want := range map[string]string{
		"site-b-0":              "walferry_site_b_0",
		"PG.Example.COM":        "walferry_pg_example_com",
		strings.Repeat("x", 80): "walferry_" + strings.Repeat("x", 54),
	} {
		got := DefaultSlotName(in)
		if got != want {
			t.Errorf("DefaultSlotName(%q) = %q, want %q", in, got, want)
		}
		if err := replication.ValidSlotName(got); err != nil {
			t.Errorf("DefaultSlotName(%q) = %q: %v", in, got, err)
		}
	}
}

func TestClassify(t *testing.T) {
	control, err := os.ReadFile("../../internal/pg/testdata/pg15-default.pg_control")
	if err != nil {
		t.Fatal(err)
	}
	write := func(t *testing.T, dir string, files map[string][]byte) {
		for name, b := range files {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		files   map[string][]byte
		missing bool
		want    dirKind
		entries []string
	}{
		{name: "missing", missing: true, want: dirEmpty},
		{name: "empty", want: dirEmpty},
		{name: "mount point", files: map[string][]byte{"lost+found/x": nil}, want: dirEmpty},
		{name: "valid", files: map[string][]byte{"PG_VERSION": []byte("15\n"), "global/pg_control": control}, want: dirValid},
		{name: "no pg_control", files: map[string][]byte{"PG_VERSION": []byte("15\n"), "base/1/1259": nil}, want: dirHalf},
		{name: "only base", files: map[string][]byte{"base/1/1259": nil}, want: dirHalf},
		{name: "marker", files: map[string][]byte{MarkerName: []byte(`{"from":"repo","backup":"B1"}`), "PG_VERSION": []byte("15\n"), "global/pg_control": control}, want: dirHalf},
		{name: "junk", files: map[string][]byte{"notes.txt": nil, "data/x": nil}, want: dirJunk, entries: []string{"data", "notes.txt"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pgdata")
			if !tt.missing {
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				write(t, dir, tt.files)
			}
			st, err := classify(dir)
			if err != nil {
				t.Fatal(err)
			}
			if st.Kind != tt.want {
				t.Fatalf("classify = %s, want %s", st.Kind, tt.want)
			}
			if tt.want == dirValid && st.Control.SystemIdentifier == 0 {
				t.Error("valid directory without its system identifier")
			}
			if tt.name == "marker" && (st.Marker == nil || st.Marker.Backup != "B1" || st.Marker.From != FromRepo) {
				t.Errorf("marker = %+v", st.Marker)
			}
			if tt.entries != nil && !reflect.DeepEqual(st.Entries, tt.entries) {
				t.Errorf("entries = %q, want %q", st.Entries, tt.entries)
			}
		})
	}
}

// TestRunRefusesWithoutTouching: refusals leave the directory as it was.
func TestRunRefusesWithoutTouching(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), Options{DataDir: dir, From: FromPrimary, SourceConn: "host=/nonexistent", Slot: "walferry_x"})
	if err == nil || failure.Of(err) != failure.Usage || !strings.Contains(err.Error(), "notes.txt") || !strings.Contains(err.Error(), "--reinit") {
		t.Fatalf("err = %v, want a usage error listing notes.txt and naming --reinit", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "notes.txt")); string(b) != "mine" {
		t.Error("notes.txt changed")
	}
	_, err = Run(context.Background(), Options{DataDir: dir, From: FromPrimary, SourceConn: "host=h password=x", Slot: "walferry_x"})
	if err == nil || failure.Of(err) != failure.Usage || !strings.Contains(err.Error(), "passfile") {
		t.Fatalf("inline password: err = %v", err)
	}
	_, err = Run(context.Background(), Options{DataDir: dir, From: FromRepo})
	if err == nil || failure.Of(err) != failure.Usage {
		t.Fatalf("--from repo without a repository: err = %v", err)
	}
}

// TestInstall copies walferry and the hook next to it, mode 0755, and
// restore_command runs the hook when a socket is given.
func TestInstall(t *testing.T) {
	src := t.TempDir()
	for name, body := range map[string]string{WalferryName: "walferry binary", HookName: "hook binary"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(t.TempDir(), "shared", "bin")
	b := &bootstrapper{o: Options{InstallBin: bin, Executable: filepath.Join(src, WalferryName)}, log: slog.New(slog.DiscardHandler)}
	if err := b.install(); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{WalferryName: "walferry binary", HookName: "hook binary"} {
		p := filepath.Join(bin, name)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != body {
			t.Errorf("%s: %q, %v", p, got, err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v (%v), want 0755", p, fi.Mode(), err)
		}
	}
	if got := b.restoreCommand().Executable; got != filepath.Join(bin, WalferryName) {
		t.Errorf("without a socket restore_command runs %s", got)
	}
	b.o.RestoreCommand.Socket = "/run/walferry/walferry.sock"
	rc := b.restoreCommand()
	if rc.Executable != filepath.Join(bin, HookName) || !strings.Contains(rc.Line(), "--socket /run/walferry/walferry.sock") {
		t.Errorf("with a socket restore_command is %s", rc.Line())
	}
	// Without the hook next to walferry the install fails, naming why.
	os.Remove(filepath.Join(src, HookName))
	if err := b.install(); err == nil || !strings.Contains(err.Error(), "next to walferry") {
		t.Errorf("install without the hook: %v", err)
	}
}
