package main

// F1, F2: role changes under writes, walferry side by side with Patroni.
// Each tool gets a pair of PostgreSQL servers on this machine, a and b
// (data checksums on, asynchronous streaming b <- a, TCP on 127.0.0.1 and
// a unix socket in the run's socket directory), set up once and not timed:
//
//	walferry  a archives into a filesystem repository (repo init --instance
//	          a), a backup, b a pg_basebackup of a streaming from it; the
//	          role changes are the commands of docs/switchover.md.
//	Patroni   a 2-member Patroni cluster (patroni.go) on an etcd of its own.
//
// While a writer commits numbered rows one at a time to whichever server
// accepts them (the retrying clients of seed 004):
//
//	F1  planned switchover a -> b, then back b -> a, per round: walferry
//	    demote on the primary, promote on the standby, rejoin on the old
//	    primary; Patroni patronictl switchover --leader --candidate --force.
//	F2  the primary lost (its postmaster stopped with pg_ctl -m immediate;
//	    for Patroni its agent SIGKILLed first: the node is gone): walferry's
//	    operator script runs promote --force on the standby as soon as its
//	    probe of the primary fails, Patroni fails over by itself once the
//	    leader key expires; then the old primary is brought back as a
//	    standby (walferry rejoin --restart; Patroni started again, which
//	    rewinds it), and the next round loses the other server.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walferry/walferry/k8s/role"
)

// failoverScale is the pgbench -i scale of each pair's database: the data
// a rewind or a rejoin works against.
const failoverScale = 10

// Patroni's timing (bootstrap.dcs): the fastest settings its rule
// loop_wait + 2 * retry_timeout <= ttl allows with some margin.
const (
	patroniTTL          = 10
	patroniLoopWait     = 2
	patroniRetryTimeout = 4
)

// operatorProbe is how often walferry's operator script checks the
// primary in F2; the first failed check is taken as the loss.
const operatorProbe = 500 * time.Millisecond

// writerPause is the writer's pause between two acknowledged rows.
const writerPause = 2 * time.Millisecond

// failoverResults is what F1 and F2 measured.
type failoverResults struct {
	F1 []f1Result `json:"f1"`
	F2 []f2Result `json:"f2"`
	// Setup notes per tool (versions, settings).
	Setup map[string]string `json:"setup"`
}

type f1Result struct {
	Tool     string  `json:"tool"`
	Round    int     `json:"round"`
	From     string  `json:"from"`
	To       string  `json:"to"`
	Command  float64 `json:"command_seconds"`  // the tool's commands, end to end
	Downtime float64 `json:"downtime_seconds"` // last write acknowledged by from to first by to
	Follow   float64 `json:"follow_seconds"`   // command start until from streams from to
	Acked    int     `json:"acked"`            // rows acknowledged in the measurement
	Lost     int     `json:"lost"`             // of them, missing on the new primary
	Check    string  `json:"check"`            // "ok": both servers hold the same rows
	Steps    string  `json:"steps,omitempty"`  // walferry: each command's time
	Err      string  `json:"err,omitempty"`
}

type f2Result struct {
	Tool        string  `json:"tool"`
	Round       int     `json:"round"`
	Lost        string  `json:"lost_server"`
	New         string  `json:"new_primary"`
	Detect      float64 `json:"detect_seconds,omitempty"`  // walferry: kill to the operator's decision
	Promote     float64 `json:"promote_seconds,omitempty"` // walferry: promote --force
	FirstWrite  float64 `json:"first_write_seconds"`       // kill to first write acknowledged by the new primary
	AckedBefore int     `json:"acked_before_kill"`
	LostRows    int     `json:"lost_rows"`      // acknowledged by the old primary, missing on the new
	Rejoin      float64 `json:"rejoin_seconds"` // restart of the old primary until it streams
	Method      string  `json:"method,omitempty"`
	BytesCopied int64   `json:"bytes_copied,omitempty"`
	DataBytes   int64   `json:"data_bytes,omitempty"`
	Check       string  `json:"check"`
	Err         string  `json:"err,omitempty"`
}

func (c *config) failoverRun() bool { return c.want["F1"] || c.want["F2"] }

// node is one PostgreSQL server of a pair.
type node struct {
	name   string
	dir    string // the node's directory: its data directory, config, log
	pgdata string
	port   int
}

func (n *node) conn() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2", n.port)
}

// pair is one tool's two servers and how the tool changes their roles.
type pair interface {
	tool() string
	nodes() (a, b *node)
	// switchover moves the primary role from -> to as the tool's user
	// does; steps describes the commands' times.
	switchover(ctx context.Context, from, to *node) (steps string, err error)
	// lose kills from's server (Patroni: its agent first).
	lose(from *node) error
	// failover makes to the primary after from was lost at lostAt.
	failover(ctx context.Context, from, to *node, res *f2Result) error
	// rejoin brings from back as a standby of to.
	rejoin(ctx context.Context, from, to *node, res *f2Result) error
	stop()
}

// runFailover sets up both tools' pairs, then runs the rounds of F1 and
// F2, the two tools alternating first.
func (c *config) runFailover() (*failoverResults, error) {
	res := &failoverResults{Setup: map[string]string{}}
	ctx := context.Background()
	base := &cluster{c: c, name: "failover", dir: filepath.Join(c.work, "failover")}
	if err := os.MkdirAll(base.dir, 0o755); err != nil {
		return res, err
	}
	if err := c.chownTree(base.dir); err != nil {
		return res, err
	}
	base.env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + c.as.home, "USER=postgres", "LOGNAME=postgres", "LC_ALL=C"}
	wf, err := newWalferryPair(ctx, base)
	if wf != nil {
		defer wf.stop()
	}
	if err != nil {
		return res, fmt.Errorf("F1-F2 walferry setup: %w", err)
	}
	pt, err := newPatroniPair(ctx, base)
	if pt != nil {
		defer pt.stop()
	}
	if err != nil {
		return res, fmt.Errorf("F1-F2 Patroni setup: %w", err)
	}
	res.Setup["Patroni"] = pt.about
	pairs := []pair{pt, wf}
	for round := 1; round <= c.failoverRounds; round++ {
		order := pairs
		if round%2 == 0 {
			order = []pair{wf, pt}
		}
		for _, p := range order {
			if c.want["F1"] {
				a, b, err := primaryOf(ctx, p)
				if err != nil {
					return res, err
				}
				for _, dir := range [][2]*node{{a, b}, {b, a}} {
					r := f1Round(ctx, base, p, dir[0], dir[1], round)
					res.F1 = append(res.F1, r)
					fmt.Fprintf(os.Stderr, "bench: F1 %-8s round %d %s -> %s: command %.2f s, write downtime %.2f s, old primary streams after %.2f s, %d acked, %d lost, check %s%s\n",
						r.Tool, round, r.From, r.To, r.Command, r.Downtime, r.Follow, r.Acked, r.Lost, r.Check, errText(r.Err))
					if r.Err != "" {
						return res, fmt.Errorf("F1 %s round %d: %s", r.Tool, round, r.Err)
					}
				}
			}
		}
		for _, p := range order {
			if c.want["F2"] {
				from, to, err := primaryOf(ctx, p)
				if err != nil {
					return res, err
				}
				r := f2Round(ctx, base, p, from, to, round)
				res.F2 = append(res.F2, r)
				fmt.Fprintf(os.Stderr, "bench: F2 %-8s round %d %s lost: first write on %s after %.2f s (detect %.2f, promote %.2f), %d of %d acked rows lost, %s streams again after %.2f s (%s, %d bytes copied), check %s%s\n",
					r.Tool, round, r.Lost, r.New, r.FirstWrite, r.Detect, r.Promote, r.LostRows, r.AckedBefore, r.Lost, r.Rejoin, r.Method, r.BytesCopied, r.Check, errText(r.Err))
				if r.Err != "" {
					return res, fmt.Errorf("F2 %s round %d: %s", r.Tool, round, r.Err)
				}
			}
		}
	}
	return res, nil
}

// errText is err for the report: the run's work directory, which differs
// from run to run, shows as $WORK.
func (base *cluster) errText(err error) string {
	return strings.ReplaceAll(err.Error(), base.c.work, "$WORK")
}

// f1Round measures one planned switchover from -> to under writes.
func f1Round(ctx context.Context, base *cluster, p pair, from, to *node, round int) f1Result {
	r := f1Result{Tool: p.tool(), Round: round, From: from.name, To: to.name}
	fail := func(err error) f1Result {
		r.Err = base.errText(err)
		return r
	}
	w, err := writing(ctx, from, to)
	if err != nil {
		return fail(err)
	}
	defer w.stop()
	t0 := time.Now()
	steps, err := p.switchover(ctx, from, to)
	r.Command = time.Since(t0).Seconds()
	r.Steps = steps
	if err != nil {
		return fail(err)
	}
	if err := w.waitAcks(to.name, 50, 2*time.Minute); err != nil {
		return fail(err)
	}
	if err := waitFollows(ctx, from, w.lastID(), 2*time.Minute); err != nil {
		return fail(fmt.Errorf("old primary: %w", err))
	}
	r.Follow = time.Since(t0).Seconds()
	r.Downtime = w.downtime(from.name, to.name).Seconds()
	w.stop()
	acked := w.ids("")
	r.Acked = len(acked)
	if r.Lost, err = missing(ctx, to, acked); err != nil {
		return fail(err)
	}
	r.Check = sameRows(ctx, to, from)
	return r
}

// f2Round loses from under writes and measures the way back.
func f2Round(ctx context.Context, base *cluster, p pair, from, to *node, round int) f2Result {
	r := f2Result{Tool: p.tool(), Round: round, Lost: from.name, New: to.name}
	fail := func(err error) f2Result {
		r.Err = base.errText(err)
		return r
	}
	w, err := writing(ctx, from, to)
	if err != nil {
		return fail(err)
	}
	defer w.stop()
	killed := time.Now()
	if err := p.lose(from); err != nil {
		return fail(err)
	}
	if err := p.failover(ctx, from, to, &r); err != nil {
		return fail(err)
	}
	first, err := w.firstAck(to.name, 2*time.Minute)
	if err != nil {
		return fail(err)
	}
	r.FirstWrite = first.Sub(killed).Seconds()
	if err := w.waitAcks(to.name, 50, time.Minute); err != nil {
		return fail(err)
	}
	before := w.ids(from.name)
	r.AckedBefore = len(before)
	if r.LostRows, err = missing(ctx, to, before); err != nil {
		return fail(err)
	}
	t0 := time.Now()
	newRows := w.lastID()
	if err := p.rejoin(ctx, from, to, &r); err != nil {
		return fail(err)
	}
	if err := waitFollows(ctx, from, newRows, 3*time.Minute); err != nil {
		return fail(fmt.Errorf("old primary: %w", err))
	}
	r.Rejoin = time.Since(t0).Seconds()
	w.stop()
	r.Check = sameRows(ctx, to, from)
	if n, err := missing(ctx, from, w.ids(to.name)); err == nil && n > 0 {
		r.Check += fmt.Sprintf("; %d rows of the new primary missing on the rejoined server", n)
	}
	return r
}

// --- the writer ------------------------------------------------------------

// writing waits until standby streams from primary, starts the writer and
// waits until primary acknowledged 100 rows: the state every round starts in.
func writing(ctx context.Context, primary, standby *node) (*writer, error) {
	if err := waitStreaming(ctx, standby, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("before the role change: %w", err)
	}
	w, err := startWriter(ctx, primary, standby)
	if err != nil {
		return nil, err
	}
	if err := w.waitAcks(primary.name, 100, time.Minute); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

// ack is one row a server acknowledged.
type ack struct {
	id     int64
	server string
	at     time.Time
}

// writer commits one numbered row at a time to whichever of its servers
// accepts it, the last one that did first, as clients that retry on the
// other address do. A row whose commit failed is tried again (ON CONFLICT
// DO NOTHING: a commit whose answer was lost may still have happened).
type writer struct {
	nodes []*node
	mu    sync.Mutex
	acks  []ack
	quit  chan struct{}
	done  chan struct{}
}

const writerTable = "CREATE TABLE IF NOT EXISTS fo_rows (id bigint PRIMARY KEY, server text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"

func startWriter(ctx context.Context, primary *node, others ...*node) (*writer, error) {
	db, err := pgx.Connect(ctx, primary.conn())
	if err != nil {
		return nil, fmt.Errorf("writer: %s: %w", primary.name, err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, writerTable); err != nil {
		return nil, fmt.Errorf("writer: %s: %w", primary.name, err)
	}
	var next int64
	if err := db.QueryRow(ctx, "SELECT coalesce(max(id), 0) + 1 FROM fo_rows").Scan(&next); err != nil {
		return nil, fmt.Errorf("writer: %s: %w", primary.name, err)
	}
	w := &writer{nodes: append([]*node{primary}, others...), quit: make(chan struct{}), done: make(chan struct{})}
	go w.run(next)
	return w, nil
}

func (w *writer) run(id int64) {
	defer close(w.done)
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	last := 0
	for ; ; id++ {
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			ok := false
			for i := range w.nodes {
				k := (last + i) % len(w.nodes)
				if w.try(conns, w.nodes[k], id) {
					last, ok = k, true
					break
				}
			}
			if ok {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(writerPause)
	}
}

// try inserts row id on n and records the acknowledgement.
func (w *writer) try(conns map[string]*pgx.Conn, n *node, id int64) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	db := conns[n.name]
	if db == nil || db.IsClosed() {
		var err error
		if db, err = pgx.Connect(ctx, n.conn()); err != nil {
			return false
		}
		conns[n.name] = db
	}
	if _, err := db.Exec(ctx, "INSERT INTO fo_rows (id, server) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", id, n.name); err != nil {
		db.Close(context.Background())
		delete(conns, n.name)
		return false
	}
	at := time.Now()
	w.mu.Lock()
	w.acks = append(w.acks, ack{id, n.name, at})
	w.mu.Unlock()
	return true
}

func (w *writer) stop() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
}

// waitAcks waits until server acknowledged n rows.
func (w *writer) waitAcks(server string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(w.ids(server)) < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("writer: %d rows acknowledged by %s after %s, want %d", len(w.ids(server)), server, timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// firstAck waits for the first row server acknowledges and returns when.
func (w *writer) firstAck(server string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		for _, a := range w.acks {
			if a.server == server {
				w.mu.Unlock()
				return a.at, nil
			}
		}
		w.mu.Unlock()
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("writer: no row acknowledged by %s in %s", server, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// downtime is from the last row acknowledged by from to the first
// acknowledged by to after it.
func (w *writer) downtime(from, to string) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var last time.Time
	for _, a := range w.acks {
		if a.server == from {
			last = a.at
		}
		if a.server == to && !last.IsZero() {
			return a.at.Sub(last)
		}
	}
	return -1
}

// lastID is the highest row acknowledged so far.
func (w *writer) lastID() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.acks) == 0 {
		return 0
	}
	return w.acks[len(w.acks)-1].id
}

// ids are the rows server acknowledged ("": any server).
func (w *writer) ids(server string) []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int64
	for _, a := range w.acks {
		if server == "" || a.server == server {
			out = append(out, a.id)
		}
	}
	return out
}

// --- checks ---------------------------------------------------------------

// missing counts the ids n does not hold.
func missing(ctx context.Context, n *node, ids []int64) (int, error) {
	db, err := pgx.Connect(ctx, n.conn())
	if err != nil {
		return 0, fmt.Errorf("check %s: %w", n.name, err)
	}
	defer db.Close(ctx)
	var k int
	err = db.QueryRow(ctx, "SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM fo_rows r WHERE r.id = a.id)", ids).Scan(&k)
	if err != nil {
		return 0, fmt.Errorf("check %s: %w", n.name, err)
	}
	return k, nil
}

// rowsDigest fingerprints fo_rows and pgbench_accounts row for row.
const rowsDigest = `SELECT (SELECT count(*) || '/' || coalesce(md5(string_agg(id || ':' || server, ',' ORDER BY id)), '') FROM fo_rows)
 || ' ' || (SELECT count(*) || '/' || sum(abalance) FROM pgbench_accounts)`

// sameRows waits until standby replayed everything primary wrote and
// compares their rows: "ok" or what differs.
func sameRows(ctx context.Context, primary, standby *node) string {
	p, err := pgx.Connect(ctx, primary.conn())
	if err != nil {
		return "check: " + err.Error()
	}
	defer p.Close(ctx)
	s, err := pgx.Connect(ctx, standby.conn())
	if err != nil {
		return "check: " + err.Error()
	}
	defer s.Close(ctx)
	var lsn string
	if err := p.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		return "check: " + err.Error()
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var caught bool
		err := s.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&caught)
		if err == nil && caught {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("%s did not replay %s in 2 minutes (%v)", standby.name, lsn, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var dp, ds string
	if err := p.QueryRow(ctx, rowsDigest).Scan(&dp); err != nil {
		return "check: " + err.Error()
	}
	if err := s.QueryRow(ctx, rowsDigest).Scan(&ds); err != nil {
		return "check: " + err.Error()
	}
	if dp != ds {
		return fmt.Sprintf("MISMATCH: %s has %s, %s has %s", primary.name, dp, standby.name, ds)
	}
	return "ok"
}

// primaryOf is p's primary, then its standby.
func primaryOf(ctx context.Context, p pair) (primary, standby *node, err error) {
	a, b := p.nodes()
	db, err := pgx.Connect(ctx, a.conn())
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", p.tool(), a.name, err)
	}
	defer db.Close(ctx)
	var standbyA bool
	if err := db.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standbyA); err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", p.tool(), a.name, err)
	}
	if standbyA {
		return b, a, nil
	}
	return a, b, nil
}

// waitFollows waits until n streams and holds a row above after, which
// only the new primary wrote (a server that streams for a moment before
// its rewind, as Patroni's does, is not following yet).
func waitFollows(ctx context.Context, n *node, after int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := waitStreaming(ctx, n, time.Until(deadline))
		if err != nil {
			return err
		}
		if k, err := missing(ctx, n, []int64{after + 1}); err == nil && k == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s streams but has not replayed row %d after %s", n.name, after+1, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitStreaming waits until n is a standby whose WAL receiver streams.
func waitStreaming(ctx context.Context, n *node, timeout time.Duration) error {
	return pollNode(ctx, n, timeout, "streaming", func(ctx context.Context, db *pgx.Conn) error {
		var status string
		if err := db.QueryRow(ctx, "SELECT coalesce((SELECT status FROM pg_stat_wal_receiver), 'none')").Scan(&status); err != nil {
			return err
		}
		if status != "streaming" {
			return fmt.Errorf("wal receiver: %s", status)
		}
		return nil
	})
}

// pollNode asks check on a fresh connection to n until it returns nil.
func pollNode(ctx context.Context, n *node, timeout time.Duration, what string, check func(context.Context, *pgx.Conn) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		last = func() error {
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			db, err := pgx.Connect(cctx, n.conn())
			if err != nil {
				return err
			}
			defer db.Close(ctx)
			return check(cctx, db)
		}()
		if last == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not %s after %s: %v", n.name, what, timeout, last)
}

// waitDown waits until n refuses connections (its operator's probe).
func probeDown(ctx context.Context, n *node) bool {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	db, err := pgx.Connect(cctx, n.conn())
	if err != nil {
		var pe *pgconn.PgError
		return !errors.As(err, &pe) // refused or timed out; a server error means it is up
	}
	db.Close(ctx)
	return false
}

// freeTCPPort is a port free on 127.0.0.1 now and not handed out before
// in this run.
func freeTCPPort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !usedPorts[p] {
			usedPorts[p] = true
			return p, nil
		}
	}
	return 0, errors.New("free port: none found in 100 tries")
}

// --- walferry ----------------------------------------------------------------

// walferryPair is a primary archiving into a filesystem repository and a
// streaming standby of it; the role changes are docs/switchover.md's.
type walferryPair struct {
	k    *cluster
	a, b *node
	url  string
}

func (p *walferryPair) tool() string           { return "walferry" }
func (p *walferryPair) nodes() (a, b *node)    { return p.a, p.b }
func (p *walferryPair) logFile(n *node) string { return filepath.Join(n.dir, "server.log") }

func newWalferryPair(ctx context.Context, base *cluster) (*walferryPair, error) {
	c := base.c
	k := &cluster{c: c, name: "failover-walferry", dir: filepath.Join(base.dir, "walferry")}
	k.env = append(append([]string{}, base.env...), "WALFERRY_LOG_FORMAT=text")
	p := &walferryPair{k: k, url: c.walferryURL("fs", "/failover")}
	var err error
	if p.a, err = newNode(k, "a"); err != nil {
		return nil, err
	}
	if p.b, err = newNode(k, "b"); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(strings.TrimPrefix(p.url, "file://")), 0o755); err != nil {
		return nil, err
	}
	if err := c.chownTree(k.dir, filepath.Join(c.work, "repos")); err != nil {
		return nil, err
	}
	pg := func(prog string) string { return filepath.Join(c.pgbin, prog) }
	if _, err := k.asPG(pg("initdb"), "-D", p.a.pgdata, "-A", "trust", "-U", "postgres", "-k", "--no-sync"); err != nil {
		return p, err
	}
	if err := appendFile(filepath.Join(p.a.pgdata, "postgresql.conf"), p.sharedConf()); err != nil {
		return p, err
	}
	if err := appendFile(filepath.Join(p.a.pgdata, "pg_hba.conf"), "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"); err != nil {
		return p, err
	}
	if err := p.k.startServer(p.a.pgdata, p.logFile(p.a)); err != nil {
		return p, err
	}
	steps := [][]string{
		{c.walferry, "repo", "init", "--repo", p.url, "--pgdata", p.a.pgdata, "--instance", "a"},
		{pg("pgbench"), "-i", "-q", "-s", strconv.Itoa(failoverScale), "-h", "127.0.0.1", "-p", strconv.Itoa(p.a.port), "-U", "postgres", "postgres"},
		{pg("psql"), "-X", "-qc", writerTable, "-h", "127.0.0.1", "-p", strconv.Itoa(p.a.port), "-U", "postgres", "postgres"},
		{c.walferry, "backup-push", "--repo", p.url, "--pgdata", p.a.pgdata, "--pg-conn", p.a.conn()},
		{pg("pg_basebackup"), "-D", p.b.pgdata, "-X", "stream", "-c", "fast", "-R", "--no-sync", "-d", p.a.conn()},
	}
	for _, argv := range steps {
		if _, err := k.asPG(argv...); err != nil {
			return p, fmt.Errorf("walferry pair: %w", err)
		}
	}
	if err := p.k.startServer(p.b.pgdata, p.logFile(p.b)); err != nil {
		return p, err
	}
	return p, waitStreaming(ctx, p.b, 2*time.Minute)
}

// newNode makes n's directory with its own settings in node.conf, outside
// the data directory (postgresql.conf includes ../node.conf): pg_rewind
// copies the source's postgresql.conf, not this.
func newNode(k *cluster, name string) (*node, error) {
	n := &node{name: name, dir: filepath.Join(k.dir, name)}
	n.pgdata = filepath.Join(n.dir, "pg")
	var err error
	if n.port, err = freeTCPPort(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n", n.port, k.c.sockDir)
	return n, os.WriteFile(filepath.Join(n.dir, "node.conf"), []byte(conf), 0o644)
}

// sharedConf is what both servers' postgresql.conf end with.
func (p *walferryPair) sharedConf() string {
	w := p.k.c.walferry
	return fmt.Sprintf(`
# bench: F1-F2, walferry
include_if_exists = '../node.conf'
wal_level = replica
hot_standby = on
max_wal_senders = 10
wal_keep_size = 256MB
max_wal_size = 1GB
shared_buffers = 128MB
archive_mode = on
archive_command = '%s archive-push --repo %s %%p'
restore_command = '%s archive-get --partial --repo %s %%f %%p'
`, w, p.url, w, p.url)
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	return f.Close()
}

// role runs one walferry role command on n, as docs/switchover.md shows
// it, and decodes its --json result into v.
func (p *walferryPair) role(n *node, v any, cmd string, more ...string) (time.Duration, error) {
	argv := append([]string{p.k.c.walferry, cmd, "--pgdata", n.pgdata, "--repo", p.url, "--instance", n.name,
		"--pg-conn", n.conn(), "--pg-bin", p.k.c.pgbin, "--json"}, more...)
	t0 := time.Now()
	out, err := p.k.asPG(argv...)
	d := time.Since(t0)
	if err != nil {
		return d, fmt.Errorf("walferry %s on %s: %w", cmd, n.name, err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return d, fmt.Errorf("walferry %s on %s: result: %w: %s", cmd, n.name, err, out)
	}
	return d, nil
}

func (p *walferryPair) switchover(ctx context.Context, from, to *node) (string, error) {
	var dem role.DemoteResult
	var pro role.PromoteResult
	var rej role.RejoinResult
	d1, err := p.role(from, &dem, "demote", "--source-conn", to.conn(), "--restart", "--pg-log", p.logFile(from))
	if err != nil {
		return "", err
	}
	d2, err := p.role(to, &pro, "promote")
	if err != nil {
		return "", err
	}
	d3, err := p.role(from, &rej, "rejoin", "--source-conn", to.conn())
	steps := fmt.Sprintf("demote %.2f s, promote %.2f s (pg_promote %.2f s, then its %s backup), rejoin %.2f s (%s, %d bytes copied)",
		d1.Seconds(), d2.Seconds(), pro.Promoted.Seconds(), pro.BackupType, d3.Seconds(), rej.Method, rej.BytesCopied)
	return steps, err
}

func (p *walferryPair) lose(from *node) error {
	_, err := p.k.asPG(filepath.Join(p.k.c.pgbin, "pg_ctl"), "-D", from.pgdata, "-m", "immediate", "-w", "stop")
	return err
}

// failover is the operator script: probe the primary every
// operatorProbe; at the first failure, promote --force on the standby.
// walferry's cross-site promotion is a decision, not automatic.
func (p *walferryPair) failover(ctx context.Context, from, to *node, r *f2Result) error {
	t0 := time.Now()
	for !probeDown(ctx, from) {
		if time.Since(t0) > time.Minute {
			return fmt.Errorf("operator: %s still answers a minute after it was killed", from.name)
		}
		time.Sleep(operatorProbe)
	}
	r.Detect = time.Since(t0).Seconds()
	var pro role.PromoteResult
	d, err := p.role(to, &pro, "promote", "--force")
	r.Promote = d.Seconds()
	return err
}

func (p *walferryPair) rejoin(ctx context.Context, from, to *node, r *f2Result) error {
	var rej role.RejoinResult
	_, err := p.role(from, &rej, "rejoin", "--source-conn", to.conn(), "--restart", "--pg-log", p.logFile(from))
	r.Method, r.BytesCopied, r.DataBytes = rej.Method, rej.BytesCopied, rej.DataDirBytes
	return err
}

func (p *walferryPair) stop() { stopServers(p.k, p.a, p.b) }

// stopServers stops the servers of nodes still running (pg_ctl -m immediate).
func stopServers(k *cluster, nodes ...*node) {
	for _, n := range nodes {
		if n == nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(n.pgdata, "postmaster.pid")); err == nil {
			k.asPG(filepath.Join(k.c.pgbin, "pg_ctl"), "-D", n.pgdata, "-m", "immediate", "-w", "stop")
		}
	}
}

// waitPrimary waits until n accepts writes.
func waitPrimary(ctx context.Context, n *node, timeout time.Duration) error {
	return pollNode(ctx, n, timeout, "a primary", func(ctx context.Context, db *pgx.Conn) error {
		var standby bool
		if err := db.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
			return err
		}
		if standby {
			return errors.New("in recovery")
		}
		return nil
	})
}

// --- the report --------------------------------------------------------------

// failoverPart is the F1-F2 block.
func failoverPart(c config, res *failoverResults) (string, error) {
	var b strings.Builder
	patroni := fmt.Sprintf("| Patroni | %s; bootstrap.dcs ttl %d, loop_wait %d, retry_timeout %d, use_pg_rewind, use_slots, asynchronous replication, watchdog off |",
		res.Setup["Patroni"], patroniTTL, patroniLoopWait, patroniRetryTimeout)
	about, err := aboutBlock(c, strings.TrimRight(c.failoverAbout, "\n")+"\n"+patroni)
	if err != nil {
		return "", err
	}
	b.WriteString(about)
	tools := []string{"Patroni", "walferry"}
	if c.want["F1"] {
		fmt.Fprintf(&b, "### F1: planned switchover under writes (a -> b and back, %d rounds: median of %d switchovers, fastest and slowest in parentheses)\n\n",
			c.failoverRounds, 2*c.failoverRounds)
		b.WriteString("| tool | command(s) s | write downtime s | old primary streams after s | acknowledged rows lost | rows equal after | errors |\n")
		b.WriteString("|---|--:|--:|--:|--:|---|---|\n")
		med := map[string]float64{}
		for _, tool := range tools {
			var cmd, down, follow []float64
			lost, checks, errs := 0, []string{}, []string{}
			for _, r := range res.F1 {
				if r.Tool != tool {
					continue
				}
				if r.Err != "" {
					errs = append(errs, fmt.Sprintf("round %d %s -> %s: %s", r.Round, r.From, r.To, r.Err))
					continue
				}
				cmd, down, follow = append(cmd, r.Command), append(down, r.Downtime), append(follow, r.Follow)
				lost += r.Lost
				if r.Check != "ok" {
					checks = append(checks, r.Check)
				}
			}
			med[tool] = medianOf(down)
			fmt.Fprintf(&b, "| %s | %s | **%s** | %s | %d | %s | %s |\n", tool, spread(cmd), spread(down), spread(follow), lost,
				checkCell(len(cmd), checks), orDash(strings.Join(errs, "; ")))
		}
		if med["walferry"] > 0 && med["Patroni"] > 0 {
			fmt.Fprintf(&b, "\nWrite downtime, Patroni / walferry (medians): **%.2fx** (above 1: walferry's is shorter).\n", med["Patroni"]/med["walferry"])
		}
		var steps []string
		for _, r := range res.F1 {
			if r.Steps != "" {
				steps = append(steps, fmt.Sprintf("- %s round %d %s -> %s: %s", r.Tool, r.Round, r.From, r.To, r.Steps))
			}
		}
		if len(steps) > 0 {
			b.WriteString("\nwalferry's steps:\n\n" + strings.Join(steps, "\n") + "\n")
		}
		b.WriteString("\n")
	}
	if c.want["F2"] {
		fmt.Fprintf(&b, "### F2: the primary lost under writes (%d rounds, the other server lost each round: median, fastest and slowest in parentheses)\n\n", c.failoverRounds)
		b.WriteString("| tool | how the standby is promoted | first write on the new primary after the kill s | acknowledged rows lost | old primary streams again after s | how it rejoins | rows equal after | errors |\n")
		b.WriteString("|---|---|--:|--:|--:|---|---|---|\n")
		how := map[string]string{
			"Patroni":  fmt.Sprintf("automatic, when the leader key expires (ttl %d s)", patroniTTL),
			"walferry": fmt.Sprintf("an operator script: a probe of the primary every %s, `walferry promote --force` at its first failure", operatorProbe),
		}
		med := map[string]float64{}
		for _, tool := range tools {
			var first, rejoin, detect, promote []float64
			lost, acked, checks, errs := 0, 0, []string{}, []string{}
			var methods []string
			for _, r := range res.F2 {
				if r.Tool != tool {
					continue
				}
				if r.Err != "" {
					errs = append(errs, fmt.Sprintf("round %d: %s", r.Round, r.Err))
					continue
				}
				first, rejoin = append(first, r.FirstWrite), append(rejoin, r.Rejoin)
				detect, promote = append(detect, r.Detect), append(promote, r.Promote)
				lost, acked = lost+r.LostRows, acked+r.AckedBefore
				if r.Check != "ok" {
					checks = append(checks, r.Check)
				}
				m := r.Method
				if r.DataBytes > 0 {
					m += fmt.Sprintf(", %.0f of %.0f MiB copied", float64(r.BytesCopied)/(1<<20), float64(r.DataBytes)/(1<<20))
				}
				if !slices.Contains(methods, m) {
					methods = append(methods, m)
				}
			}
			med[tool] = medianOf(first)
			h := how[tool]
			if tool == "walferry" && len(detect) > 0 {
				h += fmt.Sprintf(" (detected after %s s, promote --force %s s)", fmtMedian(detect), fmtMedian(promote))
			}
			fmt.Fprintf(&b, "| %s | %s | **%s** | %d of %d | %s | %s | %s | %s |\n", tool, h, spread(first), lost, acked, spread(rejoin),
				orDash(strings.Join(methods, "; ")), checkCell(len(first), checks), orDash(strings.Join(errs, "; ")))
		}
		if med["walferry"] > 0 && med["Patroni"] > 0 {
			fmt.Fprintf(&b, "\nTime to the first write on the new primary, Patroni / walferry (medians): **%.2fx**.\n", med["Patroni"]/med["walferry"])
		}
		b.WriteString("\n")
	}
	return b.String(), nil
}

// spread is a median with the fastest and slowest in parentheses.
func spread(v []float64) string {
	switch len(v) {
	case 0:
		return "-"
	case 1:
		return fmt.Sprintf("%.2f", v[0])
	}
	return fmt.Sprintf("%.2f (%.2f-%.2f)", medianOf(v), minOf(v), maxOf(v))
}

func fmtMedian(v []float64) string { return fmt.Sprintf("%.2f", medianOf(v)) }

func checkCell(ok int, problems []string) string {
	if ok == 0 {
		return "-"
	}
	if len(problems) == 0 {
		return fmt.Sprintf("ok in %d of %d", ok, ok)
	}
	return orDash(strings.Join(problems, "; "))
}
