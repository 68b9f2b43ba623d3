package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/walferry/walferry/internal/statusserver"
	"github.com/walferry/walferry/k8s/status"
)

// serveHTTP serves /healthz, /readyz, /metrics, GET /status (the latest
// status.Report as JSON) and POST /backup (a backup now, on a primary).
func (a *Agent) serveHTTP() (stop func()) {
	return statusserver.Serve(a.o.Listener, a.o.Registry, checker(a.healthy), checker(a.ready), a.log,
		statusserver.Route{Pattern: "GET /status", Handler: http.HandlerFunc(a.serveStatus)},
		statusserver.Route{Pattern: "POST /backup", Handler: http.HandlerFunc(a.serveBackup)},
	)
}

// checker adapts a function to statusserver.Checker.
type checker func() error

func (c checker) Check() error { return c() }

func (a *Agent) serveStatus(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(a.Report())
}

// serveBackup asks for a backup now: 202 when queued, 409 when the
// instance is not a primary or a request already waits.
func (a *Agent) serveBackup(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if a.Report().Role != status.RolePrimary {
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintln(w, "not a primary: backups are taken on the primary's sidecar")
		return
	}
	if !a.backups.request() {
		w.WriteHeader(http.StatusConflict)
		fmt.Fprintln(w, "a backup request already waits")
		return
	}
	w.WriteHeader(http.StatusAccepted)
	fmt.Fprintln(w, "backup requested: see the sidecar's log and walferry status")
}

// healthy: the agent observes (its loop is not stuck), PostgreSQL answers,
// and the hooks' daemon serves when there is one.
func (a *Agent) healthy() error {
	last := a.lastObs.Load()
	if last == 0 {
		return errors.New("starting: no observation yet")
	}
	if age := a.o.Now().Sub(time.Unix(0, last)); age > 3*a.o.Interval+30*time.Second {
		return fmt.Errorf("the sidecar's loop has not observed PostgreSQL for %s", age.Round(time.Second))
	}
	rep := a.Report()
	if !rep.Postgres.Reachable {
		return fmt.Errorf("PostgreSQL does not answer: %s", rep.Postgres.Error)
	}
	if a.daemon != nil {
		if err := a.daemonHealth.Check(); err != nil {
			return fmt.Errorf("hooks' daemon: %w", err)
		}
	}
	return nil
}

// ready: a primary that accepts writes; a standby that streams with a lag
// under MaxReadyLag, or replays the repository when ReadyOnArchive.
func (a *Agent) ready() error {
	rep := a.Report()
	switch rep.Role {
	case status.RolePrimary:
		return nil
	case status.RoleStandby:
		lag := time.Duration(0)
		if rep.Replication != nil {
			lag = time.Duration(rep.Replication.LagSeconds * float64(time.Second))
		}
		if rep.Mode == status.ModeArchive && !a.o.ReadyOnArchive {
			return errors.New("standby replays the repository, not streaming (ready on archive replay only with --ready-on-archive)")
		}
		if lag > a.o.MaxReadyLag {
			return fmt.Errorf("standby lags %s behind, more than --max-ready-lag %s", lag.Round(time.Second), a.o.MaxReadyLag)
		}
		return nil
	default:
		if rep.Postgres.Error != "" {
			return fmt.Errorf("PostgreSQL does not answer: %s", rep.Postgres.Error)
		}
		return errors.New("PostgreSQL does not answer")
	}
}
