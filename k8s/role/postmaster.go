package role

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walferry/walferry/internal/failure"
)

// postmasterPID returns the pid in dataDir/postmaster.pid; running is false
// when there is no such file or its process is gone (a stale file after a
// crash).
func postmasterPID(dataDir string) (pid int, running bool, err error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, failure.Wrap(failure.Postgres, fmt.Errorf("read postmaster.pid: %w", err))
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err = strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 1 {
		return 0, false, failure.Wrap(failure.Postgres, fmt.Errorf("%s/postmaster.pid does not start with a process id (%q)", dataDir, first))
	}
	// Signal 0 checks that the process exists; EPERM means it exists but
	// belongs to someone else (then walferry cannot stop it either).
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return pid, false, nil
	}
	return pid, true, nil
}

// stopServer shuts the server down with SIGINT (fast shutdown: clients are
// disconnected, a shutdown checkpoint is written, standbys receive it) and
// waits until postmaster.pid is gone. It returns false when the server was
// not running.
func stopServer(ctx context.Context, dataDir string, timeout time.Duration) (bool, error) {
	pid, running, err := postmasterPID(dataDir)
	if err != nil || !running {
		return false, err
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		return false, failure.Wrap(failure.Postgres, fmt.Errorf("signal the postmaster (pid %d) of %s: %w; "+
			"walferry must run as PostgreSQL's OS user and, in a pod, share the process namespace (shareProcessNamespace: true)", pid, dataDir, err))
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		if _, running, _ := postmasterPID(dataDir); !running {
			return true, nil
		}
		if time.Now().After(deadline) {
			return true, failure.Wrap(failure.Postgres, fmt.Errorf("PostgreSQL (pid %d) did not stop within %v after a fast shutdown request; "+
				"see its log, then run walferry demote again (it resumes)", pid, timeout))
		}
		// The postmaster is not our child: nothing notifies its exit.
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
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
