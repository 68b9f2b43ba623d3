package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/k8s/status"
)

func (a *app) statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show role, timeline, lag, archiving, backups, slots and what is wrong",
		UsageText: "walferry status [--pgdata DIR] [--pg-conn STRING] [--sidecar ADDR] [--json] [--fail-on critical|warning]",
		Description: `Says what this instance is and how it goes: its role (primary, standby,
or down), timeline and mode (a standby streaming from its upstream, or
replaying the repository's archive), how far behind it is (bytes and
seconds), the last archived WAL segment and its age, archiving failures,
the newest backup and its age, the replication slots and the WAL they
hold, and whether the sidecar answers. When something is wrong, one line
says what (the failing segment and its error, the segment recovery waits
for, the slot and its size) and the next command to run.

   walferry status
   walferry status --pgdata /var/lib/postgresql/15/main
   kubectl exec db-0 -c walferry -- walferry status --json

The sidecar (walferry sidecar) is asked first, at --sidecar (default
127.0.0.1:9898, GET /status): it knows more (the upstream's position and
slot, the archiving daemon's last error, the spool, the segment recovery
is stuck on), and its report is printed as it is. When it does not
answer, status collects by itself: PostgreSQL through --pg-conn (or
libpq's PG* variables; with --pgdata and no --pg-conn, the server named
by DIR/postmaster.pid, as the data directory's owner), the repository's
backups when a repository is configured (--repo), and reports the
sidecar unreachable (a warning).

PostgreSQL being down is a report, not a failure: role "down" and a
problem naming the fix.

--json prints the report as JSON, whose fields are stable and documented
in docs/status.md (schema version 1: fields are added, never renamed).

EXIT STATUS
   0 the report was printed, with or without problems. With
   --fail-on critical, 1 when a critical problem is reported; with
   --fail-on warning, 1 when any problem is reported (for probes and
   scripts). 2 bad usage or configuration.`,
		Flags: withCommonFlags(
			&cli.StringFlag{Name: "sidecar", EnvVars: []string{"WALFERRY_SIDECAR"}, Value: status.DefaultSidecarAddr,
				Usage: "the sidecar's HTTP `ADDR`ess (host:port or URL) to ask first"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON (docs/status.md)"},
			&cli.StringFlag{Name: "fail-on", Usage: "exit 1 when a problem of this `SEVERITY` or worse is reported: critical or warning"},
		),
		Action: a.status,
	}
}

func (a *app) status(c *cli.Context) error {
	var failOn status.Severity
	if v := c.String("fail-on"); v != "" {
		sev, err := status.ParseSeverity(v)
		if err != nil {
			return usage(fmt.Errorf("--fail-on: %w", err))
		}
		failOn = sev
	}
	addr := c.String("sidecar")
	if err := status.CheckSidecarAddr(addr); err != nil {
		return usage(fmt.Errorf("--sidecar: %w", err))
	}
	s, err := a.load(c)
	if err != nil {
		return err
	}
	r, err := status.Fetch(c.Context, addr)
	if err != nil {
		o := status.CollectOptions{
			PGConn:      s.cfg.PGConn.Reveal(),
			DataDir:     s.cfg.PGData,
			SidecarAddr: addr,
			SidecarErr:  err,
			Limits:      status.DefaultLimits(),
		}
		if len(s.cfg.Repos) > 0 {
			o.OpenRepo = func(ctx context.Context) (*repo.Repo, func(), error) {
				set, err := s.openRepos(ctx, nil)
				if err != nil {
					return nil, nil, err
				}
				return set.Repos[0], func() { set.Close() }, nil
			}
		}
		r = status.Collect(c.Context, o)
	}
	if c.Bool("json") {
		if err := a.printJSON(r); err != nil {
			return err
		}
	} else {
		status.WriteText(a.stdout, r)
	}
	if failOn != "" && status.Worst(r).AtLeast(failOn) {
		return failure.New(failure.Other, fmt.Sprintf("status: %d problem(s), the worst %s (--fail-on %s)", len(r.Problems), status.Worst(r), failOn))
	}
	return nil
}
