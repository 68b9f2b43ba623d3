package main

// W3-W5: base backups and their restore, walferry side by side with
// pgBackRest. For every store, compression and tool, a copy of the
// workload cluster (pgbench -i, stopped, made by run.sh) is started with
// the tool's own archive_command pushing into the tool's own repository,
// so each backup pays for its fast checkpoint and for its wait until the
// WAL it needs is archived, as in production. Both tools' copies then see
// the same sequence: W3 full backup, W4 restore of it into an empty
// directory, the same UPDATE of 5% of pgbench_accounts and a CHECKPOINT,
// W5 incremental backup. Every restore is checked (not timed): the
// restored cluster is started, recovers from the tool's archive, and a
// digest of the tables must equal the source's.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// updateSQL is W5's data change: 5% of the rows of pgbench_accounts at
// scale 100, one range of aid.
const updateSQL = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 500000"

// digestSQL fingerprints the pgbench tables; a restore is right when the
// restored cluster gives the source's digest.
const digestSQL = `SELECT (SELECT count(*) || '/' || sum(abalance) || '/' || sum(hashtext(a::text)::bigint) FROM pgbench_accounts a)
 || ' ' || (SELECT sum(hashtext(b::text)::bigint) FROM pgbench_branches b)
 || ' ' || (SELECT sum(hashtext(t::text)::bigint) FROM pgbench_tellers t)`

// backupJobs is both tools' parallelism: pgBackRest process-max, walferry --jobs.
const backupJobs = 2

// dataset is the cluster a group of backup workloads copies: the pgbench
// database of W3-W5, or the many-files cluster of W6-W7 (thousands of
// small tables, one 8 KiB file each).
type dataset struct {
	name                string // in the copies' names ("" for pgbench)
	template            string // the stopped cluster
	dataBytes           int64
	full, restore, incr string // the workloads; restore "" when not measured
	update              string // the change before the incremental backup
	digest              string // fingerprint of the data, compared after a restore
}

func (c *config) pgbenchSet() dataset {
	return dataset{template: c.backupTemplate, dataBytes: c.backupDataBytes,
		full: workBackupFull, restore: workRestore, incr: workBackupIncr, update: updateSQL, digest: digestSQL}
}

// manyUpdateSQL changes one row in every 100th table of the many-files
// cluster (1% of its tables).
func manyUpdateSQL(tables int) string {
	return fmt.Sprintf("DO $$ BEGIN FOR i IN 1..%d BY 100 LOOP EXECUTE format('UPDATE mf_%%s SET v = v + 1', i); END LOOP; END $$", tables)
}

// manyDigestSQL calls the digest function run.sh creates in the
// many-files cluster: tables, rows and a checksum of every row.
const manyDigestSQL = "SELECT mf_digest()"

func (c *config) manySet() dataset {
	return dataset{name: "many", template: c.manyTemplate, dataBytes: c.manyDataBytes,
		full: workManyFull, incr: workManyIncr, update: manyUpdateSQL(c.manyTables), digest: manyDigestSQL}
}

// cluster is one tool's copy of the workload cluster and its repository.
type cluster struct {
	c                    *config
	set                  dataset
	tool, store, comp    string
	name, dir, pgdata    string
	port                 int
	env                  []string // the server's and the tool's commands' environment
	conf                 string   // pgBackRest: its configuration file
	url                  string   // walferry: the repository URL
	sizeURL, sizePrefix  string   // where the tool keeps its backups, to measure them
	restoreOK            bool     // the tool has a restore command
	round                int      // 1..rounds; restores are checked in round 1
	srcDigest, updDigest string
}

// runBackups runs W3-W5 for every store, compression and tool, in rounds
// (each round on fresh copies and fresh repositories; the report gives the
// median). The order of the two tools alternates from one group and one
// round to the next, so the drift of the shared machine's load does not
// always favour the same tool. Restores are checked in the first round.
func (c *config) runBackups() ([]Result, error) {
	var out []Result
	for round := 1; round <= c.rounds; round++ {
		i := round - 1
		for _, store := range c.stores {
			for _, comp := range c.compressions {
				tools := []string{"pgBackRest", "walferry"}
				if i%2 == 1 {
					tools[0], tools[1] = tools[1], tools[0]
				}
				i++
				var sets []dataset
				if c.want["W3"] {
					sets = append(sets, c.pgbenchSet())
				}
				if c.want["W6"] {
					sets = append(sets, c.manySet())
				}
				for _, set := range sets {
					for _, tool := range tools {
						rs, err := c.runBackupTool(set, tool, store, comp, round)
						out = append(out, rs...)
						if err != nil {
							return out, fmt.Errorf("%s %s %s %s round %d: %w", set.full, tool, store, comp, round, err)
						}
					}
				}
			}
		}
	}
	return out, nil
}

func (c *config) runBackupTool(set dataset, tool, store, comp string, round int) ([]Result, error) {
	name := fmt.Sprintf("%s-%s-%s-r%d", strings.ToLower(store), comp, strings.ToLower(tool), round)
	if set.name != "" {
		name = set.name + "-" + name
	}
	k := &cluster{c: c, set: set, tool: tool, store: store, comp: comp, name: name, round: round,
		dir: filepath.Join(c.work, "backup", name)}
	k.pgdata = filepath.Join(k.dir, "pg")
	var err error
	if k.port, err = c.freePort(); err != nil {
		return nil, err
	}
	defer k.teardown()
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	fmt.Fprintf(os.Stderr, "bench: %s: copying the workload cluster and starting it with %s's archive_command\n", name, tool)
	if err := step("prepare", k.prepare()); err != nil {
		return nil, err
	}

	var out []Result
	record := func(r Result) {
		out = append(out, r)
	}
	// W3: full backup.
	full, err := k.measure(set.full, k.backupArgv(false))
	if err != nil {
		return out, err
	}
	if full.Err == "" {
		full.StoredBytes, full.StoredObjs, err = k.deltaCount(0, 0)
		if err != nil {
			full.Notes = append(full.Notes, "repository size: "+err.Error())
		}
	}
	full.DataBytes = set.dataBytes
	record(full)
	if full.Err != "" {
		return out, nil // nothing to restore or to build on; the report shows why
	}
	if round == 1 {
		if k.srcDigest, err = k.psql(k.port, set.digest); err != nil {
			return out, step("digest", err)
		}
	}

	// W4: restore of the full backup into an empty directory.
	if set.restore != "" && c.want[workloadName[set.restore]] {
		if !k.restoreOK {
			r := Result{Spec: k.spec(workRestore, nil), Err: "walferry restore is not in this build"}
			fmt.Fprintf(os.Stderr, "bench: %-11s %-6s %-4s %-10s skipped: %s\n", workRestore, store, comp, tool, r.Err)
			record(r)
		} else {
			dest := filepath.Join(k.dir, "restore")
			if err := k.emptyDir(dest); err != nil {
				return out, err
			}
			r, err := k.measure(workRestore, k.restoreArgv(dest))
			if err != nil {
				return out, err
			}
			if r.Err == "" {
				r.DataBytes = dirBytes(dest)
				if round == 1 {
					r.Check = k.checkRestore(dest, k.srcDigest)
					fmt.Fprintf(os.Stderr, "bench: %s: restored %d MiB, check: %s\n", name, r.DataBytes>>20, r.Check)
				}
			}
			os.RemoveAll(dest)
			record(r)
		}
	}

	// W5: the same change on every copy, then an incremental backup.
	if !c.want[workloadName[set.incr]] {
		return out, nil
	}
	fmt.Fprintf(os.Stderr, "bench: %s: %s; CHECKPOINT\n", name, set.update)
	if _, err := k.psql(k.port, set.update); err != nil {
		return out, step("update", err)
	}
	if _, err := k.psql(k.port, "CHECKPOINT"); err != nil {
		return out, step("checkpoint", err)
	}
	if err := k.waitArchived(); err != nil {
		return out, step("archive the update's WAL", err)
	}
	before, beforeObjs, err := k.c.storeCountPrefix(k.sizeURL, k.sizePrefix)
	if err != nil {
		return out, err
	}
	incr, err := k.measure(set.incr, k.backupArgv(true))
	if err != nil {
		return out, err
	}
	if incr.Err == "" {
		incr.StoredBytes, incr.StoredObjs, err = k.deltaCount(before, beforeObjs)
		if err != nil {
			incr.Notes = append(incr.Notes, "repository size: "+err.Error())
		}
		if k.restoreOK && round == 1 {
			if k.updDigest, err = k.psql(k.port, set.digest); err != nil {
				return out, step("digest", err)
			}
			// Not timed: the restore of the incremental backup (its chain).
			dest := filepath.Join(k.dir, "restore-incr")
			if err := k.emptyDir(dest); err != nil {
				return out, err
			}
			if _, err := k.asPG(k.restoreArgv(dest)...); err != nil {
				incr.Check = "restore FAILED: " + k.short(err)
			} else {
				incr.Check = k.checkRestore(dest, k.updDigest)
			}
			fmt.Fprintf(os.Stderr, "bench: %s: restore of the incremental backup: %s\n", name, incr.Check)
			os.RemoveAll(dest)
		}
	}
	record(incr)
	return out, nil
}

// prepare copies the workload cluster, configures the tool's
// archive_command, starts the server, creates the repository and lets the
// archiver catch up, so that every backup starts from a quiet cluster
// with nothing left to archive.
func (k *cluster) prepare() error {
	c := k.c
	if err := os.MkdirAll(k.dir, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", k.set.template, k.pgdata).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s: %w: %s", k.set.template, err, out)
	}
	os.Remove(filepath.Join(k.pgdata, "postmaster.pid"))
	vdir := filepath.Join(k.dir, "tool")
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		return err
	}
	k.env = []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + c.as.home, "USER=postgres", "LOGNAME=postgres", "LC_ALL=C",
		"PGDATA=" + k.pgdata, "PGHOST=" + c.sockDir, "PGPORT=" + strconv.Itoa(k.port),
		"PGUSER=postgres", "PGDATABASE=postgres",
	}
	repoPath := "/" + k.name // a repository per tool, store, compression and round
	var archiveCommand string
	switch k.tool {
	case "walferry":
		k.url = c.walferryURL(k.store, repoPath)
		k.sizeURL, k.sizePrefix = k.url, "backups/"
		k.env = append(k.env,
			"AWS_ACCESS_KEY_ID="+c.s3Key, "AWS_SECRET_ACCESS_KEY="+c.s3Secret, "AWS_REGION=us-east-1",
			"SSL_CERT_FILE="+c.caCert, "WALFERRY_REPO="+k.url, "WALFERRY_COMPRESSION="+walferryCompression(k.comp))
		archiveCommand = c.walferry + " archive-push %p"
		if k.store == "fs" {
			dir := strings.TrimPrefix(k.url, "file://")
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return err
			}
		}
		k.restoreOK = c.walferryHasRestore
	case "pgBackRest":
		k.conf = filepath.Join(vdir, "pgbackrest.conf")
		if err := os.WriteFile(k.conf, []byte(k.pgbackrestConf(repoPath, vdir)), 0o600); err != nil {
			return err
		}
		archiveCommand = c.pgbackrest + " --config=" + k.conf + " --stanza=bench archive-push %p"
		if k.store == "fs" {
			dir := filepath.Join(c.work, "repos", "pgbackrest"+repoPath)
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return err
			}
			k.sizeURL = "file://" + dir
		} else {
			k.sizeURL = "s3://" + c.s3Bucket + "/pgbackrest" + repoPath + "?endpoint=" + c.s3Endpoint + "&path-style=true"
		}
		k.sizePrefix = "backup/"
		k.restoreOK = true
	}
	conf := fmt.Sprintf("\n# bench: %s\nport = %d\narchive_mode = on\narchive_command = '%s'\n", k.tool, k.port, archiveCommand)
	f, err := os.OpenFile(filepath.Join(k.pgdata, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(conf)
	f.Close()
	if err != nil {
		return err
	}
	if err := c.chownTree(k.dir, filepath.Join(c.work, "repos")); err != nil {
		return err
	}
	if err := k.startServer(k.pgdata, filepath.Join(k.dir, "server.log")); err != nil {
		return err
	}
	switch k.tool {
	case "walferry":
		_, err = k.asPG(c.walferry, "repo", "init", "--pgdata", k.pgdata)
	case "pgBackRest":
		_, err = k.asPG(c.pgbackrest, "--config="+k.conf, "--stanza=bench", "stanza-create")
	}
	if err != nil {
		return err
	}
	// The first checkpoint after start-up marks the template's last
	// segments .ready; archive them (and a switched one, which proves the
	// archive_command works) before any clock starts.
	if _, err := k.psql(k.port, "SELECT pg_switch_wal()"); err != nil {
		return err
	}
	if _, err := k.psql(k.port, "CHECKPOINT"); err != nil {
		return err
	}
	return k.waitArchived()
}

func (k *cluster) pgbackrestConf(repoPath, vdir string) string {
	c := k.c
	var b strings.Builder
	b.WriteString("[global]\n")
	if k.store == "fs" {
		b.WriteString("repo1-type=posix\nrepo1-path=" + filepath.Join(c.work, "repos", "pgbackrest"+repoPath) + "\n")
	} else {
		host, port, _ := strings.Cut(strings.TrimPrefix(c.s3Endpoint, "https://"), ":")
		fmt.Fprintf(&b, "repo1-type=s3\nrepo1-path=/pgbackrest%s\nrepo1-s3-bucket=%s\nrepo1-s3-endpoint=%s\nrepo1-storage-port=%s\n"+
			"repo1-s3-region=us-east-1\nrepo1-s3-key=%s\nrepo1-s3-key-secret=%s\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n",
			repoPath, c.s3Bucket, host, port, c.s3Key, c.s3Secret)
	}
	for _, o := range c.pgbackrestBackupOptions(k.comp) {
		b.WriteString(o + "\n")
	}
	fmt.Fprintf(&b, "log-level-console=warn\nlog-level-stderr=warn\nlog-level-file=off\nlog-path=%s\nlock-path=%s\nspool-path=%s\n",
		filepath.Join(vdir, "log"), filepath.Join(vdir, "lock"), filepath.Join(vdir, "spool"))
	fmt.Fprintf(&b, "\n[bench]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\n", k.pgdata, k.port, c.sockDir)
	return b.String()
}

// pgbackrestBackupOptions are pgBackRest's settings for W3-W7 and S1 (its
// best for backups, as far as its version has them), the report prints
// them: file bundling (repo1-bundle, since 2.39: small files combined into
// few repository objects) and block incremental (repo1-block, which needs
// repo1-bundle: an incremental stores the changed blocks of a changed
// file, not the whole file; a beta feature in 2.45, enabled with beta=y,
// generally available since 2.46).
func (c *config) pgbackrestBackupOptions(comp string) []string {
	ct := comp
	if ct == "zstd" {
		ct = "zst"
	}
	opts := []string{"compress-type=" + ct, fmt.Sprintf("process-max=%d", backupJobs), "start-fast=y", "repo1-retention-full=9"}
	if c.pbAtLeast(2, 39) {
		opts = append(opts, "repo1-bundle=y")
	}
	switch {
	case c.pbAtLeast(2, 46):
		opts = append(opts, "repo1-block=y")
	case c.pbAtLeast(2, 45):
		opts = append(opts, "beta=y", "repo1-block=y")
	}
	return opts
}

// pbAtLeast: the pgBackRest under test is at least major.minor.
func (c *config) pbAtLeast(major, minor int) bool {
	a, b, _ := strings.Cut(c.pgbackrestVersion, ".")
	ma, err1 := strconv.Atoi(a)
	b, _, _ = strings.Cut(b, ".")
	mi, err2 := strconv.Atoi(strings.TrimRightFunc(b, func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func (k *cluster) backupArgv(incremental bool) []string {
	if k.tool == "walferry" {
		argv := []string{k.c.walferry, "backup-push", "--jobs", strconv.Itoa(backupJobs), "--json"}
		if incremental {
			argv = append(argv, "--incremental")
		}
		return argv
	}
	typ := "full"
	if incremental {
		typ = "incr"
	}
	return []string{k.c.pgbackrest, "--config=" + k.conf, "--stanza=bench", "--type=" + typ, "backup"}
}

func (k *cluster) restoreArgv(dest string) []string {
	if k.tool == "walferry" {
		return []string{k.c.walferry, "restore", "LATEST", "--pgdata", dest, "--jobs", strconv.Itoa(backupJobs)}
	}
	return []string{k.c.pgbackrest, "--config=" + k.conf, "--stanza=bench", "--pg1-path=" + dest, "restore"}
}

func (k *cluster) spec(work string, argv []string) Spec {
	return Spec{
		Tool: k.tool, Mode: fmt.Sprintf("%d jobs", backupJobs), Workload: work, Store: k.store, Compression: k.comp,
		PGData: k.pgdata, Command: argv, Env: k.env, Round: k.round,
		UID: k.c.as.uid, GID: k.c.as.gid, Home: k.c.as.home,
		LogFile: filepath.Join(k.c.work, "logs", k.name+".log"),
	}
}

// measure runs one timed command in a fresh variant process, after
// flushing dirty pages so that the previous step's writes are not paid
// by this one.
func (k *cluster) measure(work string, argv []string) (Result, error) {
	exec.Command("sync").Run()
	return k.c.run(k.spec(work, argv))
}

// backupsSize is the total size of the tool's backups in its repository
// (pgBackRest's backup.info and history included; WAL excluded).
func (k *cluster) backupsSize() (int64, error) {
	return k.c.storeSizePrefix(k.sizeURL, k.sizePrefix)
}

func (k *cluster) deltaCount(before, beforeObjs int64) (int64, int64, error) {
	after, objs, err := k.c.storeCountPrefix(k.sizeURL, k.sizePrefix)
	return after - before, objs - beforeObjs, err
}

func (k *cluster) delta(before int64) (int64, error) {
	after, err := k.backupsSize()
	return after - before, err
}

// waitArchived waits until the archiver has nothing left to push.
func (k *cluster) waitArchived() error {
	status := filepath.Join(k.pgdata, "pg_wal", "archive_status")
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ents, err := os.ReadDir(status)
		if err != nil {
			return err
		}
		ready := 0
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".ready") {
				ready++
			}
		}
		if ready == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d segments still .ready after 3 minutes; see %s", ready, filepath.Join(k.dir, "server.log"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkRestore starts the restored cluster on a port of its own, with
// archiving off, lets it recover from the tool's archive to the end,
// compares its digest with want and stops it.
func (k *cluster) checkRestore(dest, want string) string {
	port, err := k.c.freePort()
	if err != nil {
		return err.Error()
	}
	logFile := dest + ".log"
	opts := fmt.Sprintf("-c port=%d -c archive_mode=off -c listen_addresses='' -c unix_socket_directories=%s", port, k.c.sockDir)
	if _, err := k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", dest, "-l", logFile, "-w", "-t", "300", "-o", opts, "start"); err != nil {
		return "restored cluster did not start: " + k.short(err) + " (" + strings.ReplaceAll(logFile, k.c.work, "$WORK") + ")"
	}
	defer k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", dest, "-m", "immediate", "-w", "stop")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		s, err := k.psql(port, "SELECT pg_is_in_recovery()")
		if err == nil && s == "f" {
			break
		}
		if time.Now().After(deadline) {
			return "restored cluster still in recovery after 5 minutes (" + logFile + ")"
		}
		time.Sleep(200 * time.Millisecond)
	}
	dsql := k.set.digest
	if dsql == "" {
		dsql = digestSQL
	}
	got, err := k.psql(port, dsql)
	if err != nil {
		return "digest: " + k.short(err)
	}
	if got != want {
		return fmt.Sprintf("MISMATCH: digest %s, source %s", got, want)
	}
	return "ok"
}

func (k *cluster) startServer(pgdata, logFile string) error {
	_, err := k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", pgdata, "-l", logFile, "-w", "-t", "120", "start")
	return err
}

func (k *cluster) teardown() {
	if k.pgdata == "" {
		return
	}
	k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", k.pgdata, "-m", "fast", "-w", "stop")
	os.RemoveAll(k.pgdata)
}

func (k *cluster) emptyDir(dir string) error {
	os.RemoveAll(dir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	return os.Chown(dir, int(k.c.as.uid), int(k.c.as.gid))
}

// asPG runs argv as the postgres OS user with the cluster's environment.
func (k *cluster) asPG(argv ...string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = k.env, k.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: k.c.as.uid, Gid: k.c.as.gid}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return "", &pgError{argv: argv, code: ee.ExitCode(), stderr: string(bytes.TrimSpace(stderr.Bytes()))}
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.TrimSpace(string(out)), nil
}

func (k *cluster) psql(port int, sql string) (string, error) {
	return k.asPG(filepath.Join(k.c.pgbin, "psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1",
		"-h", k.c.sockDir, "-p", strconv.Itoa(port), "-U", "postgres", "-d", "postgres", "-c", sql)
}

// freePort is a port no server of this run uses: the servers listen on
// unix sockets in sockDir only, named after the port.
func (c *config) freePort() (int, error) {
	for p := 20000 + (os.Getpid()*7)%30000; p < 65000; p++ {
		if _, err := os.Stat(filepath.Join(c.sockDir, fmt.Sprintf(".s.PGSQL.%d", p))); err == nil || usedPorts[p] {
			continue
		}
		usedPorts[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("no free port")
}

var usedPorts = map[int]bool{}

// dirBytes is the total size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// short is err without the command line and with the run's work
// directory elided, for a table cell.
func (k *cluster) short(err error) string {
	var pe *pgError
	msg := err.Error()
	if errors.As(err, &pe) {
		msg = fmt.Sprintf("exit %d: %s", pe.code, firstLine(pe.stderr))
	}
	return strings.ReplaceAll(msg, k.c.work, "$WORK")
}

// pgError is a failed command of asPG.
type pgError struct {
	argv   []string
	code   int
	stderr string
}

func (e *pgError) Error() string {
	return fmt.Sprintf("%s: exit status %d: %s", strings.Join(e.argv, " "), e.code, e.stderr)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
