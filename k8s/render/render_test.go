package render

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/walferry/walferry/internal/pgconf"
	"github.com/walferry/walferry/internal/statusserver"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenCases are the renders kept under testdata/, one directory each:
// both sites at one and three instances.
var goldenCases = []struct {
	dir string
	o   Options
}{
	{"primary-1", Options{Site: SitePrimary, Name: "xkube", Repo: "s3://backups/xkube?region=eu-west-1", Image: "registry.example.com/walferry:v1"}},
	{"primary-3", Options{Site: SitePrimary, Name: "xkube", Instances: 3, Repo: "s3://backups/xkube?region=eu-west-1", Image: "registry.example.com/walferry:v1",
		WALReceive: true, ServiceMonitor: true, LoadBalancerSourceRanges: []string{"203.0.113.0/24"}}},
	{"standby-1", Options{Site: SiteStandby, Name: "xkube", Repo: "s3://backups/xkube?region=eu-west-1", Image: "registry.example.com/walferry:v1",
		SourceHost: "xkube.prod.example.com"}},
	{"standby-3", Options{Site: SiteStandby, Name: "xkube", Instances: 3, Repo: "s3://backups/xkube?region=eu-west-1", Image: "registry.example.com/walferry:v1",
		SourceHost: "xkube.prod.example.com", ServiceMonitor: true}},
}

// moreCases cover the other branches (repository kinds, identities, the
// CronJob, a standby fed by the repository alone); checked, not golden.
var moreCases = []Options{
	{Site: SitePrimary, Name: "db", Repo: "gs://bucket/db", BackupCronJob: true},
	{Site: SitePrimary, Name: "db", Repo: "gs://bucket/db", WorkloadIdentity: "walferry@proj.iam.gserviceaccount.com", BackupCronJob: true},
	{Site: SitePrimary, Name: "db", Repo: "s3://bucket/db", WorkloadIdentity: "arn:aws:iam::123456789012:role/walferry"},
	{Site: SiteStandby, Name: "db", Repo: "azure://container/db", WorkloadIdentity: "00000000-0000-0000-0000-000000000000", Instances: 2},
	{Site: SiteStandby, Name: "db", Repo: "azure://container/db", Instances: 2},
	{Site: SitePrimary, Name: "db", Repo: "file:///mnt/backups/db", BackupCronJob: true, Instances: 2},
	{Site: SiteStandby, Name: "db", Repo: "file:///mnt/backups/db"},
}

func allCases() []Options {
	var all []Options
	for _, c := range goldenCases {
		all = append(all, c.o)
	}
	return append(all, moreCases...)
}

func mustRender(t *testing.T, o Options) []File {
	t.Helper()
	files, err := Render(o)
	if err != nil {
		t.Fatalf("Render(%+v): %v", o, err)
	}
	return files
}

func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.dir, func(t *testing.T) {
			files := mustRender(t, c.o)
			dir := filepath.Join("testdata", c.dir)
			if *update {
				if err := os.RemoveAll(dir); err != nil {
					t.Fatal(err)
				}
				if err := Write(dir, files, false); err != nil {
					t.Fatal(err)
				}
			}
			want := map[string]bool{}
			for _, f := range files {
				want[f.Path] = true
				got, err := os.ReadFile(filepath.Join(dir, f.Path))
				if err != nil {
					t.Fatalf("%v (run go test ./k8s/render -update)", err)
				}
				if !bytes.Equal(got, f.Data) {
					t.Errorf("%s/%s differs from the render (go test ./k8s/render -update rewrites it; review the diff)", dir, f.Path)
				}
			}
			// No stale golden file.
			filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					rel, _ := filepath.Rel(dir, p)
					if !want[filepath.ToSlash(rel)] {
						t.Errorf("%s is not rendered any more (go test ./k8s/render -update)", p)
					}
				}
				return nil
			})
		})
	}
}

func TestDeterministic(t *testing.T) {
	for _, o := range allCases() {
		a, b := mustRender(t, o), mustRender(t, o)
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%+v: two renders differ", o)
		}
	}
}

// TestBaseSameForBothSites: the base of one Name and Repo is the same
// whichever site renders it, so both sites share one base directory.
func TestBaseSameForBothSites(t *testing.T) {
	base := func(o Options) map[string]string {
		m := map[string]string{}
		for _, f := range mustRender(t, o) {
			if strings.HasPrefix(f.Path, BaseDir+"/") {
				m[f.Path] = string(f.Data)
			}
		}
		return m
	}
	p := base(goldenCases[1].o)
	s := base(goldenCases[2].o)
	if fmt.Sprint(p) != fmt.Sprint(s) {
		t.Error("the primary and the standby site render different bases")
	}
	dir := t.TempDir()
	if err := Write(dir, mustRender(t, goldenCases[0].o), false); err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, mustRender(t, goldenCases[2].o), false); err != nil {
		t.Fatalf("the standby site beside the primary site: %v", err)
	}
	other := goldenCases[2].o
	other.Repo = "s3://elsewhere/xkube"
	err := Write(dir, mustRender(t, other), false)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("a base of another repository over the first: %v, want a refusal naming --force", err)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		o    Options
		want string
	}{
		{Options{Site: "dr", Name: "x", Repo: "s3://b/p"}, "--site"},
		{Options{Site: SitePrimary, Name: "X_1", Repo: "s3://b/p"}, "--name"},
		{Options{Site: SitePrimary, Name: "x", Repo: "s3:/b"}, "--repo"},
		{Options{Site: SitePrimary, Name: "x", Repo: "s3://b/p", SourceHost: "h"}, "--source-host"},
		{Options{Site: SiteStandby, Name: "x", Repo: "s3://b/p", SourceHost: "h:5432"}, "--source-host"},
		{Options{Site: SiteStandby, Name: "x", Repo: "s3://b/p", BackupCronJob: true}, "--backup-cronjob"},
		{Options{Site: SitePrimary, Name: "x", Repo: "file:///b", WorkloadIdentity: "r"}, "--workload-identity"},
		{Options{Site: SitePrimary, Name: "x", Repo: "s3://b/p", Instances: 10}, "--instances"},
		{Options{Site: SitePrimary, Name: "x", Repo: "s3://b/p", ReplicationUser: "Repl"}, "--replication-user"},
		{Options{Site: SitePrimary, Name: "x", Repo: "s3://b/p", LoadBalancerSourceRanges: []string{"10.0.0.1"}}, "--load-balancer-source-range"},
	} {
		_, err := Render(tt.o)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Render(%+v) = %v, want an invalid request naming %s", tt.o, err, tt.want)
		}
	}
}

// doc is one decoded document.
type doc struct {
	file string
	obj  any
}

// decodeStrict decodes every document of files into its API type by
// apiVersion and kind; a field the type does not have is an error.
func decodeStrict(t *testing.T, files []File) []doc {
	t.Helper()
	var docs []doc
	for _, f := range files {
		for i, part := range strings.Split(string(f.Data), "\n---\n") {
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(part), &tm); err != nil {
				t.Fatalf("%s #%d: %v", f.Path, i, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "batch/v1 CronJob":
				obj = &batchv1.CronJob{}
			case "rbac.authorization.k8s.io/v1 Role":
				obj = &rbacv1.Role{}
			case "rbac.authorization.k8s.io/v1 RoleBinding":
				obj = &rbacv1.RoleBinding{}
			case "monitoring.coreos.com/v1 ServiceMonitor":
				obj = &ServiceMonitor{}
			case "kustomize.config.k8s.io/v1beta1 Kustomization":
				obj = &Kustomization{}
			default:
				t.Fatalf("%s #%d: unexpected %s %s", f.Path, i, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict([]byte(part), obj); err != nil {
				t.Fatalf("%s #%d (%s): %v", f.Path, i, tm.Kind, err)
			}
			docs = append(docs, doc{file: f.Path, obj: obj})
		}
	}
	return docs
}

func TestStrictDecoding(t *testing.T) {
	for _, o := range allCases() {
		decodeStrict(t, mustRender(t, o))
	}
}

// rendered is one site's decoded objects, by kind.
type rendered struct {
	files     map[string]bool
	sts       *appsv1.StatefulSet
	cron      *batchv1.CronJob
	services  []*corev1.Service
	secrets   map[string]*corev1.Secret
	configs   map[string]*corev1.ConfigMap
	accounts  map[string]bool
	roles     []*rbacv1.Role
	bindings  []*rbacv1.RoleBinding
	monitors  []*ServiceMonitor
	kustomize map[string]*Kustomization
}

func load(t *testing.T, o Options) rendered {
	files := mustRender(t, o)
	r := rendered{files: map[string]bool{}, secrets: map[string]*corev1.Secret{}, configs: map[string]*corev1.ConfigMap{},
		accounts: map[string]bool{}, kustomize: map[string]*Kustomization{}}
	for _, f := range files {
		r.files[f.Path] = true
	}
	for _, d := range decodeStrict(t, files) {
		switch obj := d.obj.(type) {
		case *appsv1.StatefulSet:
			r.sts = obj
		case *batchv1.CronJob:
			r.cron = obj
		case *corev1.Service:
			r.services = append(r.services, obj)
		case *corev1.Secret:
			r.secrets[obj.Name] = obj
		case *corev1.ConfigMap:
			r.configs[obj.Name] = obj
		case *corev1.ServiceAccount:
			r.accounts[obj.Name] = true
		case *rbacv1.Role:
			r.roles = append(r.roles, obj)
		case *rbacv1.RoleBinding:
			r.bindings = append(r.bindings, obj)
		case *ServiceMonitor:
			r.monitors = append(r.monitors, obj)
		case *Kustomization:
			r.kustomize[d.file] = obj
		}
	}
	if r.sts == nil {
		t.Fatal("no StatefulSet rendered")
	}
	return r
}

// podSpecs are the pod templates: the StatefulSet's and the CronJob's.
func (r rendered) podSpecs() map[string]*corev1.PodSpec {
	m := map[string]*corev1.PodSpec{"StatefulSet " + r.sts.Name: &r.sts.Spec.Template.Spec}
	if r.cron != nil {
		m["CronJob "+r.cron.Name] = &r.cron.Spec.JobTemplate.Spec.Template.Spec
	}
	return m
}

func containers(spec *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
}

func TestCrossReferences(t *testing.T) {
	for _, o := range allCases() {
		t.Run(o.Site+"/"+o.Repo, func(t *testing.T) {
			r := load(t, o)
			claims := map[string]bool{}
			for _, c := range r.sts.Spec.VolumeClaimTemplates {
				claims[c.Name] = true
			}
			for where, spec := range r.podSpecs() {
				vols := map[string]corev1.Volume{}
				for _, v := range spec.Volumes {
					vols[v.Name] = v
				}
				for _, c := range containers(spec) {
					for _, m := range c.VolumeMounts {
						if _, ok := vols[m.Name]; !ok && !(claims[m.Name] && strings.HasPrefix(where, "StatefulSet")) {
							t.Errorf("%s: container %s mounts %s, which is no volume", where, c.Name, m.Name)
						}
					}
					for _, e := range c.Env {
						if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
							r.checkSecretKey(t, where+" "+c.Name+" env "+e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
						}
					}
				}
				for _, v := range vols {
					switch {
					case v.Secret != nil:
						if r.secrets[v.Secret.SecretName] == nil {
							t.Errorf("%s: volume %s names Secret %s, which is not rendered", where, v.Name, v.Secret.SecretName)
						}
						for _, it := range v.Secret.Items {
							r.checkSecretKey(t, where+" volume "+v.Name, v.Secret.SecretName, it.Key)
						}
					case v.ConfigMap != nil:
						if r.configs[v.ConfigMap.Name] == nil {
							t.Errorf("%s: volume %s names ConfigMap %s, which is not rendered", where, v.Name, v.ConfigMap.Name)
						}
					}
				}
				if !r.accounts[spec.ServiceAccountName] {
					t.Errorf("%s: ServiceAccount %s is not rendered", where, spec.ServiceAccountName)
				}
			}
			r.checkConfigPaths(t)
			r.checkSelectors(t)
			r.checkRBAC(t)
			r.checkKustomize(t)
		})
	}
}

func (r rendered) checkSecretKey(t *testing.T, where, secret, key string) {
	t.Helper()
	s := r.secrets[secret]
	if s == nil {
		t.Errorf("%s: Secret %s is not rendered", where, secret)
		return
	}
	if _, ok := s.StringData[key]; !ok {
		t.Errorf("%s: Secret %s has no key %s", where, secret, key)
	}
}

// checkConfigPaths: the files postgresql.conf names are where the pod
// mounts them, and bootstrap accepts its include line.
func (r rendered) checkConfigPaths(t *testing.T) {
	var cm *corev1.ConfigMap
	for _, c := range r.configs {
		if _, ok := c.Data["postgresql.conf"]; ok {
			cm = c
		}
	}
	if cm == nil {
		t.Fatal("no ConfigMap holds postgresql.conf")
	}
	conf := cm.Data["postgresql.conf"]
	for _, want := range []string{"wal_level = replica", "archive_mode = on", "max_wal_senders", "wal_keep_size", "hot_standby = on",
		"wal_log_hints = on", "hba_file = '" + HBAFile + "'",
		"archive_command = '" + BinDir + "/walferry-hook archive-push %p'",
		"restore_command = '" + BinDir + "/walferry-hook archive-get %f %p'"} {
		if !strings.Contains(conf, want) {
			t.Errorf("postgresql.conf lacks %q", want)
		}
	}
	// bootstrap --config-file refuses a postgresql.conf without the
	// include line of walferry.conf: ask its own check.
	tmp := filepath.Join(t.TempDir(), "postgresql.conf")
	if err := os.WriteFile(tmp, []byte(conf), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := (pgconf.Files{DataDir: PGData, ConfigFile: tmp}).CheckInclude(); err != nil {
		t.Errorf("postgresql.conf: %v", err)
	}
	hba := cm.Data["pg_hba.conf"]
	for _, line := range strings.Split(hba, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		method := f[len(f)-1]
		switch {
		case f[0] == "local" && method == "peer":
		case f[0] == "hostssl" && method == "scram-sha-256" && f[3] != "samenet":
		default:
			t.Errorf("pg_hba.conf: %q: only local peer and hostssl scram-sha-256 (no trust, md5, samenet, plain host)", line)
		}
	}
	spec := r.sts.Spec.Template.Spec
	pg := spec.Containers[0]
	mounted := func(c corev1.Container, file string) bool {
		for _, m := range c.VolumeMounts {
			if strings.HasPrefix(file, m.MountPath+"/") {
				return true
			}
		}
		return false
	}
	for _, file := range []string{HBAFile, ConfigFile, BinDir + "/walferry-hook", Socket, PassFile, TLSDir + "/tls.key", PGData + "/walferry.conf"} {
		if !mounted(pg, file) {
			t.Errorf("the postgres container does not mount %s", file)
		}
	}
	for _, c := range spec.InitContainers {
		for i, a := range c.Args {
			if a == "--install-bin" && c.Args[i+1] != BinDir {
				t.Errorf("%s installs into %s, postgresql.conf runs the hook from %s", c.Name, c.Args[i+1], BinDir)
			}
		}
	}
}

// checkSelectors: every Service selects pods of this cluster (the role
// label aside, which the sidecar sets to primary or replica), and its
// target ports are the pods' named ports.
func (r rendered) checkSelectors(t *testing.T) {
	pod := r.sts.Spec.Template
	ports := map[string]bool{}
	for _, c := range containers(&pod.Spec) {
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
	}
	for _, svc := range r.services {
		if len(svc.Spec.Selector) == 0 {
			t.Errorf("Service %s selects nothing", svc.Name)
		}
		for k, v := range svc.Spec.Selector {
			if k == RoleLabel {
				if v != RolePrimary && v != RoleReplica {
					t.Errorf("Service %s selects %s=%s: the sidecar sets %s or %s", svc.Name, k, v, RolePrimary, RoleReplica)
				}
				continue
			}
			if pod.Labels[k] != v && !(k == SiteLabel && svc.Labels[SiteLabel] == "") {
				t.Errorf("Service %s selects %s=%s, the pods have %q", svc.Name, k, v, pod.Labels[k])
			}
		}
		for _, p := range svc.Spec.Ports {
			if !ports[p.TargetPort.StrVal] {
				t.Errorf("Service %s targets port %q, which no container names", svc.Name, p.TargetPort.StrVal)
			}
		}
	}
	for k, v := range r.sts.Spec.Selector.MatchLabels {
		if pod.Labels[k] != v {
			t.Errorf("the StatefulSet selects %s=%s, its pods have %q", k, v, pod.Labels[k])
		}
	}
	for _, m := range r.monitors {
		found := false
		for _, svc := range r.services {
			match := true
			for k, v := range m.Spec.Selector.MatchLabels {
				match = match && svc.Labels[k] == v
			}
			for _, p := range svc.Spec.Ports {
				if match && p.Name == m.Spec.Endpoints[0].Port {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("ServiceMonitor %s selects no Service with port %s", m.Name, m.Spec.Endpoints[0].Port)
		}
	}
}

// checkRBAC: the sidecar may get and patch its site's pods by name and
// nothing else.
func (r rendered) checkRBAC(t *testing.T) {
	if len(r.roles) != 1 || len(r.bindings) != 1 {
		t.Fatalf("%d Roles and %d RoleBindings, want one each", len(r.roles), len(r.bindings))
	}
	rules := r.roles[0].Rules
	if len(rules) != 1 || fmt.Sprint(rules[0].Resources) != "[pods]" || fmt.Sprint(rules[0].Verbs) != "[get patch]" ||
		len(rules[0].ResourceNames) != int(*r.sts.Spec.Replicas) {
		t.Errorf("Role rules %+v: want get and patch on the site's %d pods only", rules, *r.sts.Spec.Replicas)
	}
	for i, n := range rules[0].ResourceNames {
		if want := fmt.Sprintf("%s-%d", r.sts.Name, i); n != want {
			t.Errorf("Role names pod %s, the StatefulSet's pod %d is %s", n, i, want)
		}
	}
	b := r.bindings[0]
	if b.RoleRef.Name != r.roles[0].Name || b.Subjects[0].Name != r.sts.Spec.Template.Spec.ServiceAccountName {
		t.Errorf("RoleBinding %+v does not bind the Role to the pods' ServiceAccount", b)
	}
	// Only the sidecar holds the token.
	for _, c := range containers(&r.sts.Spec.Template.Spec) {
		for _, m := range c.VolumeMounts {
			if m.Name == volToken && c.Name != "sidecar" {
				t.Errorf("container %s mounts the API token", c.Name)
			}
		}
	}
}

// checkKustomize: every resource a kustomization lists is rendered.
func (r rendered) checkKustomize(t *testing.T) {
	if len(r.kustomize) != 2 {
		t.Fatalf("%d kustomizations, want the base's and the overlay's", len(r.kustomize))
	}
	listed := map[string]bool{}
	for file, k := range r.kustomize {
		dir := filepath.Dir(file)
		for _, res := range k.Resources {
			p := filepath.ToSlash(filepath.Clean(filepath.Join(dir, res)))
			listed[p] = true
			if !r.files[p] && !r.files[p+"/kustomization.yaml"] {
				t.Errorf("%s lists %s, which is not rendered", file, res)
			}
		}
	}
	for f := range r.files {
		if !strings.HasSuffix(f, "/kustomization.yaml") && !listed[f] {
			t.Errorf("%s is rendered but in no kustomization", f)
		}
	}
}

// TestProbesAreServed: the sidecar's probes use its port (the default of
// walferry status's sidecar address) and paths the sidecar's HTTP server
// serves: a live internal/statusserver answers them (with 503 while not
// healthy, never 404).
func TestProbesAreServed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := statusserver.NewRegistry()
	if err != nil {
		t.Fatal(err)
	}
	notYet := checkFunc(func() error { return errors.New("not yet") })
	stop := statusserver.Serve(ln, reg, notYet, notYet, slog.New(slog.DiscardHandler))
	defer stop()
	served := func(path string) bool {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode != http.StatusNotFound
	}
	port, err := SidecarPort()
	if err != nil || port != 9898 {
		t.Fatalf("SidecarPort() = %d, %v; docs/metrics.md and the sidecar's --listen default say 9898", port, err)
	}
	for _, o := range allCases() {
		r := load(t, o)
		var sidecar *corev1.Container
		for i, c := range r.sts.Spec.Template.Spec.InitContainers {
			if c.Name == "sidecar" {
				sidecar = &r.sts.Spec.Template.Spec.InitContainers[i]
			}
		}
		if sidecar == nil || sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			t.Fatal("no native sidecar (an init container with restartPolicy Always)")
		}
		ports := map[string]int32{}
		for _, p := range sidecar.Ports {
			ports[p.Name] = p.ContainerPort
		}
		probes := map[string]*corev1.Probe{"startup": sidecar.StartupProbe, "readiness": sidecar.ReadinessProbe, "liveness": sidecar.LivenessProbe}
		for kind, p := range probes {
			if p == nil {
				t.Errorf("the sidecar has no %s probe", kind)
				continue
			}
			var name string
			switch {
			case p.HTTPGet != nil:
				name = p.HTTPGet.Port.StrVal
				if !served(p.HTTPGet.Path) {
					t.Errorf("%s probe: the sidecar does not serve %s", kind, p.HTTPGet.Path)
				}
			case p.TCPSocket != nil:
				name = p.TCPSocket.Port.StrVal
			default:
				t.Errorf("%s probe is neither HTTP nor TCP", kind)
			}
			if ports[name] != int32(port) {
				t.Errorf("%s probe: port %q is %d, the sidecar listens on %d", kind, name, ports[name], port)
			}
		}
		if sidecar.ReadinessProbe.HTTPGet.Path != ReadyPath || sidecar.LivenessProbe.HTTPGet.Path != HealthPath {
			t.Errorf("readiness on %s and liveness on %s, want %s and %s", sidecar.ReadinessProbe.HTTPGet.Path, sidecar.LivenessProbe.HTTPGet.Path, ReadyPath, HealthPath)
		}
		if listen := argValue(sidecar.Args, "--listen"); listen != fmt.Sprintf(":%d", port) {
			t.Errorf("sidecar --listen %q, probes on %d", listen, port)
		}
	}
	if !served(MetricsPath) {
		t.Errorf("the sidecar does not serve %s", MetricsPath)
	}
}

type checkFunc func() error

func (c checkFunc) Check() error { return c() }

func argValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// TestSites: what differs between the sites.
func TestSites(t *testing.T) {
	p := load(t, goldenCases[1].o)
	s := load(t, goldenCases[3].o)
	lb := 0
	for _, svc := range p.services {
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			lb++
			if svc.Spec.Selector[RoleLabel] != RolePrimary {
				t.Errorf("the LoadBalancer selects %v, want the primary", svc.Spec.Selector)
			}
		}
	}
	if lb != 1 {
		t.Errorf("the primary site has %d LoadBalancers, want 1", lb)
	}
	for _, svc := range s.services {
		if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			t.Error("the standby site has a LoadBalancer")
		}
	}
	sidecar := func(r rendered) []string {
		for _, c := range r.sts.Spec.Template.Spec.InitContainers {
			if c.Name == "sidecar" {
				return c.Args
			}
		}
		return nil
	}
	if v := argValue(sidecar(p), "--backup-schedule"); v != DefaultBackupSchedule {
		t.Errorf("primary sidecar --backup-schedule %q", v)
	}
	if argValue(sidecar(s), "--backup-schedule") != "" {
		t.Error("the standby site's sidecar schedules backups")
	}
	if !regexp.MustCompile(`host=xkube\.prod\.example\.com .*sslmode=verify-full`).MatchString(argValue(sidecar(s), "--source-conn")) {
		t.Errorf("standby sidecar --source-conn %q", argValue(sidecar(s), "--source-conn"))
	}
	// The primary keeps a slot for each standby instance, named as the
	// standby pods' bootstrap and sidecar name theirs.
	var slots []string
	for i, a := range sidecar(p) {
		if a == "--standby-slot" {
			slots = append(slots, sidecar(p)[i+1])
		}
	}
	if fmt.Sprint(slots) != "[walferry_xkube_standby_0 walferry_xkube_standby_1 walferry_xkube_standby_2]" {
		t.Errorf("primary --standby-slot %v", slots)
	}
	cron := load(t, moreCases[0])
	if cron.cron == nil || argValue(sidecar(cron), "--backup-schedule") != "" {
		t.Error("--backup-cronjob: want a CronJob and no schedule in the sidecar")
	}
	// The credentials are the same Secret on both sites (seed 002).
	if fmt.Sprint(p.secrets["xkube-credentials"]) != fmt.Sprint(s.secrets["xkube-credentials"]) {
		t.Error("the sites' credentials templates differ")
	}
}
