package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLatestFixed(t *testing.T) {
	r := func(events ...string) osvRange {
		var o osvRange
		o.Type = "SEMVER"
		for _, e := range events {
			kind, v, _ := strings.Cut(e, "=")
			ev := struct {
				Introduced string `json:"introduced,omitempty"`
				Fixed      string `json:"fixed,omitempty"`
			}{}
			if kind == "i" {
				ev.Introduced = v
			} else {
				ev.Fixed = v
			}
			o.Events = append(o.Events, ev)
		}
		return o
	}
	tests := []struct {
		name   string
		ranges []osvRange
		want   string
	}{
		{"one fix", []osvRange{r("i=0", "f=1.2.3")}, "1.2.3"},
		{"two branches", []osvRange{r("i=0", "f=1.26.10", "i=1.27.0-0", "f=1.27.3")}, "1.27.3"},
		{"split ranges", []osvRange{r("i=0", "f=1.26.9"), r("i=1.27.0-0", "f=1.27.2")}, "1.27.2"},
		{"prerelease order", []osvRange{r("i=0", "f=0.0.0-20260101000000-abc"), r("i=0", "f=0.0.0-20250101000000-def")}, "0.0.0-20260101000000-abc"},
		{"no fix", []osvRange{r("i=0")}, ""},
		{"reintroduced", []osvRange{r("i=0", "f=1.0.0", "i=2.0.0")}, ""},
		{"one range unfixed", []osvRange{r("i=0", "f=1.0.0"), r("i=2.0.0")}, ""},
		{"no ranges", nil, ""},
	}
	for _, tt := range tests {
		if got := LatestFixed(tt.ranges); got != tt.want {
			t.Errorf("%s: LatestFixed = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestBuild(t *testing.T) {
	src := t.TempDir()
	entries := map[string]string{
		"GO-2026-0001.json": `{"id":"GO-2026-0001","modified":"0001-01-01T00:00:00Z","aliases":["CVE-1"],"affected":[` +
			`{"package":{"name":"example.com/m","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.2.0"}]}]},` +
			`{"package":{"name":"example.com/m","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"2.0.0"},{"fixed":"2.1.0"}]}]}]}`,
		"GO-2026-0002.json": `{"id":"GO-2026-0002","modified":"2026-10-01T00:00:00Z","affected":[` +
			`{"package":{"name":"stdlib","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}`,
	}
	for name, body := range entries {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "db")
	fallback := time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC)
	n, err := Build(src, out, fallback)
	if err != nil || n != 2 {
		t.Fatalf("Build = %d, %v; want 2 entries", n, err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got, want := read("index/db.json"), `{"modified":"2026-11-05T00:00:00Z"}`; got != want {
		t.Errorf("db.json = %s, want %s", got, want)
	}
	var modules []moduleMeta
	if err := json.Unmarshal([]byte(read("index/modules.json")), &modules); err != nil {
		t.Fatal(err)
	}
	if len(modules) != 2 || modules[0].Path != "example.com/m" || modules[1].Path != "stdlib" {
		t.Fatalf("modules.json = %+v", modules)
	}
	if v := modules[0].Vulns; len(v) != 1 || v[0].ID != "GO-2026-0001" || v[0].Fixed != "2.1.0" || !v[0].Modified.Equal(fallback) {
		t.Errorf("example.com/m vulns = %+v: want GO-2026-0001 once, fixed 2.1.0, modified %v", v, fallback)
	}
	if v := modules[1].Vulns; len(v) != 1 || v[0].Fixed != "" {
		t.Errorf("stdlib vulns = %+v: want no fixed version", v)
	}
	if got := read("index/vulns.json"); !strings.HasPrefix(got, `[{"id":"GO-2026-0001","modified":"2026-11-05T00:00:00Z","aliases":["CVE-1"]}`) {
		t.Errorf("vulns.json = %s", got)
	}
	if got := read("ID/GO-2026-0002.json"); got != entries["GO-2026-0002.json"] {
		t.Errorf("ID/GO-2026-0002.json changed: %s", got)
	}
}
