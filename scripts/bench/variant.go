package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Workloads a variant runs.
const (
	// W1: archive_command for every segment, in order, .ready files
	// renamed to .done after each success, as PostgreSQL's archiver does.
	workPush = "push"
	// W2: restore_command for every segment, in order, into
	// pg_wal/RECOVERYXLOG, then one call for the segment after the last,
	// which must say "not archived" (exit 1) as at the end of recovery.
	workGet = "get"
	// Hook cost: archive_command for segments that are already archived
	// (the work is a lookup, so what is measured is the hook itself).
	workPushAgain = "push-again"
	// Hook cost with look-ahead: pairs of fresh segments, both .ready; the
	// call for the first (not timed) starts the tool's background work,
	// which pushes the second ahead; once it has (Spec.AheadMarker), the
	// call for the second is timed. That is PostgreSQL's common call with
	// walferry's look-ahead or pgBackRest's archive-async.
	workPushAhead = "push-ahead"
	// archive-get of segments that are not archived (exit 1 expected).
	workGetMissing = "get-missing"
	// W3: a full backup of a running cluster whose archive_command pushes
	// to the same repository (the fast checkpoint, the copy and the wait
	// for the backup's WAL to be archived).
	workBackupFull = "backup-full"
	// W4: the restore of that backup into an empty directory.
	workRestore = "restore"
	// W5: an incremental backup after 5% of pgbench_accounts changed.
	workBackupIncr = "backup-incr"
	// W6: a full backup of the many-files cluster (run.sh: thousands of
	// small tables, one file each), the way W3 backs up pgbench's.
	workManyFull = "many-full"
	// W7: an incremental backup of it after a row of 1% of its tables changed.
	workManyIncr = "many-incr"
)

// oneCommand: the workloads that are one command, run once.
func oneCommand(work string) bool {
	return work == workBackupFull || work == workRestore || work == workBackupIncr || work == workManyFull || work == workManyIncr
}

// Spec is one variant: a tool in one mode running one workload.
type Spec struct {
	Tool        string // "walferry" or "pgBackRest"
	Mode        string // "standalone", "daemon", "sync", "async"
	Workload    string
	Store       string // "fs" or "MinIO"
	Compression string
	PGData      string   // the data directory the hooks run in
	Segments    []string // the names, in order
	WALDir      string   // the original segments, to check what get fetched
	Hook        []string // argv; %p and %f as in PostgreSQL
	Daemon      []string // argv of a daemon to start first, or nil
	Socket      string   // the daemon is ready when this socket accepts
	// AheadMarker is the file (%f for the segment's name) that says the
	// tool pushed a segment ahead of PostgreSQL's call for it, or "" for a
	// tool that does not.
	AheadMarker string
	Env         []string
	UID, GID    uint32
	Home        string
	LogFile     string
	FetchDir    string // get: restored files are moved here, then checked
	// Command is the argv of a one-command workload (W3-W5), run once in
	// PGData as the postgres OS user; its stdout and stderr go to LogFile.
	Command []string
	Round   int // W3-W5: 1..rounds
}

// Result is what a variant measured.
type Result struct {
	Spec         Spec      `json:"-"`
	Calls        int       `json:"calls"`
	Failed       int       `json:"failed"`
	WallSeconds  float64   `json:"wall_seconds"`
	CallMillis   []float64 `json:"call_millis"`
	UserSeconds  float64   `json:"user_seconds"`
	SysSeconds   float64   `json:"sys_seconds"`
	MaxRSSKiB    int64     `json:"max_rss_kib"`
	TailSeconds  float64   `json:"tail_seconds"`             // waiting for background processes after the last call
	EndCode      int       `json:"end_code"`                 // get: exit status of the call past the end
	EndMillis    float64   `json:"end_millis"`               // get: its duration
	RepoBytes    int64     `json:"repo_bytes"`               // push: compressed size of the repository
	DaemonMillis float64   `json:"daemon_millis"`            // start-up of the daemon, not in WallSeconds
	TreeRSSKiB   int64     `json:"tree_pss_kib"`             // W3-W5: peak of the summed PSS of all processes, sampled
	ExitCode     int       `json:"exit_code"`                // W3-W5: the command's exit status
	StoredBytes  int64     `json:"stored_bytes"`             // W3, W5: what the backup added to the repository
	StoredObjs   int64     `json:"stored_objects,omitempty"` // W3, W5-W7: the objects it added
	DataBytes    int64     `json:"data_bytes"`               // W3: data directory; W4: restored directory
	Check        string    `json:"check"`                    // W4, W5: restore check ("ok", or what differed)
	Notes        []string  `json:"notes"`
	Err          string    `json:"err,omitempty"`
}

// runVariant runs spec in this process, which must be a fresh one (its
// RUSAGE_CHILDREN must hold this variant's processes only).
func runVariant(spec Spec) Result {
	res := Result{Spec: spec}
	if err := becomeSubreaper(); err != nil {
		res.Err = err.Error()
		return res
	}
	logf, err := os.OpenFile(spec.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s %s %s %s %s\n", spec.Workload, spec.Tool, spec.Mode, spec.Store, spec.Compression)
	as := &runAs{uid: spec.UID, gid: spec.GID, home: spec.Home}

	if len(spec.Daemon) > 0 {
		t0 := time.Now()
		if _, err := spawn(spec.Daemon, spec.PGData, spec.Env, as, logf); err != nil {
			res.Err = err.Error()
			return res
		}
		if err := waitSocket(spec.Socket, 30*time.Second); err != nil {
			res.Err = err.Error()
			reapAll(5 * time.Second)
			return res
		}
		res.DaemonMillis = ms(time.Since(t0))
	}

	call := func(seg, p string) (int, time.Duration, error) {
		argv := make([]string, len(spec.Hook))
		for i, a := range spec.Hook {
			argv[i] = strings.NewReplacer("%p", p, "%f", seg).Replace(a)
		}
		t0 := time.Now()
		pid, err := spawn(argv, spec.PGData, spec.Env, as, logf)
		if err != nil {
			return 0, 0, err
		}
		code, err := waitFor(pid)
		return code, time.Since(t0), err
	}

	if oneCommand(spec.Workload) {
		return runOnce(res, spec, as, logf)
	}

	start := time.Now()
	switch spec.Workload {
	case workPush, workPushAgain:
		status := filepath.Join(spec.PGData, "pg_wal", "archive_status")
		for _, seg := range spec.Segments {
			if spec.Workload == workPushAgain {
				// PostgreSQL repeating the call for an archived segment
				// (a crash between the push and the rename to .done): only
				// that segment is .ready.
				ready := filepath.Join(status, seg+".ready")
				if err := os.WriteFile(ready, nil, 0o600); err != nil {
					res.Err = err.Error()
					return finish(res, start)
				}
				os.Chown(ready, int(spec.UID), int(spec.GID))
			}
			// PostgreSQL retries a failed segment; so do we, three times
			// at most, counting every failure.
			for attempt := 1; ; attempt++ {
				code, d, err := call(seg, filepath.Join("pg_wal", seg))
				if err != nil {
					res.Err = err.Error()
					return finish(res, start)
				}
				res.Calls++
				res.CallMillis = append(res.CallMillis, ms(d))
				if code == 0 {
					break
				}
				res.Failed++
				fmt.Fprintf(logf, "bench: %s: exit %d (attempt %d)\n", seg, code, attempt)
				if attempt == 3 {
					res.Err = fmt.Sprintf("archive-push of %s failed 3 times", seg)
					return finish(res, start)
				}
			}
			os.Rename(filepath.Join(status, seg+".ready"), filepath.Join(status, seg+".done"))
		}
	case workGet:
		dest := filepath.Join("pg_wal", "RECOVERYXLOG")
		for _, seg := range spec.Segments {
			for attempt := 1; ; attempt++ {
				code, d, err := call(seg, dest)
				if err != nil {
					res.Err = err.Error()
					return finish(res, start)
				}
				res.Calls++
				res.CallMillis = append(res.CallMillis, ms(d))
				if code == 0 {
					break
				}
				res.Failed++
				fmt.Fprintf(logf, "bench: %s: exit %d (attempt %d)\n", seg, code, attempt)
				if attempt == 3 {
					res.Err = fmt.Sprintf("archive-get of %s failed 3 times", seg)
					return finish(res, start)
				}
			}
			// PostgreSQL reads RECOVERYXLOG and replaces it with the next
			// one; we keep it to check it afterwards.
			if err := os.Rename(filepath.Join(spec.PGData, dest), filepath.Join(spec.FetchDir, seg)); err != nil {
				res.Failed++
				res.Notes = append(res.Notes, fmt.Sprintf("%s: exit 0 but %v", seg, err))
			}
		}
		res.WallSeconds = time.Since(start).Seconds()
		code, d, err := call(nextSegment(spec.Segments[len(spec.Segments)-1]), dest)
		if err != nil {
			res.Err = err.Error()
			return finish(res, start)
		}
		res.EndCode, res.EndMillis = code, ms(d)
		if code != 1 {
			res.Failed++
			res.Notes = append(res.Notes, fmt.Sprintf("the call past the end of the archive exited %d, want 1", code))
		}
	case workPushAhead:
		status := filepath.Join(spec.PGData, "pg_wal", "archive_status")
		push := func(seg string, timed bool) error {
			code, d, err := call(seg, filepath.Join("pg_wal", seg))
			if err != nil {
				return err
			}
			if timed {
				res.Calls++
				res.CallMillis = append(res.CallMillis, ms(d))
			}
			if code != 0 {
				res.Failed++
				res.Notes = append(res.Notes, fmt.Sprintf("%s: exit %d", seg, code))
			}
			os.Rename(filepath.Join(status, seg+".ready"), filepath.Join(status, seg+".done"))
			return nil
		}
		for i := 0; i+1 < len(spec.Segments); i += 2 {
			first, second := spec.Segments[i], spec.Segments[i+1]
			for _, seg := range []string{first, second} {
				ready := filepath.Join(status, seg+".ready")
				if err := os.WriteFile(ready, nil, 0o600); err != nil {
					res.Err = err.Error()
					return finish(res, start)
				}
				os.Chown(ready, int(spec.UID), int(spec.GID))
			}
			if err := push(first, false); err != nil {
				res.Err = err.Error()
				return finish(res, start)
			}
			if spec.AheadMarker != "" && !waitFile(strings.ReplaceAll(spec.AheadMarker, "%f", second), 10*time.Second) {
				res.Notes = append(res.Notes, second+": not pushed ahead within 10 s")
			}
			if err := push(second, true); err != nil {
				res.Err = err.Error()
				return finish(res, start)
			}
		}
	case workGetMissing:
		for _, seg := range spec.Segments {
			code, d, err := call(seg, filepath.Join("pg_wal", "RECOVERYXLOG"))
			if err != nil {
				res.Err = err.Error()
				return finish(res, start)
			}
			res.Calls++
			res.CallMillis = append(res.CallMillis, ms(d))
			if code != 1 {
				res.Failed++
				res.Notes = append(res.Notes, fmt.Sprintf("%s: exit %d, want 1", seg, code))
			}
		}
	default:
		res.Err = "unknown workload " + spec.Workload
	}
	res = finish(res, start)
	if spec.Workload == workGet && res.Err == "" {
		for _, seg := range spec.Segments {
			if !sameFile(filepath.Join(spec.FetchDir, seg), filepath.Join(spec.WALDir, seg)) {
				res.Failed++
				res.Notes = append(res.Notes, seg+": fetched bytes differ from the original")
			}
			os.Remove(filepath.Join(spec.FetchDir, seg))
		}
	}
	return res
}

// finish stops the daemon and waits for every background process, then
// reads the accounting.
func finish(res Result, start time.Time) Result {
	if res.WallSeconds == 0 {
		res.WallSeconds = time.Since(start).Seconds()
	}
	if len(res.Spec.Daemon) > 0 {
		signalChildren(syscall.SIGTERM)
	}
	// pgBackRest's async workers finish their queue and exit by themselves.
	tail, err := reapAll(60 * time.Second)
	res.TailSeconds = tail.Seconds()
	if err != nil && res.Err == "" {
		res.Err = err.Error()
	}
	u, s, rss := childrenUsage()
	res.UserSeconds, res.SysSeconds, res.MaxRSSKiB = u.Seconds(), s.Seconds(), rss
	return res
}

// runOnce runs a one-command workload: wall time from the start of the
// command to its exit, CPU and peak RSS of it and every process it
// started, and the summed PSS of them all sampled every 50 ms.
func runOnce(res Result, spec Spec, as *runAs, logf *os.File) Result {
	stop := make(chan struct{})
	peak := treeRSS(50*time.Millisecond, stop)
	start := time.Now()
	pid, err := spawn(spec.Command, spec.PGData, spec.Env, as, logf)
	if err != nil {
		res.Err = err.Error()
	} else {
		res.ExitCode, err = waitFor(pid)
		res.WallSeconds = time.Since(start).Seconds()
		res.Calls = 1
		if err != nil {
			res.Err = err.Error()
		} else if res.ExitCode != 0 {
			res.Failed = 1
			res.Err = fmt.Sprintf("exit status %d (see %s)", res.ExitCode, spec.LogFile)
		}
	}
	res = finish(res, start)
	close(stop)
	res.TreeRSSKiB = <-peak
	return res
}

func waitSocket(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon socket %s not ready after %s: %v", path, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFile waits until path exists, for at most timeout.
func waitFile(path string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// nextSegment is the name after seg (16 MiB segments).
func nextSegment(seg string) string {
	var tli, log, n uint32
	fmt.Sscanf(seg, "%08X%08X%08X", &tli, &log, &n)
	n++
	if n == 0x100 {
		n, log = 0, log+1
	}
	return fmt.Sprintf("%08X%08X%08X", tli, log, n)
}

func sameFile(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil || eb != nil {
			return (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF)
		}
	}
}

// percentile of sorted-able values (p in [0,100]).
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

// variantMain is the entry point of "benchdriver variant": a Spec as JSON
// on stdin, a Result as JSON on stdout.
func variantMain() error {
	var spec Spec
	if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	res := runVariant(spec)
	return json.NewEncoder(os.Stdout).Encode(res)
}
