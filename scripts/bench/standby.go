package main

// S1, S2: standby sites. One source cluster (a copy of the W3-W5 pgbench
// database) archives into a walferry repository and, for S1, into a
// pgBackRest repository too (both archive_commands, one after the other),
// both on the filesystem with the run's first compression; each tool takes
// one full backup of it, not timed.
//
//	S1  time to a consistent standby: walferry bootstrap --from repo, or
//	    pgbackrest restore --type=standby, into an empty directory, then
//	    start PostgreSQL and wait until it accepts read-only connections
//	    in recovery. Each round restores both tools' backups (the order
//	    alternates); the standby's pgbench_accounts is compared with the
//	    source's.
//	S2  how long after its commit on the primary a row is visible on the
//	    standby, under pgbench -c 2, for a standby fed by the archive only,
//	    by the repository with .partial objects (the primary's sidecar runs
//	    --wal-receive) and by streaming (the standby's sidecar switches it).

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// accountsSQL is S1's data check: the standby must give the source's.
const accountsSQL = "SELECT count(*) || '/' || sum(aid) || '/' || sum(abalance) FROM pgbench_accounts"

// S2's probe: a row every probeEvery on the primary, looked for on the
// standby every pollEvery.
const (
	probeEvery = 200 * time.Millisecond
	pollEvery  = 100 * time.Millisecond
	// lagArchiveTimeout is the primary's archive_timeout in S2.
	lagArchiveTimeout = 60
	// partialInterval is the primary sidecar's --partial-interval in S2 mode 2.
	partialInterval = "1s"
)

// S2's modes, in the order they run.
const (
	lagArchive   = "archive"
	lagPartial   = "partial"
	lagStreaming = "streaming"
)

var lagModes = []string{lagArchive, lagPartial, lagStreaming}

// standbyResults is what S1 and S2 measured.
type standbyResults struct {
	S1 []s1Result `json:"s1"`
	S2 []s2Result `json:"s2"`
	// The source, its backups.
	SourceBytes  int64              `json:"source_bytes"`
	BackupSecs   map[string]float64 `json:"backup_seconds"`
	BackupErrors []string           `json:"backup_errors,omitempty"`
}

type s1Result struct {
	Tool         string  `json:"tool"`
	Round        int     `json:"round"`
	RestoreSecs  float64 `json:"restore_seconds"` // bootstrap / pgbackrest restore
	StartSecs    float64 `json:"start_seconds"`   // pg_ctl start until a read-only query in recovery answers
	TotalSecs    float64 `json:"total_seconds"`   // both
	RestoredSize int64   `json:"restored_bytes"`  // the data directory after the restore
	Check        string  `json:"check"`           // "ok" or what differed
	Err          string  `json:"err,omitempty"`
}

type s2Result struct {
	Mode       string    `json:"mode"`
	LagMillis  []float64 `json:"lag_millis"` // one per probe row seen
	Probes     int       `json:"probes"`     // rows inserted in the window
	Unseen     int       `json:"unseen"`     // rows never seen on the standby
	SwitchSecs float64   `json:"switch_seconds,omitempty"`
	TPS        float64   `json:"tps"` // pgbench's, as it reports
	Err        string    `json:"err,omitempty"`
	Notes      []string  `json:"notes,omitempty"`
}

func (c *config) standbyRun() bool { return c.want["S1"] || c.want["S2"] }

// runStandby runs S1 and S2 on one source cluster.
func (c *config) runStandby() (*standbyResults, error) {
	res := &standbyResults{BackupSecs: map[string]float64{}}
	comp := c.compressions[0]
	k := &cluster{c: c, tool: "walferry", store: "fs", comp: comp, name: "standby-source",
		dir: filepath.Join(c.work, "standby", "source")}
	k.pgdata = filepath.Join(k.dir, "pg")
	var err error
	if k.port, err = c.freePort(); err != nil {
		return res, err
	}
	defer k.teardown()
	fmt.Fprintf(os.Stderr, "bench: S1-S2: source cluster (copy of the W3-W5 cluster), archiving into walferry's%s repository (fs, %s)\n",
		map[bool]string{true: " and pgBackRest's", false: ""}[c.want["S1"]], comp)
	if err := k.prepareSource(c.want["S1"]); err != nil {
		return res, fmt.Errorf("S1-S2 source: %w", err)
	}
	res.SourceBytes = dirBytes(k.pgdata)
	tools := []string{"walferry"}
	if c.want["S1"] {
		tools = append(tools, "pgBackRest")
	}
	for _, tool := range tools {
		t0 := time.Now()
		var argv []string
		if tool == "walferry" {
			argv = []string{c.walferry, "backup-push", "--jobs", strconv.Itoa(backupJobs)}
		} else {
			argv = []string{c.pgbackrest, "--config=" + k.conf, "--stanza=bench", "--type=full", "backup"}
		}
		if _, err := k.asPG(argv...); err != nil {
			return res, fmt.Errorf("S1-S2: %s full backup: %w", tool, err)
		}
		res.BackupSecs[tool] = time.Since(t0).Seconds()
		fmt.Fprintf(os.Stderr, "bench: S1-S2: %s full backup (not timed) in %.1f s\n", tool, res.BackupSecs[tool])
	}
	if c.want["S1"] {
		want, err := k.psql(k.port, accountsSQL)
		if err != nil {
			return res, err
		}
		for round := 1; round <= c.standbyRounds; round++ {
			order := []string{"pgBackRest", "walferry"}
			if round%2 == 0 {
				order[0], order[1] = order[1], order[0]
			}
			for _, tool := range order {
				r := k.s1Round(tool, round, want)
				res.S1 = append(res.S1, r)
				fmt.Fprintf(os.Stderr, "bench: S1 %-10s round %d: restore %.2f s + start to consistent %.2f s = %.2f s, check %s%s\n",
					tool, round, r.RestoreSecs, r.StartSecs, r.TotalSecs, r.Check, errText(r.Err))
			}
		}
	}
	if c.want["S2"] {
		// The walferry repository only, from now on, and a switch every
		// archive_timeout at the latest.
		if _, err := k.psql(k.port, "ALTER SYSTEM SET archive_command = '"+c.walferry+" archive-push %p'"); err != nil {
			return res, err
		}
		if _, err := k.psql(k.port, "SELECT pg_reload_conf()"); err != nil {
			return res, err
		}
		for _, mode := range lagModes {
			r := k.s2Mode(mode)
			res.S2 = append(res.S2, r)
			fmt.Fprintf(os.Stderr, "bench: S2 %-9s %d probes, %d seen, lag ms p50 %.0f p95 %.0f max %.0f, %d unseen, pgbench %.0f tps%s\n",
				mode, r.Probes, len(r.LagMillis), percentile(r.LagMillis, 50), percentile(r.LagMillis, 95),
				percentile(r.LagMillis, 100), r.Unseen, r.TPS, errText(r.Err))
		}
	}
	return res, nil
}

func errText(s string) string {
	if s == "" {
		return ""
	}
	return " ERROR: " + s
}

// prepareSource copies the workload cluster and starts it archiving into
// walferry's repository and, withPgBackRest, into pgBackRest's too.
func (k *cluster) prepareSource(withPgBackRest bool) error {
	c := k.c
	if err := os.MkdirAll(k.dir, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", c.backupTemplate, k.pgdata).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s: %w: %s", c.backupTemplate, err, out)
	}
	os.Remove(filepath.Join(k.pgdata, "postmaster.pid"))
	vdir := filepath.Join(k.dir, "tool")
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		return err
	}
	k.url = c.walferryURL("fs", "/standby")
	k.env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + c.as.home, "USER=postgres", "LOGNAME=postgres", "LC_ALL=C",
		"PGDATA=" + k.pgdata, "PGHOST=" + c.sockDir, "PGPORT=" + strconv.Itoa(k.port),
		"PGUSER=postgres", "PGDATABASE=postgres",
		"WALFERRY_REPO=" + k.url, "WALFERRY_COMPRESSION=" + walferryCompression(k.comp),
	}
	if err := os.MkdirAll(filepath.Dir(strings.TrimPrefix(k.url, "file://")), 0o755); err != nil {
		return err
	}
	archiveCommand := c.walferry + " archive-push %p"
	if withPgBackRest {
		k.conf = filepath.Join(vdir, "pgbackrest.conf")
		if err := os.WriteFile(k.conf, []byte(k.pgbackrestConf("/standby", vdir)), 0o600); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(c.work, "repos", "pgbackrest", "standby"), 0o750); err != nil {
			return err
		}
		archiveCommand += " && " + c.pgbackrest + " --config=" + k.conf + " --stanza=bench archive-push %p"
	}
	conf := fmt.Sprintf("\n# bench: S1-S2 source\nport = %d\narchive_mode = on\narchive_command = '%s'\narchive_timeout = %d\n",
		k.port, archiveCommand, lagArchiveTimeout)
	f, err := os.OpenFile(filepath.Join(k.pgdata, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	f.Close()
	if err != nil {
		return err
	}
	// The standbys' logs go next to their data directories, in k.dir's parent.
	if err := c.chownTree(filepath.Dir(k.dir), filepath.Join(c.work, "repos")); err != nil {
		return err
	}
	if err := k.startServer(k.pgdata, filepath.Join(k.dir, "server.log")); err != nil {
		return err
	}
	if _, err := k.asPG(c.walferry, "repo", "init", "--pgdata", k.pgdata); err != nil {
		return err
	}
	if withPgBackRest {
		if _, err := k.asPG(c.pgbackrest, "--config="+k.conf, "--stanza=bench", "stanza-create"); err != nil {
			return err
		}
	}
	for _, sql := range []string{
		"CREATE TABLE bench_probe (id bigint PRIMARY KEY, ts timestamptz NOT NULL)",
		"SELECT pg_switch_wal()", "CHECKPOINT",
	} {
		if _, err := k.psql(k.port, sql); err != nil {
			return err
		}
	}
	return k.waitArchived()
}

// startStandby starts the standby in dest on port (archiving off: a
// standby's restored postgresql.conf is the source's) and waits until it
// answers a read-only query in recovery, that is until it is consistent.
func (k *cluster) startStandby(dest string, port int, timeout time.Duration) error {
	opts := fmt.Sprintf("-c port=%d -c archive_mode=off -c listen_addresses='' -c unix_socket_directories=%s", port, k.c.sockDir)
	// pg_ctl -w returns once a hot standby accepts connections; the
	// query below is the proof.
	if _, err := k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", dest, "-l", dest+".log", "-w",
		"-t", strconv.Itoa(int(timeout.Seconds())), "-o", opts, "start"); err != nil {
		return fmt.Errorf("standby did not start: %s (%s)", k.short(err), strings.ReplaceAll(dest+".log", k.c.work, "$WORK"))
	}
	deadline := time.Now().Add(timeout)
	for {
		s, err := k.psql(port, "SELECT pg_is_in_recovery()")
		if err == nil && s == "t" {
			return nil
		}
		if err == nil {
			return fmt.Errorf("pg_is_in_recovery() = %s: not a standby", s)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("standby not consistent after %s: %s", timeout, k.short(err))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (k *cluster) stopStandby(dest string) {
	k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", dest, "-m", "immediate", "-w", "stop")
}

// s1Round restores tool's backup as a standby and starts it.
func (k *cluster) s1Round(tool string, round int, want string) s1Result {
	r := s1Result{Tool: tool, Round: round}
	dest := filepath.Join(k.c.work, "standby", fmt.Sprintf("s1-%s-r%d", strings.ToLower(tool), round))
	if err := k.emptyDir(dest); err != nil {
		r.Err = err.Error()
		return r
	}
	defer os.RemoveAll(dest)
	port, err := k.c.freePort()
	if err != nil {
		r.Err = err.Error()
		return r
	}
	var argv []string
	if tool == "walferry" {
		// The repository only: no --source-conn, no slot.
		argv = []string{k.c.walferry, "bootstrap", "--from", "repo", "--pgdata", dest, "--no-slot",
			"--jobs", strconv.Itoa(backupJobs), "--json"}
	} else {
		argv = []string{k.c.pgbackrest, "--config=" + k.conf, "--stanza=bench", "--pg1-path=" + dest, "--type=standby", "restore"}
	}
	exec.Command("sync").Run()
	t0 := time.Now()
	out, err := k.asPG(argv...)
	os.WriteFile(filepath.Join(k.c.work, "logs", fmt.Sprintf("s1-%s-r%d.out", strings.ToLower(tool), round)), []byte(out+"\n"), 0o644)
	if err != nil {
		r.Err = k.short(err)
		return r
	}
	t1 := time.Now()
	r.RestoreSecs = t1.Sub(t0).Seconds()
	err = k.startStandby(dest, port, 10*time.Minute)
	defer k.stopStandby(dest)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.StartSecs = time.Since(t1).Seconds()
	r.TotalSecs = time.Since(t0).Seconds()
	r.RestoredSize = dirBytes(dest)
	got, err := k.psql(port, accountsSQL)
	switch {
	case err != nil:
		r.Check = "query: " + k.short(err)
	case got != want:
		r.Check = fmt.Sprintf("MISMATCH: %s, source %s", got, want)
	default:
		r.Check = "ok"
	}
	return r
}

// daemon is a long-running process of the benchmark (a sidecar, pgbench).
type daemon struct {
	cmd  *exec.Cmd
	done chan error
}

func (k *cluster) startDaemon(logName string, argv ...string) (*daemon, error) {
	logf, err := os.OpenFile(filepath.Join(k.c.work, "logs", logName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = k.env, k.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: k.c.as.uid, Gid: k.c.as.gid}}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	d := &daemon{cmd: cmd, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait(); logf.Close() }()
	return d, nil
}

// stop sends SIGTERM, then SIGKILL after grace.
func (d *daemon) stop(grace time.Duration) {
	if d == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(grace):
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (k *cluster) connString(port int) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", k.c.sockDir, port)
}

// s2Mode builds a standby of the source for mode and measures its lag.
func (k *cluster) s2Mode(mode string) (r s2Result) {
	r = s2Result{Mode: mode}
	c := k.c
	fail := func(err error) s2Result {
		r.Err = strings.ReplaceAll(err.Error(), c.work, "$WORK")
		return r
	}
	dest := filepath.Join(c.work, "standby", "s2-"+mode)
	if err := k.emptyDir(dest); err != nil {
		return fail(err)
	}
	defer os.RemoveAll(dest)
	port, err := c.freePort()
	if err != nil {
		return fail(err)
	}
	source := fmt.Sprintf("host=%s port=%d user=postgres", c.sockDir, k.port)
	const slot = "bench_s2"
	args := []string{c.walferry, "bootstrap", "--from", "repo", "--pgdata", dest, "--jobs", strconv.Itoa(backupJobs), "--json"}
	switch mode {
	case lagArchive:
		args = append(args, "--no-slot")
	case lagPartial:
		args = append(args, "--no-slot", "--partial")
		// The primary's sidecar streams its WAL into the repository.
		d, err := k.startDaemon("s2-primary-sidecar.log", c.walferry, "sidecar", "--pgdata", k.pgdata, "--pg-conn", k.connString(k.port),
			"--listen", "", "--wal-receive", "--partial-interval", partialInterval, "--log-format", "text", "--log-level", "info")
		if err != nil {
			return fail(err)
		}
		defer func() {
			d.stop(30 * time.Second)
			k.psql(k.port, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'walferry_receiver'")
		}()
	case lagStreaming:
		args = append(args, "--source-conn", source, "--slot", slot)
		defer k.psql(k.port, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '"+slot+"'")
	}
	out, err := k.asPG(args...)
	os.WriteFile(filepath.Join(c.work, "logs", "s2-"+mode+"-bootstrap.out"), []byte(out+"\n"), 0o644)
	if err != nil {
		return fail(fmt.Errorf("bootstrap: %s", k.short(err)))
	}
	err = k.startStandby(dest, port, 10*time.Minute)
	defer k.stopStandby(dest)
	if err != nil {
		return fail(err)
	}
	if mode == lagStreaming {
		t0 := time.Now()
		d, err := k.startDaemon("s2-standby-sidecar.log", c.walferry, "sidecar", "--pgdata", dest, "--pg-conn", k.connString(port),
			"--source-conn", source, "--slot", slot, "--listen", "", "--log-format", "text", "--log-level", "info")
		if err != nil {
			return fail(err)
		}
		defer d.stop(30 * time.Second)
		for {
			s, _ := k.psql(port, "SELECT status FROM pg_stat_wal_receiver")
			if s == "streaming" {
				break
			}
			if time.Since(t0) > 3*time.Minute {
				return fail(fmt.Errorf("standby not streaming 3 minutes after its sidecar started (wal receiver: %q)", s))
			}
			time.Sleep(100 * time.Millisecond)
		}
		r.SwitchSecs = time.Since(t0).Seconds()
		fmt.Fprintf(os.Stderr, "bench: S2 %s: streaming %.1f s after the sidecar started\n", mode, r.SwitchSecs)
	}

	ctx := context.Background()
	prim, err := pgx.Connect(ctx, k.connString(k.port))
	if err != nil {
		return fail(err)
	}
	defer prim.Close(ctx)
	var last int64
	if err := prim.QueryRow(ctx, "SELECT coalesce(max(id), 0) FROM bench_probe").Scan(&last); err != nil {
		return fail(err)
	}
	// Catch up first: a marker row, a switch (archived at once), and the
	// standby must see it.
	marker := last + 1
	if _, err := prim.Exec(ctx, "INSERT INTO bench_probe VALUES ($1, clock_timestamp())", marker); err != nil {
		return fail(err)
	}
	if _, err := prim.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		return fail(err)
	}
	w := &watcher{conn: k.connString(port), after: marker - 1}
	t0 := time.Now()
	for w.seen(ctx)[marker] == 0 {
		if time.Since(t0) > 5*time.Minute {
			return fail(fmt.Errorf("the standby did not catch up in 5 minutes (%s)", strings.ReplaceAll(dest+".log", c.work, "$WORK")))
		}
		time.Sleep(pollEvery)
	}
	fmt.Fprintf(os.Stderr, "bench: S2 %s: standby caught up in %.1f s; %d s of pgbench -c 2 with a probe row every %s\n",
		mode, time.Since(t0).Seconds(), int(c.lagSeconds.Seconds()), probeEvery)

	// The window: pgbench, the probe rows, the standby's poll.
	// pgbench goes on after the window while the last probe rows are
	// awaited (stopped then), so every row is seen under the same load.
	graceFor := time.Duration(lagArchiveTimeout+60) * time.Second
	pgb := []string{filepath.Join(c.pgbin, "pgbench"), "-n", "-c", "2", "-j", "2", "-T", strconv.Itoa(int((c.lagSeconds + graceFor).Seconds())),
		"-h", c.sockDir, "-p", strconv.Itoa(k.port), "-U", "postgres"}
	if c.lagTPS > 0 {
		pgb = append(pgb, "-R", strconv.Itoa(c.lagTPS))
	}
	pgb = append(pgb, "postgres")
	pgbOut, err := os.CreateTemp(filepath.Join(c.work, "logs"), "s2-"+mode+"-pgbench-*.log")
	if err != nil {
		return fail(err)
	}
	pgbOut.Close()
	var hist0, hist1 int64
	if err := prim.QueryRow(ctx, "SELECT count(*) FROM pgbench_history").Scan(&hist0); err != nil {
		return fail(err)
	}
	pd, err := k.startDaemon(filepath.Base(pgbOut.Name()), pgb...)
	if err != nil {
		return fail(err)
	}
	defer pd.stop(10 * time.Second)
	w.after = marker
	stopPoll := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(pollEvery)
		defer t.Stop()
		for {
			w.seen(ctx)
			select {
			case <-stopPoll:
				return
			case <-t.C:
			}
		}
	}()
	// A probe row every probeEvery on average, at uniformly spread
	// moments (probeEvery +- a quarter), so that the rows fall anywhere
	// between two polls: the poll adds 0 to pollEvery to every lag.
	id := marker
	start := time.Now()
	end := start.Add(c.lagSeconds)
	rnd := rand.New(rand.NewPCG(uint64(start.UnixNano()), 2))
	for time.Now().Before(end) {
		id++
		if _, err := prim.Exec(ctx, "INSERT INTO bench_probe VALUES ($1, clock_timestamp())", id); err != nil {
			r.Notes = append(r.Notes, "probe insert: "+err.Error())
			id--
		}
		time.Sleep(probeEvery*3/4 + time.Duration(rnd.Int64N(int64(probeEvery/2))))
	}
	r.Probes = int(id - marker)
	if err := prim.QueryRow(ctx, "SELECT count(*) FROM pgbench_history").Scan(&hist1); err == nil {
		r.TPS = float64(hist1-hist0) / time.Since(start).Seconds()
	}
	// Rows of the window's end reach an archive-fed standby up to
	// archive_timeout later: wait for them, pgbench still running.
	grace := time.Now().Add(graceFor)
	for time.Now().Before(grace) && w.count(marker+1, id) < r.Probes {
		time.Sleep(pollEvery)
	}
	close(stopPoll)
	wg.Wait()
	r.LagMillis, r.Unseen = w.lags(marker+1, id)
	select {
	case err := <-pd.done:
		r.Notes = append(r.Notes, fmt.Sprintf("pgbench ended before the last probe row was seen: %v (%s)", err, pgbOut.Name()))
		pd.done <- err
	default:
	}
	return r
}

// watcher polls the standby for probe rows and records when it first saw
// each one.
type watcher struct {
	conn  string
	after int64 // the highest id seen so far
	mu    sync.Mutex
	first map[int64]float64 // id -> lag, ms
	db    *pgx.Conn
}

// seen polls once and returns the ids seen so far and their lag.
func (w *watcher) seen(ctx context.Context) map[int64]float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.first == nil {
		w.first = map[int64]float64{}
	}
	if w.db == nil {
		db, err := pgx.Connect(ctx, w.conn)
		if err != nil {
			return w.first
		}
		w.db = db
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := w.db.Query(qctx, "SELECT id, extract(epoch FROM ts)::float8 FROM bench_probe WHERE id > $1 ORDER BY id", w.after)
	if err != nil {
		w.db.Close(ctx) // a recovery conflict, the standby restarting: connect again next time
		w.db = nil
		return w.first
	}
	now := float64(time.Now().UnixNano()) / 1e9
	for rows.Next() {
		var id int64
		var ts float64
		if rows.Scan(&id, &ts) != nil {
			break
		}
		if _, ok := w.first[id]; !ok {
			w.first[id] = (now - ts) * 1000
		}
		w.after = max(w.after, id)
	}
	if rows.Err() != nil {
		w.db.Close(ctx)
		w.db = nil
	}
	rows.Close()
	return w.first
}

func (w *watcher) count(from, to int64) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for id := from; id <= to; id++ {
		if _, ok := w.first[id]; ok {
			n++
		}
	}
	return n
}

func (w *watcher) lags(from, to int64) (lags []float64, unseen int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id := from; id <= to; id++ {
		if l, ok := w.first[id]; ok {
			lags = append(lags, l)
		} else {
			unseen++
		}
	}
	sort.Float64s(lags)
	return lags, unseen
}

// saveJSON writes a group's raw numbers next to results.json and returns
// the group's error runErr, else the write's.
func (c *config) saveJSON(name string, res any, runErr error) error {
	raw, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(c.work, name), raw, 0o644); runErr == nil {
		return err
	}
	return runErr
}
