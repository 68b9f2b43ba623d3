package main

// Patroni's side of F1-F2: a 2-member Patroni cluster (a, b) on an etcd of
// its own (the binary tools/kube builds, scripts/install-test-deps.sh),
// everything on 127.0.0.1 with ports picked at start, run as postgres.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// patroniPair is the Patroni cluster: its etcd and one agent per node.
type patroniPair struct {
	k      *cluster
	a, b   *node
	etcd   *daemon
	agents map[string]*daemon
	conf   map[string]string // node -> its patroni.yml
	about  string
	starts int // agents started, to name their logs
}

func (p *patroniPair) tool() string        { return "Patroni" }
func (p *patroniPair) nodes() (a, b *node) { return p.a, p.b }

func newPatroniPair(ctx context.Context, base *cluster) (*patroniPair, error) {
	c := base.c
	k := &cluster{c: c, name: "failover-patroni", dir: filepath.Join(base.dir, "patroni"), env: base.env}
	p := &patroniPair{k: k, agents: map[string]*daemon{}, conf: map[string]string{}}
	var err error
	if p.a, err = newNode(k, "a"); err != nil {
		return nil, err
	}
	if p.b, err = newNode(k, "b"); err != nil {
		return p, err
	}
	etcdPort, err := p.startEtcd()
	if err != nil {
		return p, err
	}
	for _, n := range []*node{p.a, p.b} {
		if err := p.writeConf(n, etcdPort); err != nil {
			return p, err
		}
	}
	if err := c.chownTree(k.dir); err != nil {
		return p, err
	}
	if err := p.startAgent(p.a); err != nil {
		return p, err
	}
	if err := waitPrimary(ctx, p.a, 5*time.Minute); err != nil {
		return p, fmt.Errorf("patroni a did not bootstrap: %w (see %s)", err, filepath.Join(c.work, "logs"))
	}
	pg := func(prog string) string { return filepath.Join(c.pgbin, prog) }
	port := strconv.Itoa(p.a.port)
	for _, argv := range [][]string{
		{pg("pgbench"), "-i", "-q", "-s", strconv.Itoa(failoverScale), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "postgres"},
		{pg("psql"), "-X", "-qc", writerTable, "-h", "127.0.0.1", "-p", port, "-U", "postgres", "postgres"},
	} {
		if _, err := k.asPG(argv...); err != nil {
			return p, fmt.Errorf("patroni pair: %w", err)
		}
	}
	if err := p.startAgent(p.b); err != nil {
		return p, err
	}
	if err := waitStreaming(ctx, p.b, 5*time.Minute); err != nil {
		return p, fmt.Errorf("patroni b: %w", err)
	}
	out, _ := exec.Command("patroni", "--version").Output()
	p.about = fmt.Sprintf("%s, etcd %s", strings.TrimSpace(string(out)), etcdVersion(etcdPort))
	return p, nil
}

// startEtcd starts the single-member etcd on two free ports with a data
// directory of its own and waits until it answers.
func (p *patroniPair) startEtcd() (int, error) {
	client, err := freeTCPPort()
	if err != nil {
		return 0, err
	}
	peer, err := freeTCPPort()
	if err != nil {
		return 0, err
	}
	data := filepath.Join(p.k.dir, "etcd")
	if err := p.k.emptyDir(data); err != nil {
		return 0, err
	}
	p.etcd, err = p.k.startDaemon("f-etcd.log", p.k.c.etcd, "-data-dir", data,
		"-listen-client", fmt.Sprintf("127.0.0.1:%d", client), "-listen-peer", fmt.Sprintf("127.0.0.1:%d", peer))
	if err != nil {
		return 0, fmt.Errorf("etcd: %w", err)
	}
	if err := p.writePid("etcd", p.etcd); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(time.Minute)
	for etcdVersion(client) == "" {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("etcd not answering on 127.0.0.1:%d after a minute (see f-etcd.log)", client)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return client, nil
}

// etcdVersion is what etcd's /version answers, "" when it does not.
func etcdVersion(port int) string {
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get(fmt.Sprintf("http://127.0.0.1:%d/version", port))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	s := b.String()
	if i := strings.Index(s, `"etcdserver":"`); i >= 0 {
		s = s[i+len(`"etcdserver":"`):]
		if j := strings.IndexByte(s, '"'); j >= 0 {
			return s[:j]
		}
	}
	return s
}

// writeConf writes n's patroni.yml: the timing of the const block of
// failover.go, pg_rewind on, PostgreSQL's settings those of walferry's
// pair (without its archiving).
func (p *patroniPair) writeConf(n *node, etcdPort int) error {
	rest, err := freeTCPPort()
	if err != nil {
		return err
	}
	conf := fmt.Sprintf(`scope: bench
name: %[1]s
log:
  level: INFO
restapi:
  listen: 127.0.0.1:%[2]d
  connect_address: 127.0.0.1:%[2]d
etcd3:
  host: 127.0.0.1:%[3]d
bootstrap:
  dcs:
    ttl: %[4]d
    loop_wait: %[5]d
    retry_timeout: %[6]d
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        wal_log_hints: "on"
  initdb:
    - data-checksums
postgresql:
  listen: 127.0.0.1:%[7]d
  connect_address: 127.0.0.1:%[7]d
  data_dir: %[8]s
  bin_dir: %[9]s
  pgpass: %[10]s
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: %[11]s
    shared_buffers: 128MB
    max_wal_size: 1GB
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
watchdog:
  mode: "off"
`, n.name, rest, etcdPort, patroniTTL, patroniLoopWait, patroniRetryTimeout, n.port, n.pgdata, p.k.c.pgbin,
		filepath.Join(n.dir, "pgpass"), p.k.c.sockDir)
	path := filepath.Join(n.dir, "patroni.yml")
	p.conf[n.name] = path
	return os.WriteFile(path, []byte(conf), 0o644)
}

func (p *patroniPair) startAgent(n *node) error {
	p.starts++
	d, err := p.k.startDaemon(fmt.Sprintf("f-patroni-%s-%d.log", n.name, p.starts), "patroni", p.conf[n.name])
	if err != nil {
		return fmt.Errorf("patroni %s: %w", n.name, err)
	}
	p.agents[n.name] = d
	return p.writePid("patroni-"+n.name, d)
}

// writePid records d's pid where run.sh's cleanup finds it when this
// program is interrupted before it stops d itself.
func (p *patroniPair) writePid(name string, d *daemon) error {
	path := filepath.Join(p.k.dir, name+".pid")
	if err := os.WriteFile(path, []byte(strconv.Itoa(d.cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

func (p *patroniPair) switchover(ctx context.Context, from, to *node) (string, error) {
	out, err := p.k.asPG("patronictl", "-c", p.conf[from.name], "switchover", "--leader", from.name, "--candidate", to.name, "--force")
	if err != nil {
		return "", fmt.Errorf("patronictl switchover: %w", err)
	}
	if !strings.Contains(out, "Successfully switched over") {
		return "", fmt.Errorf("patronictl switchover: %s", lastLine(out))
	}
	return "", nil
}

// lose SIGKILLs from's agent, then stops its server with pg_ctl -m
// immediate: the node is gone, nothing of it reacts.
func (p *patroniPair) lose(from *node) error {
	d := p.agents[from.name]
	delete(p.agents, from.name)
	if d != nil {
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
	}
	_, err := p.k.asPG(filepath.Join(p.k.c.pgbin, "pg_ctl"), "-D", from.pgdata, "-m", "immediate", "-w", "stop")
	return err
}

// failover: Patroni's own, once the leader key expired.
func (p *patroniPair) failover(ctx context.Context, from, to *node, r *f2Result) error { return nil }

// rejoin starts from's agent again: it finds b the leader, rewinds its
// server (use_pg_rewind) and starts it as a replica.
func (p *patroniPair) rejoin(ctx context.Context, from, to *node, r *f2Result) error {
	r.Method = "pg_rewind by Patroni"
	return p.startAgent(from)
}

// stop stops the agents (each stops its server) and etcd, by pid.
func (p *patroniPair) stop() {
	for name, d := range p.agents {
		d.stop(time.Minute)
		delete(p.agents, name)
	}
	stopServers(p.k, p.a, p.b)
	p.etcd.stop(30 * time.Second)
	p.etcd = nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
