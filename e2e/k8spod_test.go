package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/walferry/walferry/internal/pg/pgtest"
	"github.com/walferry/walferry/k8s/render"
	"github.com/walferry/walferry/k8s/status"
)

// TestRenderedStandbyPod runs the pod walferry k8s render writes for a
// standby site, without a kubelet: its init containers (prepare, walferry
// bootstrap), its native sidecar (walferry sidecar) and its postgres
// container run as local processes, as the postgres OS user, with exactly
// the commands, arguments and environment of the rendered StatefulSet, the
// rendered ConfigMaps as files and the Secret templates filled in. What a
// pod has and one host lacks is mapped, and only that: each volume is a
// directory (its mount path rewritten to it), and the instance's own ports
// (PostgreSQL's 5432, the sidecar's 9898) are free ports, since the
// processes share one network. The primary site is a PostgreSQL with TLS
// and scram, reached at 127.0.0.7:5432 through a proxy, as the standby
// site reaches the primary site's LoadBalancer. The standby bootstraps from
// the repository, replays it, and streams (the standby sites issue's
// scenario 1).
func TestRenderedStandbyPod(t *testing.T) {
	s3 := needE2E(t)
	t.Parallel()
	certs := newTestCA(t)

	// Site A: the primary, TLS and scram-sha-256 for replication.
	a := pgtest.New(t, pgtest.Options{DataChecksums: true,
		HBA: []string{"hostssl replication replicator 127.0.0.1/32 scram-sha-256"}})
	url := newRepoURL(t, a, kindFS, s3)
	mustWF(t, a, "repo", "init", "--repo", url, "--pgdata", a.DataDir)
	aCert, aKey := certs.issue(t, a, "site-a", net.ParseIP("127.0.0.7"))
	a.AppendConf(t,
		"wal_level = replica", "archive_mode = on",
		"archive_command = "+sqlQuote(shellQuote(walferryBin)+" archive-push --repo "+shellQuote(url)+" %p"),
		"ssl = on", "ssl_cert_file = "+sqlQuote(aCert), "ssl_key_file = "+sqlQuote(aKey),
		"password_encryption = 'scram-sha-256'", "max_wal_senders = 10")
	a.Start(t)
	psql(t, a, "CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD 'rep-secret'")
	psql(t, a, "CREATE TABLE items (id int PRIMARY KEY, what text NOT NULL)")
	psql(t, a, "INSERT INTO items SELECT g, 'before the backup' FROM generate_series(1, 5000) g")
	backupPush(t, a, url, "--pgdata", a.DataDir, "--pg-conn", a.ConnString())
	psql(t, a, "INSERT INTO items SELECT g, 'archived' FROM generate_series(5001, 6000) g")
	psql(t, a, "SELECT pg_switch_wal()")

	// The primary site's LoadBalancer, as the standby site sees it.
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	lb := toxiproxy.NewProxy(srv, "load-balancer", "127.0.0.7:5432", fmt.Sprintf("127.0.0.1:%d", a.Port))
	if err := lb.Start(); err != nil {
		t.Fatalf("listen on 127.0.0.7:5432 for the primary site's load balancer: %v", err)
	}
	t.Cleanup(lb.Stop)

	files, err := render.Render(render.Options{Site: render.SiteStandby, Name: "xkube", Namespace: "default", Instances: 1,
		Repo: url, SourceHost: "127.0.0.7", ReplicationUser: "replicator"})
	if err != nil {
		t.Fatal(err)
	}
	pod := newLocalPod(t, a, files, map[string]string{"replication-password": "rep-secret"})
	bCert, bKey := certs.issue(t, a, "xkube-standby-0", net.ParseIP("127.0.0.1"))
	pod.secretFiles["tls"] = map[string]string{"ca.crt": certs.caFile, "tls.crt": bCert, "tls.key": bKey}

	pod.run(t, a)
	t.Logf("pod: sidecar on %s, PostgreSQL on port %d", pod.sidecarAddr, pod.pgPort)
	b := &sidecar{addr: pod.sidecarAddr, log: pod.logs["sidecar"]}
	st := waitStatus(t, a, b, "the rendered standby streaming", func(r status.Report) bool {
		return r.Role == status.RoleStandby && r.Mode == status.ModeStreaming
	})
	if st.Replication == nil || st.Replication.Upstream != "127.0.0.7:5432" {
		t.Errorf("the rendered standby streams from %+v; want the load balancer 127.0.0.7:5432", st.Replication)
	}
	psql(t, a, "INSERT INTO items SELECT g, 'streamed' FROM generate_series(6001, 6100) g")
	want := tablesDigest(t, a, "items")
	deadline := time.Now().Add(time.Minute)
	for {
		got := pod.psql(t, "SELECT "+digestExpr("items"))
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rendered standby has %s; the primary %s\n%s", got, want, readTail(pod.logs["postgres"]))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// digestExpr is tablesDigest's expression for one table.
func digestExpr(table string) string {
	return fmt.Sprintf("%s || '=' || count(*) || ':' || coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '-') FROM %s r",
		sqlQuote(table), table)
}

// localPod is a rendered pod's containers as local processes.
type localPod struct {
	dir         string
	sts         appsv1.StatefulSet
	configMaps  map[string]map[string]string
	secrets     map[string]string            // the filled-in Secret templates' keys
	secretFiles map[string]map[string]string // secret volume -> key -> file to copy
	volumes     map[string]string            // volume name -> directory
	pgPort      int
	sidecarAddr string
	logs        map[string]string
	uid, gid    int
}

func newLocalPod(t *testing.T, c *pgtest.Cluster, files []render.File, secrets map[string]string) *localPod {
	t.Helper()
	p := &localPod{dir: c.MkdirOwned(t, "pod"), configMaps: map[string]map[string]string{}, secrets: secrets,
		secretFiles: map[string]map[string]string{}, volumes: map[string]string{}, logs: map[string]string{}}
	u, err := user.Lookup(pgtest.ServerOSUser)
	if err != nil {
		t.Fatal(err)
	}
	p.uid, _ = strconv.Atoi(u.Uid)
	p.gid, _ = strconv.Atoi(u.Gid)
	for _, f := range files {
		for _, doc := range bytes.Split(f.Data, []byte("\n---\n")) {
			var head struct{ Kind string }
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", f.Path, err)
			}
			switch head.Kind {
			case "StatefulSet":
				if err := yaml.UnmarshalStrict(doc, &p.sts); err != nil {
					t.Fatalf("%s: %v", f.Path, err)
				}
			case "ConfigMap":
				var cm corev1.ConfigMap
				if err := yaml.UnmarshalStrict(doc, &cm); err != nil {
					t.Fatalf("%s: %v", f.Path, err)
				}
				p.configMaps[cm.Name] = cm.Data
			}
		}
	}
	if p.sts.Name == "" {
		t.Fatal("the render has no StatefulSet")
	}
	for _, v := range p.sts.Spec.Template.Spec.Volumes {
		p.volumes[v.Name] = filepath.Join(p.dir, "volumes", v.Name)
	}
	for _, v := range p.sts.Spec.VolumeClaimTemplates {
		p.volumes[v.Name] = filepath.Join(p.dir, "volumes", v.Name)
	}
	p.pgPort, p.sidecarAddr = freePort(t), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	return p
}

// run starts the pod as the kubelet would: the init containers in order,
// each to completion, a native sidecar (restartPolicy Always) started and
// left running, then the main containers.
func (p *localPod) run(t *testing.T, c *pgtest.Cluster) {
	t.Helper()
	spec := p.sts.Spec.Template.Spec
	for _, v := range spec.Volumes {
		p.fillVolume(t, v)
	}
	for _, v := range p.sts.Spec.VolumeClaimTemplates {
		p.mkdir(t, p.volumes[v.Name], 0o700)
	}
	for _, ic := range spec.InitContainers {
		if ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			p.start(t, ic)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := p.command(ctx, t, ic)
		out, err := cmd.CombinedOutput()
		cancel()
		t.Logf("init container %s: %s", ic.Name, lastLine(strings.TrimSpace(string(out))))
		if err != nil {
			t.Fatalf("init container %s: %v\n%s", ic.Name, err, out)
		}
	}
	for _, mc := range spec.Containers {
		p.start(t, mc)
	}
}

// start runs a long-lived container until the test ends.
func (p *localPod) start(t *testing.T, ctr corev1.Container) {
	t.Helper()
	logPath := filepath.Join(p.dir, ctr.Name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := p.command(context.Background(), t, ctr)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("container %s: %v", ctr.Name, err)
	}
	p.logs[ctr.Name] = logPath
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		defer logf.Close()
		// The kubelet's stop: the preStop hook, then SIGTERM, then the
		// grace period.
		if h := ctr.Lifecycle; h != nil && h.PreStop != nil && h.PreStop.Exec != nil {
			hook := ctr
			hook.Command, hook.Args = h.PreStop.Exec.Command, nil
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			out, err := p.command(ctx, t, hook).CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("container %s: preStop %v: %v\n%s", ctr.Name, h.PreStop.Exec.Command, err, out)
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Errorf("container %s did not stop within 60 s of SIGTERM\n%s", ctr.Name, readTail(logPath))
		}
	})
}

// command is ctr's process: its command (the image's binary: walferry,
// or PostgreSQL's from the server's bin directory) and arguments, its
// environment, paths rewritten to the volumes' directories, as the
// postgres OS user.
func (p *localPod) command(ctx context.Context, t *testing.T, ctr corev1.Container) *exec.Cmd {
	t.Helper()
	rw := p.rewriter(ctr)
	argv := append(append([]string(nil), ctr.Command...), ctr.Args...)
	for i := range argv {
		argv[i] = rw(argv[i])
	}
	if len(ctr.Command) == 0 {
		argv = append([]string{walferryBin}, argv...) // walferry's image: ENTRYPOINT walferry
	}
	switch argv[0] {
	case "postgres", "pg_ctl", "initdb", "psql":
		argv[0] = filepath.Join(testPGBin(t), argv[0])
	}
	env := []string{"PATH=" + testPGBin(t) + ":/usr/bin:/bin", "HOME=" + p.dir, "HOSTNAME=" + p.sts.Name + "-0"}
	for _, e := range ctr.Env {
		v := e.Value
		if e.ValueFrom != nil {
			switch {
			case e.ValueFrom.SecretKeyRef != nil:
				v = p.secrets[e.ValueFrom.SecretKeyRef.Key]
			case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
				v = p.sts.Name + "-0"
			case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
				v = "default"
			}
		}
		env = append(env, e.Name+"="+rw(v))
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env, cmd.Dir = env, p.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(p.uid), Gid: uint32(p.gid)}}
	return cmd
}

// rewriter maps ctr's mount paths to the volumes' directories and the
// instance's ports to free ones. A mount path is rewritten where a path
// starts (at the start, after a space, '=' or a quote) and ends (a '/', a
// space, a quote or the end), in one pass: "file:///tmp/repo" and the
// directories it writes in are left alone.
func (p *localPod) rewriter(ctr corev1.Container) func(string) string {
	mounts := append([]corev1.VolumeMount(nil), ctr.VolumeMounts...)
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].MountPath) > len(mounts[j].MountPath) })
	ports := strings.NewReplacer("port = 5432", fmt.Sprintf("port = %d", p.pgPort))
	return func(s string) string {
		if s == ":9898" {
			return p.sidecarAddr
		}
		const starts, ends = " \t\n='\"<>(,", " \t\n'\")"
		var b strings.Builder
		for i := 0; i < len(s); {
			if i == 0 || strings.IndexByte(starts, s[i-1]) >= 0 {
				matched := false
				for _, m := range mounts {
					j := i + len(m.MountPath)
					if strings.HasPrefix(s[i:], m.MountPath) && (j == len(s) || s[j] == '/' || strings.IndexByte(ends, s[j]) >= 0) {
						b.WriteString(p.volumes[m.Name])
						i, matched = j, true
						break
					}
				}
				if matched {
					continue
				}
			}
			b.WriteByte(s[i])
			i++
		}
		return ports.Replace(b.String())
	}
}

// fillVolume makes v's directory: a ConfigMap's files (paths and ports
// rewritten as the containers see them), a Secret's files, or empty.
func (p *localPod) fillVolume(t *testing.T, v corev1.Volume) {
	t.Helper()
	dir := p.volumes[v.Name]
	p.mkdir(t, dir, 0o700)
	switch {
	case v.ConfigMap != nil:
		rw := p.rewriter(p.mainContainer())
		for name, content := range p.configMaps[v.ConfigMap.Name] {
			p.writeFile(t, filepath.Join(dir, name), []byte(rw(content)), 0o600)
		}
	case v.Secret != nil:
		for key, src := range p.secretFiles[v.Name] {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			p.writeFile(t, filepath.Join(dir, key), b, 0o600)
		}
	}
}

// mainContainer is the postgres container (the ConfigMaps' paths are the
// server's).
func (p *localPod) mainContainer() corev1.Container {
	for _, c := range p.sts.Spec.Template.Spec.Containers {
		if c.Name == "postgres" {
			return c
		}
	}
	return p.sts.Spec.Template.Spec.Containers[0]
}

func (p *localPod) mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		t.Fatal(err)
	}
	for d := dir; d != path.Dir(p.dir) && strings.HasPrefix(d, p.dir); d = filepath.Dir(d) {
		if err := os.Chown(d, p.uid, p.gid); err != nil {
			t.Fatal(err)
		}
	}
}

func (p *localPod) writeFile(t *testing.T, name string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(name, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(name, p.uid, p.gid); err != nil {
		t.Fatal(err)
	}
}

// psql runs a query on the pod's server through its socket directory.
func (p *localPod) psql(t *testing.T, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	socket := p.rewriter(p.mainContainer())("/var/run/postgresql")
	cmd := exec.CommandContext(ctx, filepath.Join(testPGBin(t), "psql"), "-X", "-At", "-h", socket, "-p", strconv.Itoa(p.pgPort),
		"-U", "postgres", "-d", "postgres", "-c", sql)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(p.uid), Gid: uint32(p.gid)}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("psql on the pod: %v: %s", err, out)
		return ""
	}
	return strings.TrimSpace(string(out))
}

func testPGBin(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("WALFERRY_PGBIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// testCA signs the TLS certificates of a test's servers.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	caFile string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "walferry test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, caFile: caFile}
}

// issue writes a server certificate for ip (and localhost) and its key,
// owned by c's OS user (PostgreSQL refuses a key others can read).
func (ca *testCA) issue(t *testing.T, c *pgtest.Cluster, name string, ip net.IP) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{ip}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := c.MkdirOwned(t, "tls-"+name)
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	writeOwned(t, c, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeOwned(t, c, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return certFile, keyFile
}
