package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
	"github.com/walferry/walferry/internal/pg/replication"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/teststore"
	"github.com/walferry/walferry/k8s/status"
)

func TestFollowConn(t *testing.T) {
	got, err := followConn("host=source.example.com port=5432 user=replicator passfile=/etc/walferry/pgpass sslmode=verify-full", "site-b-leader:5433")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"host=site-b-leader", "port=5433", "user=replicator", "passfile=/etc/walferry/pgpass", "sslmode=verify-full"} {
		if !strings.Contains(got, want) {
			t.Errorf("followConn = %q; want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, "source.example.com") {
		t.Errorf("followConn = %q still names the source", got)
	}
	for _, bad := range []string{"site-b-leader", ":5432", "host:port", "host:99999"} {
		if _, err := followConn("user=replicator", bad); !errors.Is(err, ErrUsage) || failure.Of(err) != failure.Usage {
			t.Errorf("followConn(%q) = %v; want a usage error", bad, err)
		}
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	r := &repo.Repo{}
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no data directory", Options{Repos: []*repo.Repo{r}}, "data directory"},
		{"no repository", Options{DataDir: "/tmp/x"}, "no repository"},
		{"bad schedule", Options{DataDir: "/tmp/x", Repos: []*repo.Repo{r}, Backups: BackupPolicy{Schedule: "every day"}}, "--backup-schedule"},
		{"bad follow", Options{DataDir: "/tmp/x", Repos: []*repo.Repo{r}, Follow: "nohost"}, "--follow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o)
			if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v; want a usage error about %s", err, tt.want)
			}
		})
	}
	for _, spec := range []string{"0 2 * * *", "@daily", "@every 6h"} {
		if _, err := New(Options{DataDir: "/tmp/x", Repos: []*repo.Repo{r}, Backups: BackupPolicy{Schedule: spec}}); err != nil {
			t.Errorf("schedule %q: %v", spec, err)
		}
	}
}

// agentWith returns an agent whose latest report is rep, observed now.
func agentWith(t *testing.T, o Options, rep status.Report) *Agent {
	t.Helper()
	o.DataDir, o.Repos = "/tmp/x", []*repo.Repo{{}}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	a.report.Store(&rep)
	a.lastObs.Store(time.Now().UnixNano())
	return a
}

func TestReadiness(t *testing.T) {
	primary := status.New(time.Now())
	primary.Role, primary.Postgres.Reachable = status.RolePrimary, true
	streaming := status.New(time.Now())
	streaming.Role, streaming.Mode, streaming.Postgres.Reachable = status.RoleStandby, status.ModeStreaming, true
	streaming.Replication = &status.Replication{LagSeconds: 2}
	lagging := streaming
	lagging.Replication = &status.Replication{LagSeconds: 120}
	archive := streaming
	archive.Mode = status.ModeArchive
	down := status.New(time.Now())
	down.Postgres.Error = "connection refused"

	tests := []struct {
		name    string
		o       Options
		rep     status.Report
		ready   bool
		healthy bool
	}{
		{"primary", Options{}, primary, true, true},
		{"standby streaming", Options{}, streaming, true, true},
		{"standby lagging", Options{MaxReadyLag: 30 * time.Second}, lagging, false, true},
		{"standby on archive", Options{}, archive, false, true},
		{"standby on archive, allowed", Options{ReadyOnArchive: true}, archive, true, true},
		{"postgres down", Options{}, down, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := agentWith(t, tt.o, tt.rep)
			if err := a.ready(); (err == nil) != tt.ready {
				t.Errorf("ready: %v; want ready %v", err, tt.ready)
			}
			if err := a.healthy(); (err == nil) != tt.healthy {
				t.Errorf("healthy: %v; want healthy %v", err, tt.healthy)
			}
		})
	}
	// A loop that stopped observing is not healthy.
	a := agentWith(t, Options{Interval: time.Second}, primary)
	a.lastObs.Store(time.Now().Add(-time.Hour).UnixNano())
	if err := a.healthy(); err == nil || !strings.Contains(err.Error(), "has not observed") {
		t.Errorf("healthy with a stale observation: %v", err)
	}
}

func TestRefuseUpstream(t *testing.T) {
	a := agentWith(t, Options{}, status.New(time.Now()))
	rep := status.New(time.Now())
	rep.Postgres.SystemID, rep.Timeline = "7716103351010420916", 2
	sys := func(id uint64, tli uint32) (s replicationSystem) { return replicationSystem{id, tli} }
	for _, tt := range []struct {
		s    replicationSystem
		want string
	}{
		{sys(7716103351010420916, 2), ""},
		{sys(7716103351010420916, 3), ""},
		{sys(1, 2), "another cluster"},
		{sys(7716103351010420916, 1), "timeline 1, behind"},
	} {
		got := a.refuseUpstream(&rep, tt.s.system())
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("refuseUpstream(%+v) = %q; want %q", tt.s, got, tt.want)
		}
	}
}

type replicationSystem struct {
	id  uint64
	tli uint32
}

func (r replicationSystem) system() replication.System {
	var s replication.System
	s.SystemID, s.Timeline = r.id, pg.TimeLineID(r.tli)
	return s
}

func TestMissingSegment(t *testing.T) {
	r, store := teststore.FSRepo(t)
	size, err := r.Metadata().SegmentSize()
	if err != nil {
		t.Fatal(err)
	}
	a := agentWith(t, Options{}, status.New(time.Now()))
	a.o.Repos, a.segSize = []*repo.Repo{r}, size
	put := func(name string) {
		key, err := repo.WALKey(name, size)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Put(context.Background(), key, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	// Recovery waits at 0/3000028, in segment ...03.
	lsn := pg.LSN(3<<24 + 0x28)
	put("000000010000000000000002")
	if got := a.missingSegment(ctx, 1, lsn); got != "" {
		t.Errorf("nothing later archived: missingSegment = %q; want \"\" (waiting for the primary, not stuck)", got)
	}
	put("000000010000000000000004")
	if got := a.missingSegment(ctx, 1, lsn); got != "000000010000000000000003" {
		t.Errorf("a later segment archived: missingSegment = %q; want 000000010000000000000003", got)
	}
	put("000000010000000000000003")
	if got := a.missingSegment(ctx, 1, lsn); got != "" {
		t.Errorf("the segment archived: missingSegment = %q; want \"\"", got)
	}
}

func TestPublishRole(t *testing.T) {
	var calls []string
	fail := true
	a := agentWith(t, Options{RoleLabel: func(_ context.Context, role string) error {
		calls = append(calls, role)
		if fail {
			return errors.New("forbidden")
		}
		return nil
	}}, status.New(time.Now()))
	ctx := context.Background()
	a.publishRole(ctx, status.RolePrimary) // fails: retried next time
	fail = false
	a.publishRole(ctx, status.RolePrimary)
	a.publishRole(ctx, status.RolePrimary) // published already: no call
	a.publishRole(ctx, status.RoleDown)    // keeps the label
	a.publishRole(ctx, status.RoleStandby)
	want := []string{"primary", "primary", "replica"}
	if strings.Join(calls, ",") != strings.Join(want, ",") {
		t.Errorf("RoleLabel calls %q; want %q", calls, want)
	}
}
