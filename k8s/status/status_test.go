package status

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time {
	t := now.Add(-d)
	return &t
}

// healthyPrimary is a report Diagnose finds nothing wrong in.
func healthyPrimary() Report {
	r := New(now)
	r.Role, r.Timeline = RolePrimary, 1
	r.Postgres = Postgres{Reachable: true, Version: "15.4", SystemID: "7310012345678901234", CurrentLSN: "0/5000060"}
	r.Archive = Archive{LastArchived: "000000010000000000000004", LastArchivedAt: at(time.Hour), AgeSeconds: 3600, ArchiveMode: "on"}
	r.Backup = Backup{Checked: true, Count: 2, LastID: "20261205T000000F", LastType: "full", LastStoppedAt: at(36 * time.Hour)}
	r.Sidecar = Sidecar{Reachable: true, Address: "127.0.0.1:9898"}
	r.Slots = []Slot{{Name: "site_b", Where: "local", Active: true, RetainedBytes: 16 << 20, WALStatus: "reserved"}}
	return r
}

func TestDiagnoseRules(t *testing.T) {
	tests := []struct {
		name   string
		change func(r *Report)
		want   []Problem // What and Next are checked to contain these
	}{
		{"healthy, idle primary with an old last archived segment", func(r *Report) {
			r.Archive.LastArchivedAt, r.Archive.AgeSeconds = at(48*time.Hour), 48*3600
		}, nil},
		{"postgres down", func(r *Report) {
			*r = New(now)
			r.DataDir = "/pgdata"
			r.Postgres.Error = "connection refused"
		}, []Problem{{Critical, "PostgreSQL does not answer: connection refused", "pg_ctl start -D /pgdata"}}},
		{"archiver failing with the daemon's error", func(r *Report) {
			r.Archive.Failing, r.Archive.FailedCount = true, 7
			r.Archive.LastFailed, r.Archive.LastFailedAt = "000000010000000000000005", at(time.Minute)
			r.Archive.LastError = "s3: put: AccessDenied\nmore"
		}, []Problem{{Critical, "000000010000000000000005 failed 1m0s ago (7 failures so far): s3: put: AccessDenied", "walferry repo check"}}},
		{"archiver failing, error unknown", func(r *Report) {
			r.Archive.Failing, r.Archive.LastFailed = true, "000000010000000000000005"
		}, []Problem{{Critical, "archiving fails: 000000010000000000000005", "PostgreSQL's log"}}},
		{"archiving stalled with segments waiting", func(r *Report) {
			r.Archive.Pending, r.Archive.PendingAgeSeconds = 3, 1200
		}, []Problem{{Critical, "3 completed WAL segment(s) wait", "archive_command"}}},
		{"segments waiting, not for long", func(r *Report) {
			r.Archive.Pending, r.Archive.PendingAgeSeconds = 1, 10
		}, nil},
		{"standby stuck on a missing segment", func(r *Report) {
			r.Role, r.Mode = RoleStandby, ModeArchive
			r.Replication = &Replication{}
			r.Archive.MissingSegment = "00000002000000000000000A"
		}, []Problem{{Critical, "00000002000000000000000A, which no repository holds", "walferry archive-get 00000002000000000000000A /tmp/00000002000000000000000A"}}},
		{"slot over the cap", func(r *Report) {
			r.Slots[0].RetainedBytes, r.Slots[0].Active = 12<<30, false
		}, []Problem{{Warning, "slot site_b (local, inactive) holds 12 GiB of WAL (limit 10 GiB)", "SELECT pg_drop_replication_slot('site_b') on this server if that standby is gone, or set max_slot_wal_keep_size"}}},
		{"upstream slot lost", func(r *Report) {
			r.Slots = append(r.Slots, Slot{Name: "leader_b", Where: "upstream", WALStatus: "lost", RetainedBytes: 20 << 30})
		}, []Problem{{Critical, "leader_b (upstream) lost WAL", "walferry bootstrap"}}},
		{"standby lagging", func(r *Report) {
			r.Role, r.Mode = RoleStandby, ModeArchive
			r.Replication = &Replication{Upstream: "db-a:5432", LagBytes: 64 << 20, LagSeconds: 600}
		}, []Problem{{Warning, "standby is 10m0s behind (64 MiB of WAL to replay, mode archive)", "db-a:5432"}}},
		{"standby lag within the limit", func(r *Report) {
			r.Role, r.Mode = RoleStandby, ModeStreaming
			r.Replication = &Replication{LagSeconds: 60}
		}, nil},
		{"old backup", func(r *Report) {
			r.Backup.LastStoppedAt = at(9 * 24 * time.Hour)
		}, []Problem{{Warning, "last backup 20261205T000000F (full) finished 9d0h ago, more than 8d0h ago", "walferry backup-push"}}},
		{"no backup", func(r *Report) {
			r.Backup = Backup{Checked: true}
		}, []Problem{{Warning, "no backup in the repository", "walferry backup-push"}}},
		{"repository not read: no backup rule", func(r *Report) {
			r.Backup = Backup{}
		}, nil},
		{"repository unreadable", func(r *Report) {
			r.Backup = Backup{Checked: true, Error: "s3: 403"}
		}, []Problem{{Warning, "cannot read the repository's backups: s3: 403", "walferry repo check"}}},
		{"archive_mode off", func(r *Report) {
			r.Archive = Archive{ArchiveMode: "off"}
		}, []Problem{{Warning, "archive_mode is off", "archive_mode = on"}}},
		{"sidecar unreachable, then critical first", func(r *Report) {
			r.Sidecar = Sidecar{Address: "127.0.0.1:9898", Error: "connection refused"}
			r.Archive.Failing = true
		}, []Problem{
			{Critical, "archiving fails", "walferry repo check"},
			{Warning, "the sidecar at 127.0.0.1:9898 does not answer: connection refused", "start walferry sidecar / read its log"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := healthyPrimary()
			tt.change(&r)
			Diagnose(&r, Limits{})
			if r.Problems == nil || len(r.Problems) != len(tt.want) {
				t.Fatalf("problems = %+v, want %d", r.Problems, len(tt.want))
			}
			for i, w := range tt.want {
				got := r.Problems[i]
				if got.Severity != w.Severity || !strings.Contains(got.What, w.What) || !strings.Contains(got.Next, w.Next) {
					t.Errorf("problem %d = %+v\nwant %+v", i, got, w)
				}
				if strings.Contains(got.What, "\n") || strings.Contains(got.Next, "\n") {
					t.Errorf("problem %d is more than one line: %+v", i, got)
				}
			}
		})
	}
}

func TestSeverity(t *testing.T) {
	r := healthyPrimary()
	if Worst(r) != "" || Worst(r).AtLeast(Warning) {
		t.Error("no problem counts as a problem")
	}
	r.Problems = []Problem{{Severity: Warning}}
	if !Worst(r).AtLeast(Warning) || Worst(r).AtLeast(Critical) {
		t.Error("a warning: fails --fail-on warning only")
	}
	r.Problems = append(r.Problems, Problem{Severity: Critical})
	if Worst(r) != Critical || !Worst(r).AtLeast(Warning) {
		t.Error("a critical problem fails both")
	}
	if _, err := ParseSeverity("fatal"); err == nil {
		t.Error("ParseSeverity accepted fatal")
	}
}

func TestSetUpstreamLSN(t *testing.T) {
	r := healthyPrimary()
	r.SetUpstreamLSN("0/6000000") // not a standby: nothing to do
	r.Role, r.Replication = RoleStandby, &Replication{ReplayLSN: "0/5000000", LastReplayAt: at(90 * time.Second)}
	r.SetUpstreamLSN("0/6000000")
	if rep := r.Replication; rep.UpstreamLSN != "0/6000000" || rep.LagBytes != 16<<20 || rep.LagSeconds != 90 {
		t.Errorf("replication = %+v, want 16 MiB and 90 s behind", rep)
	}
	r.SetUpstreamLSN("0/5000000")
	if rep := r.Replication; rep.LagBytes != 0 || rep.LagSeconds != 0 {
		t.Errorf("caught up: replication = %+v, want no lag", rep)
	}
}

func TestUpstreamOf(t *testing.T) {
	t.Setenv("PGHOST", "")
	t.Setenv("PGHOSTADDR", "")
	t.Setenv("PGPORT", "")
	tests := map[string]string{
		"": "",
		"user=rep host=db-a port=5433 sslmode=require": "db-a:5433",
		"host = 'db a' application_name=x":             "db a:5432",
		"hostaddr=10.0.0.1 password='a b\\' c'":        "10.0.0.1:5432",
		"host=a,b port=5432,5433":                      "a:5432", // the first host
		"host=/run/postgresql":                         "/run/postgresql:5432",
		"postgresql://rep@db-a:6432/postgres":          "db-a:6432",
		"postgres://db-a/postgres":                     "db-a:5432",
		"user=rep":                                     "/var/run/postgresql:5432", // libpq's default
	}
	for in, want := range tests {
		if got := upstreamOf(in); got != want {
			t.Errorf("upstreamOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzUpstreamOf(f *testing.F) {
	f.Add("host='x\\'y' port=1")
	f.Add("postgres://a:b@c:1/d")
	f.Fuzz(func(t *testing.T, s string) { upstreamOf(s) })
}

func TestLocalConnString(t *testing.T) {
	dir := t.TempDir()
	if got, err := LocalConnString("host=x", dir); err != nil || got != "host=x" {
		t.Errorf("--pg-conn wins: %q %v", got, err)
	}
	if got, err := LocalConnString("", ""); err != nil || got != "" {
		t.Errorf("no data dir: %q %v, want libpq's environment", got, err)
	}
	if _, err := LocalConnString("", dir); err == nil || !strings.Contains(err.Error(), "no postmaster.pid") {
		t.Errorf("no postmaster.pid: %v", err)
	}
	pid := "1234\n" + dir + "\n1700000000\n5433\n/run/postgresql\n*\n  4321  5\nready\n"
	if err := os.WriteFile(filepath.Join(dir, "postmaster.pid"), []byte(pid), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LocalConnString("", dir)
	if err != nil || !strings.HasPrefix(got, "host='/run/postgresql' port=5433 dbname=postgres user='") {
		t.Errorf("got %q %v", got, err)
	}
}

func TestWriteText(t *testing.T) {
	r := healthyPrimary()
	Diagnose(&r, Limits{})
	var b bytes.Buffer
	WriteText(&b, r)
	want := `role:     primary, timeline 1
postgres: 15.4, system 7310012345678901234, at 0/5000060
archive:  last 000000010000000000000004 1h0m0s ago, 0 failed
backup:   20261205T000000F (full) 36h0m0s ago; 2 in the repository
slots:    site_b (local, active) holds 16 MiB, wal_status reserved
sidecar:  reachable at 127.0.0.1:9898
no problems
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}

	r.Role, r.Mode, r.Timeline = RoleStandby, ModeStreaming, 2
	r.Replication = &Replication{Upstream: "db-a:5432", Slot: "site_b", ReceiverStatus: "streaming", ReceiveLSN: "0/5000060", ReplayLSN: "0/5000000", LagBytes: 96, LagSeconds: 2}
	r.Slots = []Slot{{Name: "a", Where: "local"}, {Name: "b", Where: "upstream", Active: true, RetainedBytes: 1 << 30}}
	r.Sidecar = Sidecar{Address: "127.0.0.1:9898"}
	Diagnose(&r, Limits{})
	b.Reset()
	WriteText(&b, r)
	want = `role:     standby, timeline 2, streaming, upstream db-a:5432, slot site_b
postgres: 15.4, system 7310012345678901234, at 0/5000060
lag:      96 B, 2s (received 0/5000060, replayed 0/5000000)
archive:  last 000000010000000000000004 1h0m0s ago, 0 failed
backup:   20261205T000000F (full) 36h0m0s ago; 2 in the repository
slots:    a (local, inactive) holds 0 B
          b (upstream, active) holds 1 GiB
sidecar:  unreachable at 127.0.0.1:9898
problems:
  warning   the sidecar at 127.0.0.1:9898 does not answer
            next: start walferry sidecar / read its log (kubectl logs POD -c walferry)
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestFetch(t *testing.T) {
	served := healthyPrimary()
	served.Sidecar = Sidecar{Reachable: true, Since: at(time.Hour)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(served)
	})
	mux.HandleFunc("GET /broken", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "agent starting", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /v2", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"version": 2}`))
	})
	mux.HandleFunc("GET /html", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`<html>`))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	for _, a := range []string{addr, srv.URL, srv.URL + "/status"} {
		got, err := Fetch(ctx, a)
		if err != nil {
			t.Fatalf("Fetch(%s): %v", a, err)
		}
		if got.Role != RolePrimary || got.Backup.LastID != served.Backup.LastID || len(got.Slots) != 1 ||
			!got.Sidecar.Reachable || got.Sidecar.Address != a || got.Sidecar.Since == nil || !got.Time.Equal(now) {
			t.Errorf("Fetch(%s) = %+v", a, got)
		}
	}
	for path, want := range map[string]string{
		"/broken": "503 Service Unavailable: agent starting",
		"/v2":     "report version 2",
		"/html":   "not a status report",
	} {
		if _, err := Fetch(ctx, srv.URL+path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Fetch(%s) error %v, want %q", path, err, want)
		}
	}
	srv.Close()
	if _, err := Fetch(ctx, addr); err == nil || !strings.Contains(err.Error(), "ask the sidecar") {
		t.Errorf("closed server: %v", err)
	}
}

// TestJSONNames pins the JSON field names docs/status.md documents.
func TestJSONNames(t *testing.T) {
	r := healthyPrimary()
	r.Replication = &Replication{LastReplayAt: at(0)}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "time", "role", "timeline", "mode", "postgres", "replication", "archive", "backup", "slots", "sidecar", "problems"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	if New(now).Problems == nil || New(now).Slots == nil {
		t.Error("New: nil Problems or Slots would encode as null")
	}
	nb, _ := json.Marshal(New(now))
	if !bytes.Contains(nb, []byte(`"problems":[]`)) || !bytes.Contains(nb, []byte(`"role":"down"`)) || !bytes.Contains(nb, []byte(`"mode":"none"`)) {
		t.Errorf("New encodes as %s", nb)
	}
}
