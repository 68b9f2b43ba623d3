package testenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeEnv is a real Kubernetes API server (kube-apiserver over etcd, no
// kubelet, no controllers) that Kube started for one test.
type KubeEnv struct {
	// Config authenticates as an administrator (group system:masters, which
	// RBAC lets do anything). rest.AnonymousClientConfig(Config) keeps the
	// server and its CA without the credentials, for a client that brings
	// its own (a service account's token).
	Config *rest.Config
	// Kubeconfig is a kubeconfig file with the same credentials, for kubectl
	// and for code that takes --kubeconfig.
	Kubeconfig string
	// Version is the server's version (/version's gitVersion), v1.37.2.
	Version string
	// CAFile is the PEM certificate that signed the server's certificate:
	// the ca.crt of a service account's mounted token directory.
	CAFile string
	// Host and Port are where the secure port listens (127.0.0.1).
	Host, Port string
}

// The service-account issuer the server signs tokens for; its own audience.
const kubeIssuer = "https://kubernetes.default.svc.cluster.local"

// Kube starts etcd and kube-apiserver on 127.0.0.1 with random ports and
// state in the test's temporary directory, waits until /readyz answers,
// logs the server's version and stops both when the test ends. The server
// authorizes with RBAC, so Roles and RoleBindings mean what they say.
//
// The binaries are built by `make deps` (scripts/install-test-deps.sh, from
// tools/kube) into ${WALFERRY_CACHE:-$HOME/.cache/walferry}/bin;
// WALFERRY_TEST_KUBE_APISERVER and WALFERRY_TEST_ETCD name others. When
// they are missing the test is skipped, and fails under
// WALFERRY_TEST_REQUIRE_SERVICES=1. Each call starts its own server (a few
// seconds): tests cannot see each other's objects.
func Kube(t testing.TB) KubeEnv {
	t.Helper()
	apiserverBin := kubeBinary(t, "kube-apiserver", "WALFERRY_TEST_KUBE_APISERVER")
	etcdBin := kubeBinary(t, "etcd", "WALFERRY_TEST_ETCD")

	dir := t.TempDir()
	pki, err := newKubePKI(dir)
	if err != nil {
		t.Fatalf("testenv: kube: certificates: %v", err)
	}
	ports, err := FreePorts(3)
	if err != nil {
		t.Fatalf("testenv: kube: %v", err)
	}
	etcdClient := net.JoinHostPort("127.0.0.1", ports[0])
	etcdPeer := net.JoinHostPort("127.0.0.1", ports[1])

	etcd := startKubeProcess(t, "etcd", filepath.Join(dir, "etcd.log"), etcdBin,
		"-data-dir", filepath.Join(dir, "etcd"),
		"-listen-client", etcdClient,
		"-listen-peer", etcdPeer,
		// Test data only: fsync would make every write of the apiserver
		// wait for the disk.
		"-unsafe-no-fsync",
	)
	if err := waitTCP(etcd, etcdClient, time.Minute); err != nil {
		t.Fatalf("testenv: kube: etcd: %v\n%s", err, etcd.logTail())
	}

	apiserver := startKubeProcess(t, "kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), apiserverBin,
		"--etcd-servers=http://"+etcdClient,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The reconciler of the "kubernetes" Service's endpoints refuses a
		// loopback address; no test needs that Service.
		"--endpoint-reconciler-type=none",
		"--secure-port="+ports[2],
		"--cert-dir="+filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file="+pki.servingCert,
		"--tls-private-key-file="+pki.servingKey,
		"--client-ca-file="+pki.caCert,
		"--authorization-mode=RBAC",
		// The apiserver refuses to start without a service-account issuer
		// and keys; the TokenRequest API signs with them.
		"--service-account-issuer="+kubeIssuer,
		"--service-account-key-file="+pki.saPublic,
		"--service-account-signing-key-file="+pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/24",
		"--profiling=false",
		"--v=1",
	)

	cfg := &rest.Config{
		Host: "https://" + net.JoinHostPort("127.0.0.1", ports[2]),
		TLSClientConfig: rest.TLSClientConfig{
			CAFile:   pki.caCert,
			CertFile: pki.adminCert,
			KeyFile:  pki.adminKey,
		},
		// Tests create objects in bursts; client-go's default of 5 requests
		// a second would make them wait.
		QPS:   100,
		Burst: 200,
	}
	if err := waitReady(apiserver, cfg, 2*time.Minute); err != nil {
		t.Fatalf("testenv: kube: kube-apiserver: %v\n%s", err, apiserver.logTail())
	}
	version, err := serverVersion(cfg)
	if err != nil {
		t.Fatalf("testenv: kube: kube-apiserver /version: %v", err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, cfg); err != nil {
		t.Fatalf("testenv: kube: %v", err)
	}
	t.Logf("testenv: kube-apiserver %s at %s (kubeconfig %s)", version, cfg.Host, kubeconfig)
	return KubeEnv{
		Config:     cfg,
		Kubeconfig: kubeconfig,
		Version:    version,
		CAFile:     pki.caCert,
		Host:       "127.0.0.1",
		Port:       ports[2],
	}
}

// kubeBinary finds one of the binaries tools/kube builds, or skips/fails.
func kubeBinary(t testing.TB, name, envVar string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("testenv: %s=%s: %v (unset it to use the one make deps builds)", envVar, p, err)
		}
		return p
	}
	cache := os.Getenv("WALFERRY_CACHE")
	if cache == "" {
		if home, err := os.UserHomeDir(); err == nil {
			cache = filepath.Join(home, ".cache", "walferry")
		}
	}
	if cache != "" {
		p := filepath.Join(cache, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := name + " not found in " + filepath.Join(cache, "bin") + " nor on PATH: run `make deps` " +
		"(scripts/install-test-deps.sh builds it from tools/kube; kube-apiserver takes about 10 minutes once) " +
		"or set " + envVar
	if RequireServices() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// FreePorts returns n distinct ports the kernel had free on 127.0.0.1. They
// are released before the servers bind them, which another process could
// race for; on this loopback-only test machine that has not been seen.
func FreePorts(n int) ([]string, error) {
	var ports []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
	}
	return ports, nil
}

// kubeProcess is a server child of the test, its output in a log file.
type kubeProcess struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// startKubeProcess starts bin and registers its stop (SIGTERM, then SIGKILL
// after 15 s) with t.Cleanup. Cleanups run last-registered first, so the
// apiserver stops before its etcd.
func startKubeProcess(t testing.TB, name, logPath, bin string, args ...string) *kubeProcess {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("testenv: kube: %s log: %v", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("testenv: kube: start %s: %v", bin, err)
	}
	p := &kubeProcess{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			if !t.Failed() {
				t.Errorf("testenv: kube: %s exited before the test ended: %v\n%s", name, p.err, p.logTail())
			}
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("testenv: kube: %s log (%s):\n%s", name, logPath, p.logTail())
		}
	})
	return p
}

// exited returns the process's exit error once it has exited.
func (p *kubeProcess) exited() (bool, error) {
	select {
	case <-p.done:
		return true, fmt.Errorf("%s exited: %v", p.name, p.err)
	default:
		return false, nil
	}
}

// logTail returns the end of the process's log, for a failure message.
func (p *kubeProcess) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Sprintf("--- %s (end of %s) ---\n%s", p.name, p.log, b)
}

// waitTCP waits until addr accepts connections or p exits.
func waitTCP(p *kubeProcess, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if gone, err := p.exited(); gone {
			return err
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %s: %w", addr, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitReady waits until the apiserver's /readyz answers 200 (its storage,
// RBAC bootstrap roles and default namespaces are in place) or p exits.
func waitReady(p *kubeProcess, cfg *rest.Config, timeout time.Duration) error {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if gone, err := p.exited(); gone {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		status, body, err := get(ctx, hc, cfg.Host+"/readyz")
		cancel()
		if err == nil && status == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("HTTP %d: %s", status, body)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("/readyz not ready after %s; last answer: %s", timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func get(ctx context.Context, hc *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(http.MaxBytesReader(nil, resp.Body, 64<<10))
	return resp.StatusCode, buf.Bytes(), err
}

// serverVersion returns /version's gitVersion.
func serverVersion(cfg *rest.Config) (string, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	status, body, err := get(ctx, hc, cfg.Host+"/version")
	if err != nil {
		return "", err
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", status, body)
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return "", fmt.Errorf("decode %q: %w", body, err)
	}
	return v.GitVersion, nil
}

// writeKubeconfig writes a kubeconfig for cfg's server and credentials.
func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["walferry-test"] = &clientcmdapi.Cluster{
		Server:               cfg.Host,
		CertificateAuthority: cfg.CAFile,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificate: cfg.CertFile,
		ClientKey:         cfg.KeyFile,
	}
	kc.Contexts["walferry-test"] = &clientcmdapi.Context{
		Cluster:   "walferry-test",
		AuthInfo:  "admin",
		Namespace: "default",
	}
	kc.CurrentContext = "walferry-test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// kubePKI names the PEM files of one test server.
type kubePKI struct {
	caCert                  string // signs the serving and the admin certificates
	servingCert, servingKey string // for 127.0.0.1 and localhost
	adminCert, adminKey     string // CN=walferry-test-admin, O=system:masters
	saKey, saPublic         string // the service-account token signing key pair
}

// newKubePKI generates a CA, the server's and the admin's certificates and
// the service-account key in dir. The keys are ECDSA P-256: quick to make
// and accepted everywhere (ES256 for the tokens).
func newKubePKI(dir string) (*kubePKI, error) {
	dir = filepath.Join(dir, "pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &kubePKI{
		caCert:      filepath.Join(dir, "ca.crt"),
		servingCert: filepath.Join(dir, "apiserver.crt"),
		servingKey:  filepath.Join(dir, "apiserver.key"),
		adminCert:   filepath.Join(dir, "admin.crt"),
		adminKey:    filepath.Join(dir, "admin.key"),
		saKey:       filepath.Join(dir, "sa.key"),
		saPublic:    filepath.Join(dir, "sa.pub"),
	}
	// Valid from a minute ago for a day: a test never outlives it, and a
	// clock a little behind does not reject a fresh certificate.
	notBefore := time.Now().Add(-time.Minute)
	notAfter := notBefore.Add(24 * time.Hour)

	caKey, err := writeKey(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "walferry-test-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	if err := writePEM(p.caCert, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}

	leaves := []struct {
		cert, key string
		tmpl      x509.Certificate
	}{
		{p.servingCert, p.servingKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{p.adminCert, p.adminKey, x509.Certificate{
			// The apiserver takes the organization as the group; RBAC's
			// bootstrap binds system:masters to cluster-admin.
			Subject:     pkix.Name{CommonName: "walferry-test-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	for i, l := range leaves {
		key, err := writeKey(l.key)
		if err != nil {
			return nil, err
		}
		tmpl := l.tmpl
		tmpl.SerialNumber = big.NewInt(int64(i + 2))
		tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("create certificate %s: %w", l.cert, err)
		}
		if err := writePEM(l.cert, "CERTIFICATE", der); err != nil {
			return nil, err
		}
	}

	saKey, err := writeKey(p.saKey)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.saPublic, "PUBLIC KEY", pub); err != nil {
		return nil, err
	}
	return p, nil
}

// writeKey generates an ECDSA P-256 key and writes it to path (PKCS #8).
func writeKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return key, writePEM(path, "PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
