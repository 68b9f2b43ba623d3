//go:build faults

package faults

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
)

// Documented limits (docs/configuration.md, "Retries"): an operation on a
// failing store gives up after 4 attempts within 20 s plus the store's own
// timeouts (S3: 5 s to connect, 60 s for an answer's headers). A trial
// still running after its limit is a hang.
const (
	retryElapsed  = 20 * time.Second
	storeTimeouts = 5*time.Second + 60*time.Second
	// segmentLimit bounds archive-push and archive-get of one 1 MiB
	// segment: the retries, one answer that never comes, and 30 s for
	// the transfer at the slowest bandwidth the suite sets and start-up.
	segmentLimit = retryElapsed + storeTimeouts + 30*time.Second
	// backupLimit bounds backup-push and restore of the suite's small
	// cluster (about 30 MiB of files): the same, with two minutes of
	// transfer at the slowest bandwidth.
	backupLimit = retryElapsed + storeTimeouts + 2*time.Minute
)

// netFault is one misbehaviour of the network or the store's front.
type netFault struct {
	name string
	// apply starts the fault; for a fault that strikes mid-body it
	// starts a slow link and strikes after midBody.
	apply   func(t *testing.T, f *front)
	midBody func(t *testing.T, f *front)
	// healAfter > 0: the fault is transient and healed after this long.
	healAfter time.Duration
}

var netFaults = []netFault{
	{name: "latency 150ms+-50", apply: func(t *testing.T, f *front) {
		f.toxic(t, "lat-up", "latency", "upstream", `"latency":150,"jitter":50`)
		f.toxic(t, "lat-down", "latency", "downstream", `"latency":150,"jitter":50`)
	}},
	{name: "bandwidth 512KB/s", apply: func(t *testing.T, f *front) {
		f.toxic(t, "bw-up", "bandwidth", "upstream", `"rate":512`)
		f.toxic(t, "bw-down", "bandwidth", "downstream", `"rate":512`)
	}},
	{name: "cut after 64KB, 3s", healAfter: 3 * time.Second, apply: func(t *testing.T, f *front) {
		f.toxic(t, "limit-up", "limit_data", "upstream", `"bytes":65536`)
		f.toxic(t, "limit-down", "limit_data", "downstream", `"bytes":65536`)
	}},
	{name: "reset mid-body, always", apply: func(t *testing.T, f *front) {
		f.toxic(t, "bw-up", "bandwidth", "upstream", `"rate":256`)
		f.toxic(t, "bw-down", "bandwidth", "downstream", `"rate":256`)
		f.toxic(t, "reset", "reset_peer", "upstream", `"timeout":400`)
	}},
	{name: "hang, no answer", apply: func(t *testing.T, f *front) {
		f.toxic(t, "hang", "timeout", "downstream", `"timeout":0`)
	}},
	{name: "hang mid-body", apply: func(t *testing.T, f *front) {
		f.toxic(t, "bw-up", "bandwidth", "upstream", `"rate":128`)
		f.toxic(t, "bw-down", "bandwidth", "downstream", `"rate":128`)
	}, midBody: func(t *testing.T, f *front) {
		f.toxic(t, "hang-up", "timeout", "upstream", `"timeout":0`)
		f.toxic(t, "hang-down", "timeout", "downstream", `"timeout":0`)
	}},
	{name: "503 SlowDown, 3s", healAfter: 3 * time.Second, apply: func(t *testing.T, f *front) {
		f.httpFault(http.StatusServiceUnavailable, 0)
	}},
	{name: "503 SlowDown, always", apply: func(t *testing.T, f *front) {
		f.httpFault(http.StatusServiceUnavailable, 0)
	}},
	{name: "500 after 2 requests", apply: func(t *testing.T, f *front) {
		f.httpFault(http.StatusInternalServerError, 2)
	}},
}

// knownBugs are trials that fail today, skipped with the bug named, so
// the suite stays green while they are open (docs/guarantees.md).
var knownBugs = map[[2]string]string{}

// skipKnownBug reports whether op under fault is a known bug, skipping a
// subtest named after it.
func skipKnownBug(t *testing.T, fault, op string) bool {
	bug, ok := knownBugs[[2]string{fault, op}]
	if ok {
		t.Run(fault, func(t *testing.T) { t.Skip(bug) })
	}
	return ok
}

// strike applies fault to f for one trial and returns a function that ends
// it (heals the front) once the trial is over.
func strike(t *testing.T, f *front, fault netFault) (end func()) {
	t.Helper()
	fault.apply(t, f)
	var timers []*time.Timer
	if fault.midBody != nil {
		timers = append(timers, time.AfterFunc(1500*time.Millisecond, func() { fault.midBody(t, f) }))
	}
	if fault.healAfter > 0 {
		timers = append(timers, time.AfterFunc(fault.healAfter, f.heal))
	}
	return func() {
		for _, tm := range timers {
			tm.Stop()
		}
		f.heal()
	}
}

// TestNetwork runs archive-push, archive-get, backup-push and restore
// through a faulty path to MinIO, once per fault. Each trial must succeed
// with exact data or fail within its limit with exit 3 (archive-get: 1)
// and a message naming the store, leaving nothing partial under a final
// name; after each failure the same operation without the fault succeeds.
func TestNetwork(t *testing.T) {
	s3 := needServices(t)
	t.Parallel() // beside TestLoad's ten minutes
	src, segs := walSource(t, len(netFaults)+2)
	t.Run("archive-push", func(t *testing.T) {
		t.Parallel()
		f := newFront(t, s3)
		side := s3Side(t, s3, f, "archive-push")
		side.lookAhead = true
		netArchivePush(t, f, src, segs, side)
	})
	t.Run("archive-get", func(t *testing.T) {
		t.Parallel()
		f := newFront(t, s3)
		netArchiveGet(t, f, src, segs, s3Side(t, s3, f, "archive-get"))
	})
	t.Run("backup-push", func(t *testing.T) {
		t.Parallel()
		f := newFront(t, s3)
		netBackupPush(t, f, s3Side(t, s3, f, "backup-push"))
	})
	t.Run("restore", func(t *testing.T) {
		t.Parallel()
		f := newFront(t, s3)
		netRestore(t, f, s3Side(t, s3, f, "restore"))
	})
}

var srcMu sync.Mutex // archive-push trials with look-ahead change the source's archive_status

// storeSide is the repository, or repositories, a trial of archive-push or
// archive-get works on: repoArgs reach them through the faulty front,
// direct reach the same repositories without it (to initialise, fill and
// inspect them).
type storeSide struct {
	op       string // the table's operation column
	repoArgs []string
	direct   []string
	// names reports whether a failure message names the failing store.
	names func(stderr string) bool
	// lookAhead: leave only the pushed segment .ready, so the push's
	// look-ahead has nothing else to upload (serialised on the shared
	// source); otherwise pushes run with --ahead 0.
	lookAhead bool
	// oneHealthy: another repository is healthy and holds every
	// segment, so archive-get must succeed whatever the fault.
	oneHealthy bool
}

// s3Side is one MinIO repository behind f.
func s3Side(t *testing.T, s3 testenv.S3Env, f *front, op string) storeSide {
	prefix := testenv.UniquePrefix(t)
	return storeSide{
		op:       op,
		repoArgs: []string{"--repo", s3URL(s3, prefix, f.Endpoint)},
		direct:   []string{s3URL(s3, prefix, s3.Endpoint)},
		names:    func(stderr string) bool { return namesStore(stderr, s3, f.Endpoint) },
	}
}

// initSide initialises every repository of side for src.
func initSide(t *testing.T, src *pgtest.Cluster, side storeSide) {
	for _, url := range side.direct {
		mustWF(t, src, "repo", "init", "--repo", url, "--pgdata", src.DataDir)
	}
}

func directArgs(side storeSide) []string {
	var args []string
	for _, url := range side.direct {
		args = append(args, "--repo", url)
	}
	return args
}

func netArchivePush(t *testing.T, f *front, src *pgtest.Cluster, segs []string, side storeSide) {
	initSide(t, src, side)
	var repos []*repo.Repo
	for _, url := range side.direct {
		repos = append(repos, openRepo(t, url))
	}
	check := func(pushed []string) string {
		for _, r := range repos {
			if p := checkWAL(t, r, src, pushed); p != "" {
				return r.String() + ": " + p
			}
		}
		return ""
	}
	args := append([]string{"archive-push"}, side.repoArgs...)
	if !side.lookAhead {
		args = append(args, "--ahead", "0")
	}
	var pushed []string
	op := side.op
	for i, fault := range netFaults {
		if skipKnownBug(t, fault.name, op) {
			continue
		}
		seg := segs[i]
		push := append(args[:len(args):len(args)], "pg_wal/"+seg)
		if side.lookAhead {
			srcMu.Lock()
			setReady(t, src, segs, map[string]bool{seg: true})
		}
		end := strike(t, f, fault)
		res := wf(t, src, segmentLimit, push...)
		end()
		if side.lookAhead {
			srcMu.Unlock()
		}
		switch {
		case res.timedOut:
			record(t, fault.name, op, hang, res.String())
		case res.code == 0:
			pushed = append(pushed, seg)
			if p := check(pushed); p != "" {
				record(t, fault.name, op, dataLost, p)
			} else {
				record(t, fault.name, op, ok, fmt.Sprintf("%s archived in %s, bytes equal", seg, res.dur.Round(time.Millisecond)))
			}
		default:
			if p := check(pushed); p != "" {
				record(t, fault.name, op, dataLost, "after a failed push: "+p)
				continue
			}
			again := wf(t, src, segmentLimit, push...)
			if again.code != 0 {
				record(t, fault.name, op, unclear, "the push after the fault failed: "+again.String())
				continue
			}
			pushed = append(pushed, seg)
			if p := check(pushed); p != "" {
				record(t, fault.name, op, dataLost, "after the push following the fault: "+p)
			} else if res.code == 3 && side.names(res.stderr) {
				record(t, fault.name, op, clearError, res.String())
			} else {
				record(t, fault.name, op, unclear, "want exit 3 naming the store: "+res.String())
			}
		}
	}
}

func netArchiveGet(t *testing.T, f *front, src *pgtest.Cluster, segs []string, side storeSide) {
	initSide(t, src, side)
	for _, seg := range segs[:len(netFaults)] {
		mustWF(t, src, append(append([]string{"archive-push"}, directArgs(side)...), "--ahead", "0", "pg_wal/"+seg)...)
	}
	dir := src.MkdirOwned(t, "got-"+strings.NewReplacer(" ", "-", "(", "", ")", "", "+", "-").Replace(side.op))
	op := side.op
	for i, fault := range netFaults {
		seg := segs[i]
		dest := filepath.Join(dir, seg)
		end := strike(t, f, fault)
		get := append(append([]string{"archive-get"}, side.repoArgs...), "--prefetch", "0", seg, dest)
		res := wf(t, src, segmentLimit, get...)
		end()
		got, want := fileSum(t, dest), fileSum(t, filepath.Join(src.DataDir, "pg_wal", seg))
		switch {
		case res.timedOut:
			record(t, fault.name, op, hang, res.String())
		case res.code == 0 && got == want:
			record(t, fault.name, op, ok, fmt.Sprintf("%s in %s, bytes equal", seg, res.dur.Round(time.Millisecond)))
		case res.code == 0:
			record(t, fault.name, op, dataLost, fmt.Sprintf("exit 0 but %s has sha256 %q, want %s", dest, got, want))
		case got != "":
			record(t, fault.name, op, dataLost, fmt.Sprintf("failed (%v) but left %s", res, dest))
		case side.oneHealthy:
			record(t, fault.name, op, unclear, "another repository holds the segment, want it fetched from there: "+res.String())
		case res.code == 1 && side.names(res.stderr):
			record(t, fault.name, op, clearError, res.String())
		default:
			record(t, fault.name, op, unclear, "want exit 1 naming the store: "+res.String())
		}
		os.Remove(dest)
	}
}

func netBackupPush(t *testing.T, f *front, side storeSide) {
	direct, faulty := side.direct[0], side.repoArgs[1]
	prim := archivingPrimary(t, direct)
	fillItems(t, prim, 50000)
	for _, fault := range netFaults {
		op := side.op
		if skipKnownBug(t, fault.name, op) {
			continue
		}
		before := backupList(t, prim, direct)
		end := strike(t, f, fault)
		res := wf(t, prim, backupLimit, "backup-push", "--repo", faulty, "--json")
		end()
		after := backupList(t, prim, direct)
		switch {
		case res.timedOut:
			record(t, fault.name, op, hang, res.String())
		case res.code == 0:
			id := backupID(res.stdout)
			if !slices.Contains(after, id) {
				record(t, fault.name, op, dataLost, fmt.Sprintf("backup-push reported %q, backup-list shows %v", id, after))
			} else if v := wf(t, prim, backupLimit, "verify", "--repo", direct, id); v.code != 0 {
				record(t, fault.name, op, dataLost, fmt.Sprintf("backup %s made under the fault does not verify: %v", id, v))
			} else {
				record(t, fault.name, op, ok, fmt.Sprintf("backup %s in %s, verified", id, res.dur.Round(time.Millisecond)))
			}
		case len(after) != len(before):
			record(t, fault.name, op, dataLost, fmt.Sprintf("a failed backup-push (%v) changed backup-list from %v to %v", res, before, after))
		case res.code == 3 && side.names(res.stderr):
			record(t, fault.name, op, clearError, res.String())
		default:
			record(t, fault.name, op, unclear, "want exit 3 naming the store: "+res.String())
		}
	}
}

func netRestore(t *testing.T, f *front, side storeSide) {
	direct, faulty := side.direct[0], side.repoArgs[1]
	prim := archivingPrimary(t, direct)
	want := fillItems(t, prim, 50000)
	id := backupID(mustWF(t, prim, "backup-push", "--repo", direct, "--json").stdout)
	psql(t, prim, "SELECT pg_switch_wal()")
	d := newRestoreTarget(t)
	for _, fault := range netFaults {
		op := side.op
		if skipKnownBug(t, fault.name, op) {
			continue
		}
		d.clear(t)
		end := strike(t, f, fault)
		res := d.restore(t, backupLimit, nil, faulty, id)
		end()
		switch {
		case res.timedOut:
			record(t, fault.name, op, hang, res.String())
		case res.code == 0:
			if p := d.check(t, want); p != "" {
				record(t, fault.name, op, dataLost, p)
			} else {
				record(t, fault.name, op, ok, fmt.Sprintf("restored in %s, rows equal", res.dur.Round(time.Millisecond)))
			}
		case d.startable():
			record(t, fault.name, op, dataLost, fmt.Sprintf("a failed restore (%v) left global/pg_control: PostgreSQL could start it", res))
		case res.code == 3 && side.names(res.stderr):
			record(t, fault.name, op, clearError, res.String())
		default:
			record(t, fault.name, op, unclear, "want exit 3 naming the store: "+res.String())
		}
	}
}
