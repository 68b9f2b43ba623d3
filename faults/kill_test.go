//go:build faults

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/walferry/walferry/internal/testenv"
)

// killTrials is how many times each command is killed with SIGKILL.
const killTrials = 20

// killAt starts cmd, sends its process group SIGKILL after delay unless it
// ended first, and returns how it ended and whether the kill struck it.
func killAt(t *testing.T, cmd *exec.Cmd, delay, limit time.Duration) (result, bool) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: credentialOf(cmd)}
	// killed is written by the timer's goroutine; fired is closed when
	// that goroutine is done, so reading killed after a Stop that came too
	// late waits for the write instead of racing it (a kill sent but not
	// yet recorded once read as "not killed, failed").
	var killed bool
	fired := make(chan struct{})
	timer := time.AfterFunc(delay, func() {
		defer close(fired)
		if cmd.Process != nil {
			killed = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) == nil
		}
	})
	res := run(t, cmd, limit)
	if !timer.Stop() {
		<-fired
	}
	return res, killed && res.code == -1
}

// credentialOf keeps the OS user pgtest's Command set.
func credentialOf(cmd *exec.Cmd) *syscall.Credential {
	if cmd.SysProcAttr == nil {
		return nil
	}
	return cmd.SysProcAttr.Credential
}

// randDelay returns a random duration in [0, max).
func randDelay(r *rand.Rand, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(r.Int64N(int64(max)))
}

// TestKill kills archive-push, backup-push, restore and the daemon with
// SIGKILL at random points (the suite's seed is printed), 20 times each.
// After each kill the same work runs again without a kill and must
// succeed, and the data is checked: every segment reported archived is in
// the repository with its exact bytes, every listed backup verifies, a
// restore run again gives the rows of the backup.
func TestKill(t *testing.T) {
	s3 := needServices(t)
	t.Parallel() // beside TestLoad's ten minutes
	t.Run("archive-push", func(t *testing.T) { t.Parallel(); killArchivePush(t, s3) })
	t.Run("daemon", func(t *testing.T) { t.Parallel(); killDaemon(t, s3) })
	t.Run("backup-push", func(t *testing.T) { t.Parallel(); killBackupPush(t, s3) })
	t.Run("restore", func(t *testing.T) { t.Parallel(); killRestore(t, s3) })
}

const killFault = "kill -9"

func killArchivePush(t *testing.T, s3 testenv.S3Env) {
	r := rng(t)
	src, segs := walSource(t, killTrials+2)
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	mustWF(t, src, "repo", "init", "--repo", url, "--pgdata", src.DataDir)
	rp := openRepo(t, url)
	lone := time.Second
	var pushed []string
	for i := 0; i < killTrials; i++ {
		seg := segs[i]
		// The segment and the next are .ready: the kill lands in its
		// upload or in the look-ahead upload of the next.
		setReady(t, src, segs, map[string]bool{seg: true, segs[i+1]: true})
		cmd := src.Command(context.Background(), walferryBin, "archive-push", "--repo", url, "pg_wal/"+seg)
		cmd.Dir = src.DataDir
		res, killed := killAt(t, cmd, randDelay(r, lone), segmentLimit)
		if !killed {
			lone = min(lone, res.dur)
		}
		why := ""
		if res.code == 0 {
			pushed = append(pushed, seg)
		} else if !killed {
			why = "archive-push (not killed) failed: " + res.String()
		}
		if p := checkWAL(t, rp, src, pushed); p != "" && why == "" {
			why = "after the kill: " + p
		}
		again := wf(t, src, segmentLimit, "archive-push", "--repo", url, "pg_wal/"+seg)
		if again.code != 0 && why == "" {
			why = "the push after the kill failed: " + again.String()
		} else if again.code == 0 {
			pushed = append(pushed, seg)
		}
		if p := checkWAL(t, rp, src, pushed); p != "" && why == "" {
			why = "after the push following the kill: " + p
		}
		if why != "" {
			record(t, killFault, "archive-push", dataLost, why)
		} else {
			record(t, killFault, "archive-push", ok, fmt.Sprintf("%s killed=%v, pushed again, bytes equal", seg, killed))
		}
	}
}

func killDaemon(t *testing.T, s3 testenv.S3Env) {
	r := rng(t)
	src, segs := walSource(t, 2*killTrials+2)
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	mustWF(t, src, "repo", "init", "--repo", url, "--pgdata", src.DataDir)
	rp := openRepo(t, url)
	sock := filepath.Join(src.MkdirOwned(t, "run"), "walferry.sock")
	var pushed []string
	for i := 0; i < killTrials; i++ {
		seg, next := segs[2*i], segs[2*i+1]
		setReady(t, src, segs, map[string]bool{seg: true, next: true})
		daemon := src.Command(context.Background(), walferryBin, "daemon", "--socket", sock, "--pgdata", src.DataDir, "--repo", url)
		daemon.SysProcAttr.Setpgid = true
		log, err := os.CreateTemp("", "daemon-*.log")
		if err != nil {
			t.Fatal(err)
		}
		daemon.Stdout, daemon.Stderr = log, log
		if err := daemon.Start(); err != nil {
			t.Fatal(err)
		}
		waitSocket(t, sock, 30*time.Second)
		// The hook hands the segment to the daemon, which uploads it and
		// the next one (look-ahead); the daemon dies at a random point.
		delay := randDelay(r, 1500*time.Millisecond)
		killer := time.AfterFunc(delay, func() { syscall.Kill(-daemon.Process.Pid, syscall.SIGKILL) })
		env := []string{"WALFERRY_REPO=" + url}
		res := wfEnv(t, src, segmentLimit, env, "archive-push", "--socket", sock, "pg_wal/"+seg)
		killer.Stop()
		syscall.Kill(-daemon.Process.Pid, syscall.SIGKILL)
		daemon.Wait()
		log.Close()
		os.Remove(log.Name())
		why := ""
		if res.code != 0 {
			why = "the hook's archive-push failed while the daemon was killed: " + res.String()
		} else {
			pushed = append(pushed, seg)
		}
		// PostgreSQL's next call, with the daemon gone: standalone.
		if res2 := wfEnv(t, src, segmentLimit, env, "archive-push", "--socket", sock, "pg_wal/"+next); res2.code != 0 && why == "" {
			why = "the next archive-push without the daemon failed: " + res2.String()
		} else if res2.code == 0 {
			pushed = append(pushed, next)
		}
		if p := checkWAL(t, rp, src, pushed); p != "" && why == "" {
			why = p
		}
		if why != "" {
			record(t, killFault, "daemon", dataLost, why)
		} else {
			record(t, killFault, "daemon", ok, fmt.Sprintf("daemon killed after %s; %s and %s archived, bytes equal", delay.Round(time.Millisecond), seg, next))
		}
	}
}

// waitSocket waits until path exists.
func waitSocket(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon's socket %s did not appear within %s", path, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func killBackupPush(t *testing.T, s3 testenv.S3Env) {
	r := rng(t)
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	prim := archivingPrimary(t, url)
	fillItems(t, prim, 20000)
	took := 3 * time.Second
	for i := 0; i < killTrials; i++ {
		cmd := prim.Command(context.Background(), walferryBin, "backup-push", "--repo", url, "--json")
		cmd.Dir = prim.DataDir
		res, killed := killAt(t, cmd, randDelay(r, took), backupLimit)
		if !killed && res.code == 0 {
			took = min(took, res.dur)
		}
		why := ""
		if !killed && res.code != 0 {
			why = "backup-push (not killed) failed: " + res.String()
		}
		// Every listed backup must verify; the next backup-push must
		// succeed (it takes over the dead holder's lease).
		again := wf(t, prim, backupLimit, "backup-push", "--repo", url, "--json")
		if again.code != 0 && why == "" {
			why = "the backup-push after the kill failed: " + again.String()
		}
		if v := wf(t, prim, backupLimit, "verify", "--repo", url); v.code != 0 && why == "" {
			why = "verify after the kill: " + v.String()
		}
		if why != "" {
			record(t, killFault, "backup-push", dataLost, why)
		} else {
			record(t, killFault, "backup-push", ok, fmt.Sprintf("killed=%v; next backup-push ok, every listed backup verifies", killed))
		}
	}
	// Row check: the newest backup restores to the table's rows.
	want := digest(t, prim)
	psql(t, prim, "SELECT pg_switch_wal()")
	d := newRestoreTarget(t)
	ids := backupList(t, prim, url)
	if res := d.restore(t, backupLimit, nil, url, ids[len(ids)-1]); res.code != 0 {
		record(t, killFault, "backup-push", dataLost, "the newest backup after the kills does not restore: "+res.String())
	} else if p := d.check(t, want); p != "" {
		record(t, killFault, "backup-push", dataLost, "the newest backup after the kills: "+p)
	}
}

func killRestore(t *testing.T, s3 testenv.S3Env) {
	r := rng(t)
	url := s3URL(s3, testenv.UniquePrefix(t), s3.Endpoint)
	prim := archivingPrimary(t, url)
	want := fillItems(t, prim, 20000)
	id := backupID(mustWF(t, prim, "backup-push", "--repo", url, "--json").stdout)
	psql(t, prim, "SELECT pg_switch_wal()")
	d := newRestoreTarget(t)
	took := 3 * time.Second
	for i := 0; i < killTrials; i++ {
		d.clear(t)
		cmd := d.c.Command(context.Background(), walferryBin, "restore", id, "--repo", url, "--pgdata", d.c.DataDir, "--json")
		res, killed := killAt(t, cmd, randDelay(r, took), backupLimit)
		if !killed && res.code == 0 {
			took = min(took, res.dur)
		}
		why := ""
		switch {
		case !killed && res.code != 0:
			why = "restore (not killed) failed: " + res.String()
		case killed && d.startable() && !exists(filepath.Join(d.c.DataDir, "backup_label")):
			why = "a killed restore left global/pg_control without backup_label: PostgreSQL would start from the wrong checkpoint"
		}
		if why == "" {
			if again := d.restore(t, backupLimit, nil, url, id, "--delta"); again.code != 0 {
				why = "the restore --delta after the kill failed: " + again.String()
			} else if p := d.check(t, want); p != "" {
				why = "after restore --delta: " + p
			}
		}
		if why != "" {
			record(t, killFault, "restore", dataLost, why)
		} else {
			record(t, killFault, "restore", ok, fmt.Sprintf("killed=%v after %s; restore --delta then rows equal", killed, res.dur.Round(time.Millisecond)))
		}
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
