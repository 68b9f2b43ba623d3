// Command bench measures walferry side by side with pgBackRest: the
// archive hooks the way PostgreSQL calls them, one process per segment, in
// order (W1, W2), and base backups of a running cluster, their restore and
// incremental backups (W3-W5, backup.go). scripts/bench/run.sh (make bench)
// prepares the workloads, the repositories' MinIO and this program's
// arguments; see docs/benchmarks.md.
//
//	bench all --work DIR ...   run every variant, write the report
//	bench variant              run one variant (Spec as JSON on stdin)
//	bench report ...           render the W3-W5 report again from results.json
//
// Each variant runs in a fresh process that is a child subreaper, so the
// CPU time and peak RSS it reports cover every process its hooks started,
// background daemons and detached workers included, and nothing else.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/walferry/walferry/storage"
	"github.com/walferry/walferry/storage/open"
	"github.com/walferry/walferry/storage/retry"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench all [flags] | bench variant")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "variant":
		err = variantMain()
	case "all":
		err = allMain(os.Args[2:])
	case "report":
		err = reportMain(os.Args[2:])
	case "size": // bench size URL [PREFIX]: the total size of a store's objects
		var c config
		var n int64
		if len(os.Args) == 3 || len(os.Args) == 4 {
			n, err = c.storeSizePrefix(os.Args[2], strings.Join(os.Args[3:], ""))
			fmt.Println(n)
		}
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// config is what run.sh hands over.
type config struct {
	work, walferry, pgbackrest string
	pgbackrestVersion          string // "2.45", from pgbackrest version
	walferryHook               string // the hook of the walferry daemon variants
	template, walDir           string // pg_control + PG_VERSION; the workload's segments
	s3Endpoint, s3Bucket       string // https://127.0.0.1:PORT
	s3Key, s3Secret, caCert    string
	out                        string // docs/benchmarks.md
	stores, compressions       []string
	idleCalls                  int
	about                      string // file with the run's environment, markdown
	as                         runAs
	segments                   []string
	self                       string
	want                       map[string]bool // the workloads to run, W1..W5
	// W3-W5
	backupTemplate     string // stopped cluster holding the pgbench database
	backupAbout        string // markdown table row describing that workload
	standbyAbout       string // the same for S1-S2
	walAbout           string // the same for W1-W2
	backupDataBytes    int64  // its data directory's size
	pgbin, sockDir     string
	rounds             int // W3-W5 are measured this many times
	walferryHasRestore bool
	// W6-W7: the many-files cluster
	manyTemplate  string // stopped cluster holding manyTables small tables
	manyAbout     string // markdown table row describing it
	manyDataBytes int64
	manyTables    int
	// S1-S2 (standby.go)
	standbyRounds int             // S1 is measured this many times
	lagSeconds    time.Duration   // S2: the window of each mode
	lagTPS        int             // S2: pgbench -R, 0 for none
	standby       *standbyResults // what S1-S2 measured
	// F1-F2 (failover.go, patroni.go)
	failoverRounds int              // each is measured this many times
	etcd           string           // the etcd binary of Patroni's DCS
	failoverAbout  string           // markdown table row describing the workload
	failover       *failoverResults // what F1-F2 measured
}

// allWorkloads in order. W2 reads what W1 pushed and W4, W5 build on W3's
// backup, so W1 runs whenever W2 does and W3 whenever W4 or W5 do. S1 and
// S2 (standby sites, standby.go) run alone or with the others.
// W7 builds on W6 (the many-files cluster's full backup), which then runs too.
// F1 and F2 (role changes against Patroni, failover.go) run alone or with the others.
var allWorkloads = []string{"W1", "W2", "W3", "W4", "W5", "W6", "W7", "S1", "S2", "F1", "F2"}

func (c *config) archiveRun() bool { return c.want["W1"] || c.want["W2"] }
func (c *config) backupRun() bool {
	return c.want["W3"] || c.want["W4"] || c.want["W5"] || c.want["W6"] || c.want["W7"]
}

func allMain(args []string) error {
	var c config
	var stores, comps string
	fl := flag.NewFlagSet("all", flag.ContinueOnError)
	fl.StringVar(&c.work, "work", "", "work directory")
	fl.StringVar(&c.walferry, "walferry", "", "walferry binary")
	fl.StringVar(&c.walferryHook, "walferry-hook", "", "walferry-hook binary, the hook of the walferry daemon variants (default: --walferry)")
	fl.StringVar(&c.pgbackrest, "pgbackrest", "pgbackrest", "pgbackrest binary")
	fl.StringVar(&c.template, "template", "", "directory with PG_VERSION and global/pg_control of the workload's cluster")
	fl.StringVar(&c.walDir, "wal", "", "directory holding the workload's segments")
	fl.StringVar(&c.s3Endpoint, "s3-endpoint", "", "MinIO https endpoint")
	fl.StringVar(&c.s3Bucket, "s3-bucket", "", "bucket")
	fl.StringVar(&c.s3Key, "s3-key", "", "access key")
	fl.StringVar(&c.s3Secret, "s3-secret", "", "secret key")
	fl.StringVar(&c.caCert, "ca-cert", "", "MinIO's certificate")
	fl.StringVar(&c.out, "out", "", "markdown report to update")
	fl.StringVar(&c.about, "about", "", "markdown file describing the run")
	fl.StringVar(&stores, "stores", "fs,MinIO", "stores")
	fl.StringVar(&comps, "compressions", "lz4,zstd", "compressions")
	fl.IntVar(&c.idleCalls, "idle-calls", 50, "calls of the hook-cost measurements")
	workloads := fl.String("workloads", strings.Join(allWorkloads, ","), "workloads to run")
	fl.StringVar(&c.backupTemplate, "backup-template", "", "stopped cluster holding the W3-W5 pgbench database")
	fl.StringVar(&c.backupAbout, "backup-about", "", "markdown describing the W3-W5 workload")
	fl.StringVar(&c.standbyAbout, "standby-about", "", "markdown describing the S1-S2 workload")
	fl.StringVar(&c.walAbout, "wal-about", "", "markdown describing the W1-W2 workload")
	fl.StringVar(&c.manyTemplate, "many-template", "", "stopped cluster holding the W6-W7 many-files database")
	fl.StringVar(&c.manyAbout, "many-about", "", "markdown describing the W6-W7 workload")
	fl.IntVar(&c.manyTables, "many-tables", 20000, "tables of the many-files cluster (mf_1 .. mf_N)")
	fl.StringVar(&c.pgbin, "pgbin", "/usr/lib/postgresql/15/bin", "PostgreSQL's programs")
	fl.IntVar(&c.rounds, "rounds", 5, "rounds of W3-W5 (the report gives the median)")
	fl.StringVar(&c.sockDir, "socket-dir", "", "directory of the servers' unix sockets (default: --work)")
	fl.IntVar(&c.standbyRounds, "standby-rounds", 3, "rounds of S1 (the report gives the median)")
	fl.DurationVar(&c.lagSeconds, "lag-duration", 180*time.Second, "S2: the measurement window of each mode")
	fl.IntVar(&c.lagTPS, "lag-tps", 0, "S2: pgbench's rate (-R), 0 for as fast as it goes")
	fl.IntVar(&c.failoverRounds, "failover-rounds", 3, "rounds of F1-F2 (the report gives the median)")
	fl.StringVar(&c.etcd, "etcd", "etcd", "F1-F2: the etcd binary of Patroni's DCS")
	fl.StringVar(&c.failoverAbout, "failover-about", "", "markdown describing the F1-F2 workload")
	if err := fl.Parse(args); err != nil {
		return err
	}
	c.want = map[string]bool{}
	for _, w := range strings.Split(*workloads, ",") {
		w = strings.ToUpper(strings.TrimSpace(w))
		if !slices.Contains(allWorkloads, w) {
			return fmt.Errorf("--workloads: unknown workload %q (want some of %s)", w, strings.Join(allWorkloads, ","))
		}
		c.want[w] = true
	}
	if c.want["W2"] {
		c.want["W1"] = true
	}
	if c.want["W4"] || c.want["W5"] {
		c.want["W3"] = true
	}
	if c.want["W7"] {
		c.want["W6"] = true
	}
	if c.sockDir == "" {
		c.sockDir = c.work
	}
	if c.walferryHook == "" {
		c.walferryHook = c.walferry
	}
	c.stores = strings.Split(stores, ",")
	c.compressions = strings.Split(comps, ",")
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c.self = self
	u, err := user.Lookup("postgres")
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	c.as = runAs{uid: uint32(uid), gid: uint32(gid), home: u.HomeDir}
	if c.archiveRun() {
		ents, err := os.ReadDir(c.walDir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			c.segments = append(c.segments, e.Name())
		}
		if len(c.segments) < 2 {
			return fmt.Errorf("no workload in %s", c.walDir)
		}
	}
	out, err := exec.Command(c.pgbackrest, "version").Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", c.pgbackrest, err)
	}
	c.pgbackrestVersion = strings.TrimPrefix(strings.TrimSpace(string(out)), "pgBackRest ")
	if c.want["W6"] {
		if c.manyTemplate == "" {
			return fmt.Errorf("W6-W7 need --many-template")
		}
		c.manyDataBytes = dirBytes(c.manyTemplate)
	}
	if c.backupRun() || c.standbyRun() {
		if c.backupTemplate == "" && (c.want["W3"] || c.standbyRun()) {
			return fmt.Errorf("W3-W5, S1 and S2 need --backup-template")
		}
		c.backupDataBytes = dirBytes(c.backupTemplate)
		// A walferry without restore still runs W3 and W5 (W4 is
		// reported as not measured).
		c.walferryHasRestore = exec.Command(c.walferry, "restore", "--help").Run() == nil
	}

	for _, d := range []string{"pgdata", "variants", "logs", "repos"} {
		if err := os.MkdirAll(filepath.Join(c.work, d), 0o755); err != nil {
			return err
		}
	}
	var results []Result
	save := func() error {
		raw, _ := json.MarshalIndent(resultsJSON(results), "", "  ")
		return os.WriteFile(filepath.Join(c.work, "results.json"), raw, 0o644)
	}
	if c.archiveRun() {
		for _, store := range c.stores {
			for _, comp := range c.compressions {
				rs, err := c.runGroup(store, comp)
				results = append(results, rs...)
				if err != nil {
					save()
					return err
				}
			}
		}
	}
	if c.backupRun() {
		rs, err := c.runBackups()
		results = append(results, rs...)
		if err != nil {
			save()
			return err
		}
	}
	if c.standbyRun() {
		res, err := c.runStandby()
		c.standby = res
		if err := c.saveJSON("standby.json", res, err); err != nil {
			save()
			return err
		}
	}
	if c.failoverRun() {
		res, err := c.runFailover()
		c.failover = res
		if err := c.saveJSON("failover.json", res, err); err != nil {
			save()
			return err
		}
	}
	if err := save(); err != nil {
		return err
	}
	return writeReport(c, results)
}

// modes in the order they run.
var modes = []struct{ tool, mode string }{
	{"pgBackRest", "sync"},
	{"pgBackRest", "async"},
	{"walferry", "standalone"},
	{"walferry", "daemon"},
}

// runGroup runs W1, W2 (and, for lz4, the hook-cost measurements) for one
// store and compression.
func (c *config) runGroup(store, comp string) ([]Result, error) {
	var out []Result
	group := strings.ToLower(store) + "-" + comp
	repos := map[string]string{} // mode -> repository (URL or pgBackRest repo path)
	for _, m := range modes {
		repos[m.mode] = "/" + group + "-" + m.mode
	}
	// W1: each mode pushes into a repository of its own.
	for _, m := range modes {
		pgdata, err := c.clonePGData(group+"-w1-"+m.mode, true, true)
		if err != nil {
			return out, err
		}
		spec, err := c.spec(m.tool, m.mode, workPush, store, comp, pgdata, repos[m.mode], c.segments)
		if err != nil {
			return out, err
		}
		if err := c.initRepo(spec, repos[m.mode]); err != nil {
			return out, err
		}
		r, err := c.run(spec)
		if err != nil {
			return out, err
		}
		r.RepoBytes, err = c.repoSize(store, m.tool, repos[m.mode])
		if err != nil {
			r.Notes = append(r.Notes, "repository size: "+err.Error())
		}
		out = append(out, r)
		os.RemoveAll(pgdata)
	}
	// W2: each tool reads the repository its first mode wrote.
	src := map[string]string{"pgBackRest": repos["sync"], "walferry": repos["standalone"]}
	for _, m := range modes {
		pgdata, err := c.clonePGData(group+"-w2-"+m.mode, false, false)
		if err != nil {
			return out, err
		}
		spec, err := c.spec(m.tool, m.mode, workGet, store, comp, pgdata, src[m.tool], c.segments)
		if err != nil {
			return out, err
		}
		r, err := c.run(spec)
		if err != nil {
			return out, err
		}
		out = append(out, r)
		os.RemoveAll(pgdata)
	}
	if comp != c.compressions[0] {
		return out, nil
	}
	// Hook cost: pushes of archived segments, pushes of segments pushed
	// ahead (pairs of fresh segments, into fresh repositories), gets of
	// missing ones.
	n := min(c.idleCalls, len(c.segments))
	pairs := min(c.idleCalls, len(c.segments)/2)
	var missing []string
	next := c.segments[len(c.segments)-1]
	for i := 0; i < n; i++ {
		next = nextSegment(nextSegment(next))
		missing = append(missing, next)
	}
	for _, w := range []struct {
		work string
		segs []string
	}{{workPushAgain, c.segments[:n]}, {workPushAhead, c.segments[:2*pairs]}, {workGetMissing, missing}} {
		for _, m := range modes {
			pgdata, err := c.clonePGData(group+"-"+w.work+"-"+m.mode, w.work != workGetMissing, false)
			if err != nil {
				return out, err
			}
			repo := repos[m.mode]
			switch w.work {
			case workGetMissing:
				repo = src[m.tool]
			case workPushAhead:
				repo = "/" + group + "-ahead-" + m.mode
			}
			spec, err := c.spec(m.tool, m.mode, w.work, store, comp, pgdata, repo, w.segs)
			if err != nil {
				return out, err
			}
			if w.work == workPushAhead {
				if err := c.initRepo(spec, repo); err != nil {
					return out, err
				}
			}
			r, err := c.run(spec)
			if err != nil {
				return out, err
			}
			out = append(out, r)
			os.RemoveAll(pgdata)
		}
	}
	return out, nil
}

// run starts a fresh variant process.
func (c *config) run(spec Spec) (Result, error) {
	in, _ := json.Marshal(spec)
	cmd := exec.Command(c.self, "variant")
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stderr = os.Stderr
	mode := spec.Mode
	if spec.Round > 0 {
		mode = fmt.Sprintf("round %d", spec.Round)
	}
	fmt.Fprintf(os.Stderr, "bench: %-11s %-6s %-4s %-10s %-10s ... ", spec.Workload, spec.Store, spec.Compression, spec.Tool, mode)
	out, err := cmd.Output()
	if err != nil {
		return Result{}, fmt.Errorf("variant %s %s: %w", spec.Tool, spec.Mode, err)
	}
	var r Result
	if err := json.Unmarshal(out, &r); err != nil {
		return Result{}, fmt.Errorf("variant result: %w: %s", err, out)
	}
	r.Spec = spec
	if oneCommand(spec.Workload) {
		fmt.Fprintf(os.Stderr, "%6.2f s, cpu %.2f + %.2f s, rss %d MiB (all processes, PSS: %d MiB)%s\n", r.WallSeconds,
			r.UserSeconds, r.SysSeconds, r.MaxRSSKiB/1024, r.TreeRSSKiB/1024, errSuffix(r))
		return r, nil
	}
	fmt.Fprintf(os.Stderr, "%6.2f s, %d calls, %d failed, cpu %.2f s, rss %d MiB%s\n", r.WallSeconds, r.Calls, r.Failed,
		r.UserSeconds+r.SysSeconds, r.MaxRSSKiB/1024, errSuffix(r))
	return r, nil
}

func errSuffix(r Result) string {
	s := ""
	if r.Err != "" {
		s += " ERROR: " + r.Err
	}
	if len(r.Notes) > 0 {
		s += " (" + strings.Join(r.Notes, "; ") + ")"
	}
	return s
}

// clonePGData makes a data directory holding what the hooks read: the
// workload cluster's PG_VERSION and pg_control, and (for pushes) the
// segments as hard links, with a .ready file each when ready is set, as in
// a real pg_wal with an archiving backlog.
func (c *config) clonePGData(name string, withWAL, ready bool) (string, error) {
	dir := filepath.Join(c.work, "pgdata", name)
	os.RemoveAll(dir)
	for _, d := range []string{"global", "pg_wal/archive_status"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return "", err
		}
	}
	for _, f := range []string{"PG_VERSION", "global/pg_control"} {
		b, err := os.ReadFile(filepath.Join(c.template, f))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			return "", err
		}
	}
	if withWAL {
		for _, seg := range c.segments {
			if err := os.Link(filepath.Join(c.walDir, seg), filepath.Join(dir, "pg_wal", seg)); err != nil {
				return "", err
			}
			if !ready {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, "pg_wal/archive_status", seg+".ready"), nil, 0o600); err != nil {
				return "", err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "..", name+"-fetched"), 0o700); err != nil {
		return "", err
	}
	return dir, c.chownTree(dir, filepath.Join(dir, "..", name+"-fetched"))
}

func (c *config) chownTree(roots ...string) error {
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(c.as.uid), int(c.as.gid))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// spec builds the Spec of one tool and mode against one repository.
func (c *config) spec(tool, mode, work, store, comp, pgdata, repoPath string, segs []string) (Spec, error) {
	name := filepath.Base(pgdata)
	vdir := filepath.Join(c.work, "variants", name)
	os.RemoveAll(vdir)
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		return Spec{}, err
	}
	s := Spec{
		Tool: tool, Mode: mode, Workload: work, Store: store, Compression: comp,
		PGData: pgdata, Segments: segs, WALDir: c.walDir,
		UID: c.as.uid, GID: c.as.gid, Home: c.as.home,
		LogFile:  filepath.Join(c.work, "logs", name+".log"),
		FetchDir: pgdata + "-fetched",
		Env: []string{
			"PATH=/usr/local/bin:/usr/bin:/bin",
			"HOME=" + c.as.home, "USER=postgres", "LOGNAME=postgres", "LC_ALL=C",
			"PGDATA=" + pgdata,
		},
	}
	if err := os.MkdirAll(filepath.Dir(s.LogFile), 0o755); err != nil {
		return s, err
	}
	hookOp := map[string]string{workPush: "archive-push", workPushAgain: "archive-push", workPushAhead: "archive-push",
		workGet: "archive-get", workGetMissing: "archive-get"}[work]
	switch tool {
	case "walferry":
		url := c.walferryURL(store, repoPath)
		s.Env = append(s.Env,
			"AWS_ACCESS_KEY_ID="+c.s3Key, "AWS_SECRET_ACCESS_KEY="+c.s3Secret, "AWS_REGION=us-east-1",
			"SSL_CERT_FILE="+c.caCert, "WALFERRY_REPO="+url, "WALFERRY_COMPRESSION="+walferryCompression(comp))
		s.Hook = []string{c.walferry, hookOp}
		// The look-ahead records of archive-push (archive/pushstate.go).
		s.AheadMarker = filepath.Join(pgdata, "pg_wal", ".walferry", "pushed", "%f")
		if mode == "daemon" {
			s.Socket = filepath.Join(vdir, "walferry.sock")
			s.Daemon = []string{c.walferry, "daemon", "--socket", s.Socket, "--pgdata", pgdata}
			// The small binary; it execs walferry when the daemon is down.
			s.Hook = []string{c.walferryHook, hookOp, "--socket", s.Socket}
		}
	case "pgBackRest":
		conf := filepath.Join(vdir, "pgbackrest.conf")
		if err := os.WriteFile(conf, []byte(c.pgbackrestConf(store, comp, mode, work, repoPath, pgdata, vdir)), 0o600); err != nil {
			return s, err
		}
		s.Hook = []string{c.pgbackrest, "--config=" + conf, "--stanza=bench", hookOp}
		if mode == "async" {
			// The status files of archive-push's asynchronous process.
			s.AheadMarker = filepath.Join(vdir, "spool", "archive", "bench", "out", "%f.ok")
		}
	default:
		return s, fmt.Errorf("unknown tool %q", tool)
	}
	if hookOp == "archive-push" {
		s.Hook = append(s.Hook, "%p")
	} else {
		s.Hook = append(s.Hook, "%f", "%p")
	}
	return s, c.chownTree(vdir)
}

func walferryCompression(comp string) string {
	if comp == "zstd" {
		return "zstd:3" // pgBackRest's default zst level
	}
	return comp
}

func (c *config) walferryURL(store, repoPath string) string {
	if store == "fs" {
		return "file://" + filepath.Join(c.work, "repos", "walferry"+repoPath)
	}
	return "s3://" + c.s3Bucket + "/walferry" + repoPath + "?endpoint=" + c.s3Endpoint + "&path-style=true"
}

func (c *config) pgbackrestConf(store, comp, mode, work, repoPath, pgdata, vdir string) string {
	var b strings.Builder
	b.WriteString("[global]\n")
	if store == "fs" {
		b.WriteString("repo1-type=posix\nrepo1-path=" + filepath.Join(c.work, "repos", "pgbackrest"+repoPath) + "\n")
	} else {
		host, port, _ := strings.Cut(strings.TrimPrefix(c.s3Endpoint, "https://"), ":")
		fmt.Fprintf(&b, "repo1-type=s3\nrepo1-path=/pgbackrest%s\nrepo1-s3-bucket=%s\nrepo1-s3-endpoint=%s\nrepo1-storage-port=%s\n"+
			"repo1-s3-region=us-east-1\nrepo1-s3-key=%s\nrepo1-s3-key-secret=%s\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n",
			repoPath, c.s3Bucket, host, port, c.s3Key, c.s3Secret)
	}
	ct := comp
	if comp == "zstd" {
		ct = "zst"
	}
	fmt.Fprintf(&b, "compress-type=%s\n", ct)
	fmt.Fprintf(&b, "log-level-console=warn\nlog-level-stderr=warn\nlog-level-file=off\nlog-path=%s\nlock-path=%s\nspool-path=%s\n",
		filepath.Join(vdir, "log"), filepath.Join(vdir, "lock"), filepath.Join(vdir, "spool"))
	if mode == "async" {
		b.WriteString("archive-async=y\nprocess-max=2\narchive-get-queue-max=1GiB\n")
	}
	fmt.Fprintf(&b, "\n[bench]\npg1-path=%s\n", pgdata)
	return b.String()
}

// initRepo creates the repository a W1 variant pushes into.
func (c *config) initRepo(s Spec, repoPath string) error {
	var argv []string
	switch s.Tool {
	case "walferry":
		if s.Store == "fs" {
			dir := strings.TrimPrefix(c.walferryURL(s.Store, repoPath), "file://")
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return err
			}
			if err := c.chownTree(filepath.Dir(dir)); err != nil {
				return err
			}
		}
		argv = []string{c.walferry, "repo", "init", "--pgdata", s.PGData}
	case "pgBackRest":
		if s.Store == "fs" {
			dir := filepath.Join(c.work, "repos", "pgbackrest"+repoPath)
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return err
			}
			if err := c.chownTree(filepath.Dir(dir)); err != nil {
				return err
			}
		}
		argv = append(append([]string{}, s.Hook[:3]...), "--no-online", "stanza-create")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = s.Env, s.PGData
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: s.UID, Gid: s.GID}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

// repoSize sums the sizes of a repository's objects.
func (c *config) repoSize(store, tool, repoPath string) (int64, error) {
	url := c.walferryURL(store, repoPath)
	if tool == "pgBackRest" {
		if store == "fs" {
			url = "file://" + filepath.Join(c.work, "repos", "pgbackrest"+repoPath)
		} else {
			url = "s3://" + c.s3Bucket + "/pgbackrest" + repoPath + "?endpoint=" + c.s3Endpoint + "&path-style=true"
		}
	}
	return c.storeSize(url)
}

// storeSize sums the sizes of the objects of the store at url. run.sh sets
// AWS_* and SSL_CERT_FILE in this process's environment.
func (c *config) storeSize(url string) (int64, error) { return c.storeSizePrefix(url, "") }

// storeSizePrefix sums the sizes of the objects under prefix.
func (c *config) storeSizePrefix(url, prefix string) (int64, error) {
	n, _, err := c.storeCountPrefix(url, prefix)
	return n, err
}

// storeCountPrefix is the total size and the number of a store's objects under prefix.
func (c *config) storeCountPrefix(url, prefix string) (int64, int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := open.Store(ctx, url, open.Options{Concurrency: 4, Retry: retry.Policy{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	var total, count int64
	err = st.List(ctx, prefix, func(oi storage.ObjectInfo) error {
		total += oi.Size
		count++
		return nil
	})
	return total, count, err
}
