//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/backup"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage/s3"
)

// Memory bounds (docs/guarantees.md, "Memory"). A command's peak RSS is
// its buffers plus a constant: backup-push and restore hold at most one
// 8 MiB unit (backup.UnitSize) per job (--jobs, one per CPU) and the S3
// client at most Concurrency x PartSize of part buffers (4 x 8 MiB); the
// Go heap reaches twice what is live before a collection (GOGC=100: a
// backup-push of 2 jobs shows about 60 MB live, the next collection due at
// 120 MB). memConstant is the rest: the binary's pages, the runtime, the
// SDK's clients and the other live heap, twice (archive-get of one segment
// peaks at about 68 MiB with next to nothing buffered).
const (
	memConstant = 96 << 20
	// memGrowth is how much more a command may take on the largest
	// cluster than on the one before: nothing in the design grows with
	// the database but the manifest (a few hundred bytes per file and
	// per 8 MiB), so 1.25x for three times the data is generous.
	memGrowth = 1.25
	// memSegMB is the WAL segment size of the memory trial's clusters:
	// PostgreSQL's default, so archive-get moves a segment of the size
	// users run and the ballast's WAL takes few archive-push calls.
	memSegMB = 16
)

// memBound is the peak RSS allowed to any of the measured commands.
func memBound() int64 {
	jobs := int64(runtime.NumCPU())
	buffers := jobs*backup.UnitSize + s3.DefaultConcurrency*s3.DefaultPartSize
	return 2*buffers + memConstant
}

// memCluster is one database size the memory trial measures.
type memCluster struct {
	name string
	// ballastRows rows of about 100 bytes are added to the suite's small
	// cluster (about 25 MiB with its items table).
	ballastRows int
	// compare: the growth from the previous cluster is judged. The small
	// cluster's backup fits in one bundle object, so it never fills the
	// pipeline (jobs units, the part buffers) and its peak is no base to
	// grow from; the larger two both fill it.
	compare bool
}

// TestMemory runs backup-push, archive-get of one segment and restore on
// clusters of about 25 MiB, 330 MiB and 1 GiB and reads each process's
// peak RSS (getrusage's ru_maxrss): it must stay under memBound on every
// one, and grow by less than memGrowth from the 330 MiB cluster to the
// 1 GiB one. Each command's work is checked too: the backup restores and
// its rows are equal, the segment equals pg_wal's.
func TestMemory(t *testing.T) {
	s3env := needServices(t)
	t.Parallel()
	peaks := map[string]int64{} // command -> peak RSS on the previous cluster
	for _, mc := range []memCluster{
		{name: "small"},
		{name: "large", ballastRows: 3_000_000},
		{name: "larger", ballastRows: 9_000_000, compare: true},
	} {
		t.Run(mc.name, func(t *testing.T) { memTrial(t, s3env, mc, peaks) })
	}
}

func memTrial(t *testing.T, s3env testenv.S3Env, mc memCluster, peaks map[string]int64) {
	url := s3URL(s3env, testenv.UniquePrefix(t), s3env.Endpoint)
	prim := archivingPrimarySeg(t, url, memSegMB)
	want := fillItems(t, prim, 20000)
	if mc.ballastRows > 0 {
		psql(t, prim, fmt.Sprintf("CREATE TABLE ballast AS SELECT g AS id, md5(g::text) || md5((-g)::text) AS v FROM generate_series(1, %d) g", mc.ballastRows))
		psql(t, prim, "CHECKPOINT")
	}
	mib, err := strconv.ParseInt(psql(t, prim, "SELECT sum(pg_database_size(oid))::bigint >> 20 FROM pg_database"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	fault := func(command string) string { return fmt.Sprintf("%s, %d MiB db", command, mib) }
	const op = "memory"

	// judge records one command's peak against the bound and, on the
	// large cluster, against the small cluster's peak.
	judge := func(command string, res result, peak int64, problem, done string) {
		switch {
		case res.timedOut:
			record(t, fault(command), op, hang, res.String())
		case problem != "":
			record(t, fault(command), op, dataLost, problem)
		case res.code != 0:
			record(t, fault(command), op, unclear, "failed without a fault: "+res.String())
		case peak > memBound():
			record(t, fault(command), op, unclear, fmt.Sprintf("peak RSS %s over the bound %s", mibs(peak), mibs(memBound())))
		case mc.compare && float64(peak) > memGrowth*float64(peaks[command]):
			record(t, fault(command), op, unclear, fmt.Sprintf("peak RSS %s grows with the database: %s on the smaller cluster, more than %.2fx",
				mibs(peak), mibs(peaks[command]), memGrowth))
		default:
			why := fmt.Sprintf("peak RSS %s (bound %s), %s", mibs(peak), mibs(memBound()), done)
			if mc.compare {
				why += fmt.Sprintf("; %s on the smaller cluster", mibs(peaks[command]))
			}
			record(t, fault(command), op, ok, why)
		}
		peaks[command] = peak
	}

	cmd := prim.Command(context.Background(), walferryBin, "backup-push", "--repo", url, "--json")
	cmd.Dir = prim.DataDir
	res, peak := runRSS(t, cmd, backupLimit)
	id, stopWAL := backupID(res.stdout), backupStopWAL(res.stdout)
	judge("backup-push", res, peak, "", fmt.Sprintf("backup %s of %s in %s", id, mibs(jsonInt(res.stdout, "data_bytes")), res.dur.Round(time.Second)))
	if res.code != 0 {
		return
	}
	psql(t, prim, "SELECT pg_switch_wal()")

	dest := filepath.Join(prim.MkdirOwned(t, "got"), stopWAL)
	cmd = prim.Command(context.Background(), walferryBin, "archive-get", "--repo", url, stopWAL, dest)
	cmd.Dir = prim.DataDir
	res, peak = runRSS(t, cmd, segmentLimit)
	problem := ""
	if got, want := fileSum(t, dest), fileSum(t, filepath.Join(prim.DataDir, "pg_wal", stopWAL)); res.code == 0 && got != want {
		problem = fmt.Sprintf("archive-get of %s wrote sha256 %s, pg_wal holds %s", stopWAL, got, want)
	}
	judge("archive-get", res, peak, problem, stopWAL+" equal to pg_wal's")

	d := newRestoreTargetSeg(t, memSegMB)
	cmd = d.c.Command(context.Background(), walferryBin, "restore", id, "--repo", url, "--pgdata", d.c.DataDir, "--json")
	res, peak = runRSS(t, cmd, backupLimit)
	problem = ""
	if res.code == 0 && !res.timedOut {
		problem = d.check(t, want)
	}
	judge("restore", res, peak, problem, fmt.Sprintf("%s restored in %s, rows equal", mibs(jsonInt(res.stdout, "bytes")), res.dur.Round(time.Second)))
}

// runRSS is run, also returning the process's peak resident set size in
// bytes (ru_maxrss, KiB on Linux).
func runRSS(t *testing.T, cmd *exec.Cmd, limit time.Duration) (result, int64) {
	t.Helper()
	res := run(t, cmd, limit)
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatalf("no rusage for %s", cmd.Path)
	}
	return res, ru.Maxrss << 10
}

func mibs(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// jsonInt is a number field of what a command printed with --json (one
// object, or one per line: the last), 0 when it is missing.
func jsonInt(out, field string) int64 {
	out = strings.TrimSpace(out)
	var m map[string]any
	if json.Unmarshal([]byte(out), &m) != nil {
		lines := strings.Split(out, "\n")
		if json.Unmarshal([]byte(lines[len(lines)-1]), &m) != nil {
			return 0
		}
	}
	f, _ := m[field].(float64)
	return int64(f)
}
