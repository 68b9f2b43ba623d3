package role

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/pg"
)

// stopServer shuts the server down (pg.StopPostmaster) and classifies a
// failure as PostgreSQL's; stopped is false when it was not running.
func stopServer(ctx context.Context, dataDir string, timeout time.Duration) (bool, error) {
	stopped, err := pg.StopPostmaster(ctx, dataDir, timeout)
	if err != nil {
		return stopped, failure.Wrap(failure.Postgres, fmt.Errorf("%w; then run the command again (it resumes)", err))
	}
	return stopped, nil
}

// startServer starts the server with pg_ctl and waits until it accepts
// connections (a standby: until it reached a consistent state).
func startServer(ctx context.Context, s Server, timeout time.Duration) error {
	args := []string{"start", "-D", s.DataDir, "-w", "-t", strconv.Itoa(int(timeout / time.Second))}
	if s.LogFile != "" {
		args = append(args, "-l", s.LogFile)
	}
	cmd := exec.CommandContext(ctx, s.bin("pg_ctl"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if s.LogFile == "" {
		// Without -l the server inherits pg_ctl's output: a pipe to us
		// would make Run wait for the server to exit. /dev/null then.
		cmd.Stdout, cmd.Stderr = nil, nil
	}
	if err := cmd.Run(); err != nil {
		return failure.Wrap(failure.Postgres, fmt.Errorf("pg_ctl %s: %w: %s (see the server log)", strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes())))
	}
	return nil
}
