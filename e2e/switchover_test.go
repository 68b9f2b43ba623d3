package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/internal/repo"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/k8s/role"
)

// roleSite is one server of a switchover test with its walferry identity.
type roleSite struct {
	name string
	c    *pgtest.Cluster
}

// rolePrimary starts a primary archiving into a fresh repository and
// returns it with the configuration lines every server of the lineage
// shares (archive_command, restore_command with --partial).
func rolePrimary(t *testing.T, kind repoKind, s3 testenv.S3Env, opts pgtest.Options) (*pgtest.Cluster, string, []string) {
	t.Helper()
	a := pgtest.New(t, opts)
	url := newRepoURL(t, a, kind, s3)
	mustWF(t, a, "repo", "init", "--repo", url, "--pgdata", a.DataDir)
	conf := []string{
		"wal_level = replica",
		"archive_mode = on",
		"archive_command = " + sqlQuote(shellQuote(walferryBin)+" archive-push --repo "+shellQuote(url)+" %p"),
		"restore_command = " + sqlQuote(shellQuote(walferryBin)+" archive-get --partial --repo "+shellQuote(url)+" %f %p"),
		"max_wal_size = 1GB",
		"hot_standby = on",
		"wal_keep_size = 256MB",
	}
	a.AppendConf(t, conf...)
	a.Start(t)
	return a, url, conf
}

// roleStandby clones primary into a new cluster that streams from it.
func roleStandby(t *testing.T, primary *pgtest.Cluster, conf []string) *pgtest.Cluster {
	t.Helper()
	b := pgtest.New(t, pgtest.Options{})
	cloneInto(t, b, primary.ConnString(), []string{"-X", "stream", "-c", "fast", "--no-sync"},
		append(conf, "primary_conninfo = "+sqlQuote(primary.ConnString()))...)
	writeOwned(t, b, filepath.Join(b.DataDir, "standby.signal"), nil)
	b.Start(t)
	return b
}

// roleArgs are the arguments every role command of s gets.
func roleArgs(s roleSite, url string, more ...string) []string {
	return append([]string{"--repo", url, "--pgdata", s.c.DataDir, "--instance", s.name, "--pg-conn", s.c.ConnString(),
		"--pg-bin", s.c.PGBin, "--json"}, more...)
}

// ack is one committed row of the writer: which server acknowledged it, when.
type ack struct {
	id     int
	server string
	at     time.Time
}

// writer commits one row at a time to whichever server accepts writes,
// as clients that retry on another address do.
type writer struct {
	mu    sync.Mutex
	acks  []ack
	pause sync.Mutex
	quit  chan struct{}
	done  chan struct{}
}

func startWriter(t *testing.T, sites ...roleSite) *writer {
	t.Helper()
	for _, s := range sites[:1] {
		psql(t, s.c, "CREATE TABLE IF NOT EXISTS w (id int PRIMARY KEY, server text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
	}
	w := &writer{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		conns := map[string]*pgx.Conn{}
		defer func() {
			for _, c := range conns {
				c.Close(context.Background())
			}
		}()
		try := func(s roleSite, id int) bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			c := conns[s.name]
			if c == nil || c.IsClosed() {
				var err error
				if c, err = pgx.Connect(ctx, s.c.ConnString()); err != nil {
					return false
				}
				conns[s.name] = c
			}
			if _, err := c.Exec(ctx, "INSERT INTO w (id, server) VALUES ($1, $2)", id, s.name); err != nil {
				c.Close(context.Background())
				delete(conns, s.name)
				return false
			}
			return true
		}
		for id := 1; ; id++ {
			for acked := false; !acked; {
				select {
				case <-w.quit:
					return
				default:
				}
				w.pause.Lock()
				for _, s := range sites {
					if try(s, id) {
						w.mu.Lock()
						w.acks = append(w.acks, ack{id, s.name, time.Now()})
						w.mu.Unlock()
						acked = true
						break
					}
				}
				w.pause.Unlock()
				if !acked {
					time.Sleep(20 * time.Millisecond)
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func (w *writer) stop() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
}

// waitAcks waits until n rows were acknowledged by server.
func (w *writer) waitAcks(t *testing.T, server string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d writes acknowledged by %s", n, server), 2*time.Minute, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		k := 0
		for _, a := range w.acks {
			if a.server == server {
				k++
			}
		}
		return k >= n
	})
}

// downtime is from the last write from acknowledged before the first
// acknowledged by to.
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

func (w *writer) ids(server string) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int
	for _, a := range w.acks {
		if server == "" || a.server == server {
			out = append(out, a.id)
		}
	}
	return out
}

// checkAcked fails t unless every id is in c's table w.
func checkAcked(t *testing.T, c *pgtest.Cluster, what string, ids []int) {
	t.Helper()
	if len(ids) == 0 {
		return
	}
	var list []string
	for _, id := range ids {
		list = append(list, fmt.Sprint(id))
	}
	missing := psql(t, c, "SELECT count(*) FROM unnest(ARRAY["+strings.Join(list, ",")+"]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.id = a.id)")
	if missing != "0" {
		t.Errorf("%s: %s of %d acknowledged rows are missing", what, missing, len(ids))
	}
}

// sameData pauses the writer, waits until standby replayed primary and
// compares them row for row.
func sameData(t *testing.T, w *writer, primary, standby *pgtest.Cluster, step string) {
	t.Helper()
	w.pause.Lock()
	defer w.pause.Unlock()
	waitReplayed(t, primary, standby)
	tables := append([]string{"w"}, pgbenchTables...)
	if p, s := tablesDigest(t, primary, tables...), tablesDigest(t, standby, tables...); p != s {
		t.Fatalf("%s: the standby's rows differ from the primary's:\nprimary %s\nstandby %s", step, p, s)
	}
}

func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decode %q: %v", r.stdout, err)
	}
	return v
}

// savePort keeps c's pgtest.conf (its port and socket directory): pg_rewind
// and a restore bring the source's.
func savePort(t *testing.T, c *pgtest.Cluster) func() {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "pgtest.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return func() { writeOwned(t, c, filepath.Join(c.DataDir, "pgtest.conf"), b) }
}

// TestSwitchover: a planned switchover A -> B while a writer commits,
// A rejoins with nothing copied, then back B -> A; the data is equal row
// for row after each step, and the write downtime is logged.
func TestSwitchover(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	ac, url, conf := rolePrimary(t, kindFS, s3, pgtest.Options{DataChecksums: true})
	pgRun(t, ac, time.Minute, "pgbench", "-i", "-s", "2", "-q")
	bc := roleStandby(t, ac, conf)
	a, b := roleSite{"a", ac}, roleSite{"b", bc}
	w := startWriter(t, a, b)
	bench := startPgbench(t, ac)
	w.waitAcks(t, "a", 50)
	bench.stop(t)
	sameData(t, w, ac, bc, "before the switchover")

	switchover := func(from, to roleSite) {
		t.Helper()
		dem := decode[role.DemoteResult](t, mustWF(t, from.c, append([]string{"demote"}, roleArgs(from, url, "--source-conn", to.c.ConnString(), "--restart", "--pg-log", from.c.LogFile)...)...))
		t.Logf("%s demoted in %v: %s; token ends at %s; partial %s", from.name, dem.Duration, dem.Generation, dem.Token.EndLSN, dem.Partial)
		pro := decode[role.PromoteResult](t, mustWF(t, to.c, append([]string{"promote"}, roleArgs(to, url)...)...))
		t.Logf("%s promoted in %v (pg_promote %v) on timeline %d at %s; backup %s (%s)", to.name, pro.Duration, pro.Promoted, pro.Timeline, pro.SwitchLSN, pro.Backup, pro.BackupType)
		if pro.SwitchLSN != dem.Token.EndLSN {
			t.Errorf("the new timeline starts at %s, want the token's %s", pro.SwitchLSN, dem.Token.EndLSN)
		}
		w.waitAcks(t, to.name, 20)
		t.Logf("write downtime %s -> %s: %v (last write acknowledged by %s to first by %s)", from.name, to.name, w.downtime(from.name, to.name), from.name, to.name)
		rej := decode[role.RejoinResult](t, mustWF(t, from.c, append([]string{"rejoin"}, roleArgs(from, url, "--source-conn", to.c.ConnString())...)...))
		t.Logf("%s rejoined by %s: %s; copied %d of %d bytes", from.name, rej.Method, rej.Why, rej.BytesCopied, rej.DataDirBytes)
		if rej.Method != role.MethodStandby || rej.BytesCopied != 0 {
			t.Errorf("rejoin after a demote: method %s, %d bytes copied; want standby, 0", rej.Method, rej.BytesCopied)
		}
		sameData(t, w, to.c, from.c, from.name+" -> "+to.name)
	}
	switchover(a, b)
	switchover(b, a)
	w.stop()
	sameData(t, w, ac, bc, "at the end")
	checkAcked(t, ac, "the final primary", w.ids(""))
	checkAcked(t, bc, "the final standby", w.ids(""))
}

// failover kills A during writes, promotes B with --force, rejoins A and
// checks that A streams from B with every row B acknowledged.
func failover(t *testing.T, opts pgtest.Options, wantMethod string) {
	s3 := needE2E(t)
	t.Parallel()
	ac, url, conf := rolePrimary(t, kindFS, s3, opts)
	pgRun(t, ac, time.Minute, "pgbench", "-i", "-s", "2", "-q")
	mustWF(t, ac, "backup-push", "--repo", url)
	bc := roleStandby(t, ac, conf)
	a, b := roleSite{"a", ac}, roleSite{"b", bc}
	w := startWriter(t, a, b)
	bench := startPgbench(t, ac)
	w.waitAcks(t, "a", 50)
	// Diverge A: what it commits now, B may never receive.
	ac.Stop(t, pgtest.StopImmediate)
	if err := bench.stopErr(); err != nil {
		t.Logf("pgbench ended with the primary: %v", err)
	}
	pro := decode[role.PromoteResult](t, mustWF(t, bc, append([]string{"promote"}, roleArgs(b, url, "--force")...)...))
	t.Logf("b promoted by failover in %v on timeline %d at %s; WAL at risk %d bytes (archived to %s); backup %s (%s)",
		pro.Duration, pro.Timeline, pro.SwitchLSN, pro.AtRiskBytes, pro.ArchivedEnd, pro.Backup, pro.BackupType)
	if len(pro.Generations) != 2 || pro.Generations[0].Reason != "failover" || pro.Generations[1].Reason != "promote" {
		t.Errorf("generations %+v, want failover then promote", pro.Generations)
	}
	w.waitAcks(t, "b", 30)
	restorePort := savePort(t, ac)
	rej := decode[role.RejoinResult](t, mustWF(t, ac, append([]string{"rejoin"}, roleArgs(a, url, "--source-conn", bc.ConnString())...)...))
	restorePort()
	t.Logf("a rejoined by %s: %s; copied %d of %d bytes (%.1f%%)", rej.Method, rej.Why, rej.BytesCopied, rej.DataDirBytes,
		100*float64(rej.BytesCopied)/float64(max(rej.DataDirBytes, 1)))
	if rej.Method != wantMethod || rej.BytesCopied <= 0 || rej.BytesCopied >= rej.DataDirBytes {
		t.Errorf("rejoin after a failover: method %s, %d of %d bytes copied; want %s, some but not all", rej.Method, rej.BytesCopied, rej.DataDirBytes, wantMethod)
	}
	ac.Start(t)
	waitFor(t, "a to stream from b", 2*time.Minute, func() bool {
		return psql(t, ac, "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == "1"
	})
	w.stop()
	sameData(t, w, bc, ac, "after the rejoin")
	checkAcked(t, ac, "a, rejoined", w.ids("b"))
	lost := len(w.ids("a")) - countPresent(t, bc, w.ids("a"))
	t.Logf("%d of %d rows acknowledged by a before it died are not on b (asynchronous replication)", lost, len(w.ids("a")))
}

func countPresent(t *testing.T, c *pgtest.Cluster, ids []int) int {
	var list []string
	for _, id := range ids {
		list = append(list, fmt.Sprint(id))
	}
	var n int
	fmt.Sscan(psql(t, c, "SELECT count(*) FROM w WHERE id = ANY(ARRAY["+strings.Join(list, ",")+"]::int[])"), &n)
	return n
}

// TestFailoverRewind: with data checksums, the old primary rejoins with pg_rewind.
func TestFailoverRewind(t *testing.T) {
	failover(t, pgtest.Options{DataChecksums: true}, role.MethodRewind)
}

// TestFailoverDelta: without wal_log_hints nor checksums, pg_rewind cannot
// work; the old primary rejoins with a delta restore of b's backup.
func TestFailoverDelta(t *testing.T) {
	failover(t, pgtest.Options{}, role.MethodDelta)
}

// TestPromoteRace: two standbys promote --force at the same instant:
// exactly one wins, the other exits 8 naming the winner and stays a
// standby. Then 20 rounds race NextGeneration directly.
func TestPromoteRace(t *testing.T) {
	s3 := needE2E(t)
	forEachRepoKind(t, s3, func(t *testing.T, kind repoKind, s3 testenv.S3Env) {
		ac, url, conf := rolePrimary(t, kind, s3, pgtest.Options{})
		bc, cc := roleStandby(t, ac, conf), roleStandby(t, ac, conf)
		psql(t, ac, "CREATE TABLE r AS SELECT 1 AS x")
		waitReplayed(t, ac, bc)
		waitReplayed(t, ac, cc)
		ac.Stop(t, pgtest.StopImmediate)
		sites := []roleSite{{"b", bc}, {"c", cc}}
		results := make([]result, 2)
		var start, wg sync.WaitGroup
		start.Add(1)
		for i, s := range sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start.Wait()
				results[i] = wf(t, s.c, append([]string{"promote"}, roleArgs(s, url, "--force", "--no-backup")...)...)
			}()
		}
		start.Done()
		wg.Wait()
		winners := 0
		for i, r := range results {
			inRecovery := psql(t, sites[i].c, "SELECT pg_is_in_recovery()")
			switch r.code {
			case 0:
				winners++
				if inRecovery != "f" {
					t.Errorf("%s won but is in recovery", sites[i].name)
				}
			case 8:
				if !strings.Contains(r.stderr, "generation") || inRecovery != "t" {
					t.Errorf("%s lost: %v; in recovery %s; want the winner named and a standby", sites[i].name, r, inRecovery)
				}
				t.Logf("%s lost the race: %s", sites[i].name, strings.TrimSpace(r.stderr))
			default:
				t.Errorf("%s: %v", sites[i].name, r)
			}
		}
		if winners != 1 {
			t.Fatalf("%d winners, want exactly 1", winners)
		}

		r := openRepo(t, url)
		ctx := context.Background()
		for round := 0; round < 20; round++ {
			g, _, err := r.Lineage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			errs := make([]error, 2)
			var start, wg sync.WaitGroup
			start.Add(1)
			for i := range errs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start.Wait()
					_, errs[i] = r.NextGeneration(ctx, g.Number, repo.Generation{Instance: fmt.Sprint("racer-", i), Reason: "failover", Timeline: g.Timeline})
				}()
			}
			start.Done()
			wg.Wait()
			won, lost := 0, 0
			for _, err := range errs {
				switch {
				case err == nil:
					won++
				case errors.Is(err, repo.ErrLineageRace):
					lost++
				default:
					t.Fatalf("round %d: %v", round, err)
				}
			}
			if won != 1 || lost != 1 {
				t.Fatalf("round %d: %d won, %d lost; want 1 and 1", round, won, lost)
			}
		}
	})
}

// stopErr ends the rounds and returns how the last one ended (a round
// cut by the primary's death is an error, not a test failure here).
func (b *bench) stopErr() error {
	close(b.quit)
	err := <-b.done
	<-b.n
	return err
}
