package pg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PIDFileName is the file a running postmaster keeps in its data directory.
const PIDFileName = "postmaster.pid"

// PIDFile is what postmaster.pid says of the server running on a data
// directory: its process, data directory, start time, port, socket
// directory and first listen address (lines 1 to 6).
type PIDFile struct {
	PID        int
	DataDir    string
	Started    time.Time
	Port       int
	SocketDir  string
	ListenAddr string
}

// ReadPIDFile reads dataDir/postmaster.pid. A missing file (no server
// runs) is an error matching fs.ErrNotExist.
func ReadPIDFile(dataDir string) (PIDFile, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, PIDFileName))
	if err != nil {
		return PIDFile{}, err
	}
	return ParsePIDFile(string(b))
}

// ParsePIDFile parses a postmaster.pid. Lines 5 and 6 may be missing
// (a server still starting); the first four may not.
func ParsePIDFile(s string) (PIDFile, error) {
	lines := strings.Split(s, "\n")
	if len(lines) < 4 {
		return PIDFile{}, fmt.Errorf("its postmaster.pid has %d lines, want at least 4 (a server still starting, or a damaged file)", len(lines))
	}
	var pf PIDFile
	var err error
	if pf.PID, err = strconv.Atoi(strings.TrimSpace(lines[0])); err != nil || pf.PID <= 0 {
		return PIDFile{}, fmt.Errorf("its postmaster.pid has no process id on line 1 (%q)", lines[0])
	}
	pf.DataDir = strings.TrimSpace(lines[1])
	start, err := strconv.ParseInt(strings.TrimSpace(lines[2]), 10, 64)
	if err != nil {
		return PIDFile{}, fmt.Errorf("its postmaster.pid has no start time on line 3 (%q)", lines[2])
	}
	pf.Started = time.Unix(start, 0)
	if pf.Port, err = strconv.Atoi(strings.TrimSpace(lines[3])); err != nil || pf.Port <= 0 || pf.Port > 65535 {
		return PIDFile{}, fmt.Errorf("its postmaster.pid has no port on line 4 (%q)", lines[3])
	}
	if len(lines) > 4 {
		pf.SocketDir = strings.TrimSpace(lines[4])
	}
	if len(lines) > 5 {
		pf.ListenAddr = strings.TrimSpace(strings.Split(lines[5], ",")[0])
	}
	return pf, nil
}

// Host is where a client on this machine reaches the server: its socket
// directory, else its first listen address (loopback for a wildcard),
// else localhost.
func (pf PIDFile) Host() string {
	switch {
	case pf.SocketDir != "":
		return pf.SocketDir
	case pf.ListenAddr == "*" || pf.ListenAddr == "0.0.0.0" || pf.ListenAddr == "::":
		return "127.0.0.1"
	case pf.ListenAddr != "":
		return pf.ListenAddr
	}
	return "localhost"
}

// PostmasterRunning returns the pid dataDir/postmaster.pid names and
// whether that process lives; running is false when there is no such file
// or its process is gone (a stale file after a crash).
func PostmasterRunning(dataDir string) (pid int, running bool, err error) {
	pf, err := ReadPIDFile(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", dataDir, err)
	}
	// Signal 0 checks that the process exists; EPERM means it exists but
	// belongs to another user (who then must stop it).
	if err := syscall.Kill(pf.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return pf.PID, false, nil
	}
	return pf.PID, true, nil
}

// StopPostmaster stops the server running on dataDir the way pg_ctl stop
// -m fast does, without pg_ctl: SIGINT to the postmaster postmaster.pid
// names (clients are disconnected, a shutdown checkpoint is written and
// sent to the standbys), then a wait, up to timeout, for the postmaster to
// go. It works on a VM, and in a pod whose containers share their process
// namespace; the caller must be allowed to signal the postmaster (its OS
// user, or root). stopped is false when no server was running.
func StopPostmaster(ctx context.Context, dataDir string, timeout time.Duration) (stopped bool, err error) {
	pid, running, err := PostmasterRunning(dataDir)
	if err != nil || !running {
		return false, err
	}
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("signal the postmaster (pid %d) of %s: %w; walferry must run as PostgreSQL's OS user and, in a pod, "+
			"share the process namespace (shareProcessNamespace: true)", pid, dataDir, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, running, _ := PostmasterRunning(dataDir); !running {
			return true, nil
		}
		if time.Now().After(deadline) {
			return true, fmt.Errorf("PostgreSQL (pid %d) of %s did not stop within %s of a fast shutdown request; see its log", pid, dataDir, timeout)
		}
		// The postmaster is not our child: nothing notifies its exit.
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
