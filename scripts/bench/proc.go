package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A variant runs in its own process (see runVariant), which makes itself a
// child subreaper: every process the hooks start, including daemons that
// detach with a double fork and setsid (pgBackRest's async workers), ends
// up as its child and is reaped by it. Once all of them are reaped,
// getrusage(RUSAGE_CHILDREN) holds the CPU time of every one of them and
// the largest peak RSS among them, and nothing else.

const prSetChildSubreaper = 36

func becomeSubreaper() error {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", errno)
	}
	return nil
}

// runAs is who hook processes run as: PostgreSQL's OS user.
type runAs struct {
	uid, gid uint32
	home     string
}

// spawn starts argv with the given working directory and environment,
// stdout and stderr appended to logFile.
func spawn(argv []string, dir string, env []string, as *runAs, logFile *os.File) (int, error) {
	path := argv[0]
	if !strings.Contains(path, "/") {
		p, err := lookPath(path)
		if err != nil {
			return 0, err
		}
		path = p
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{devnull.Fd(), logFile.Fd(), logFile.Fd()},
		Sys:   &syscall.SysProcAttr{},
	}
	if as != nil {
		attr.Sys.Credential = &syscall.Credential{Uid: as.uid, Gid: as.gid}
	}
	pid, err := syscall.ForkExec(path, argv, attr)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	return pid, nil
}

func lookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// waitFor reaps children until pid exits and returns its exit status (128
// plus the signal number when a signal ended it). Other children reaped on
// the way (orphans of the hooks) are accounted by the kernel in
// RUSAGE_CHILDREN, which is all we need from them.
func waitFor(pid int) (int, error) {
	for {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("wait for %d: %w", pid, err)
		}
		if got != pid {
			continue
		}
		if ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ws.ExitStatus(), nil
	}
}

// reapAll waits until no child is left. Children still alive after grace
// get SIGTERM, after twice grace SIGKILL.
func reapAll(grace time.Duration) (lingered time.Duration, err error) {
	start := time.Now()
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case <-time.After(grace):
		}
		signalChildren(syscall.SIGTERM)
		select {
		case <-done:
			return
		case <-time.After(grace):
		}
		for {
			signalChildren(syscall.SIGKILL)
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
		}
	}()
	defer close(done)
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.ECHILD) {
			return time.Since(start), nil
		}
		if err != nil {
			return time.Since(start), err
		}
	}
}

// signalChildren sends sig to every live child of this process.
func signalChildren(sig syscall.Signal) {
	me := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid(pid) == me {
			syscall.Kill(pid, sig)
		}
	}
}

// ppid reads the parent pid of pid from /proc, 0 when unknown.
func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// childrenUsage is the CPU time and largest peak RSS of every reaped
// descendant.
func childrenUsage() (user, sys time.Duration, maxRSSKiB int64) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), ru.Maxrss
}

// treeRSS samples, every interval until stop is closed, the summed
// proportional set size (PSS: shared pages split among their users) of
// every live descendant of this process, and sends the largest sum seen.
// ru_maxrss gives the peak of the largest single process; a tool that
// works with several processes (pgBackRest's process-max) holds the sum,
// and PSS does not count the shared libraries of its processes twice.
func treeRSS(interval time.Duration, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if s := descendantsPSSKiB(); s > peak {
				peak = s
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// descendantsPSSKiB is the summed PSS of this process's live descendants,
// in KiB.
func descendantsPSSKiB() int64 {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := ppid(pid); pp > 0 {
			children[pp] = append(children[pp], pid)
		}
	}
	var sum int64
	queue := append([]int(nil), children[os.Getpid()]...)
	for len(queue) > 0 {
		pid := queue[0]
		queue = append(queue[1:], children[pid]...)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				sum += n
				break
			}
		}
	}
	return sum
}
