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

// StopPostmaster stops the server running on dataDir the way pg_ctl stop
// -m fast does, without pg_ctl: SIGINT to the postmaster postmaster.pid
// names (on a VM, or in a pod whose containers share their process
// namespace), then a wait, up to timeout, for postmaster.pid to go. It
// returns nil at once when no server runs. The caller must be allowed to
// signal the postmaster (its OS user, or root).
func StopPostmaster(ctx context.Context, dataDir string, timeout time.Duration) error {
	pf, err := ReadPIDFile(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop the server of %s: %w", dataDir, err)
	}
	if err := syscall.Kill(pf.PID, syscall.SIGINT); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil // a postmaster.pid left by a crash
		}
		return fmt.Errorf("stop the server of %s (pid %d): %w; in a pod the containers must share their process namespace (shareProcessNamespace: true)", dataDir, pf.PID, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(filepath.Join(dataDir, PIDFileName)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server of %s (pid %d) did not stop within %s of SIGINT", dataDir, pf.PID, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
