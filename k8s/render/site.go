package render

import (
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/walferry/walferry/k8s/podlabel"
	"github.com/walferry/walferry/storage"
)

// Labels. The sidecar keeps RoleLabel on its own Pod (RolePrimary or
// RoleReplica); the read-write and read-only Services select on it, as
// Kubegres' Services follow its role label (seed 004).
const (
	RoleLabel   = podlabel.Key
	RolePrimary = string(podlabel.Primary)
	RoleReplica = string(podlabel.Replica)
	// SiteLabel tells the two sites' pods apart (NAME-SITE).
	SiteLabel     = "walferry.io/site"
	nameLabel     = "app.kubernetes.io/name"
	instanceLabel = "app.kubernetes.io/instance"
	managedLabel  = "app.kubernetes.io/managed-by"
)

// Paths inside the pod. PGData is a subdirectory of the volume: a fresh
// volume's root holds lost+found, and initdb wants a directory of its own.
const (
	DataMount   = "/var/lib/postgresql/data"
	PGData      = DataMount + "/pgdata"
	ConfigDir   = "/etc/postgresql"
	ConfigFile  = ConfigDir + "/postgresql.conf"
	HBAFile     = ConfigDir + "/pg_hba.conf"
	ScriptsDir  = "/etc/walferry/scripts"
	TLSDir      = "/etc/walferry/tls"
	BinDir      = "/walferry/bin"
	RunDir      = "/run/walferry"
	Socket      = RunDir + "/walferry.sock"
	PassFile    = RunDir + "/pgpass"
	PGSocketDir = "/var/run/postgresql"
	TmpDir      = "/tmp"
	GCSKeyDir   = "/etc/walferry/gcs"
	tokenDir    = "/var/run/secrets/kubernetes.io/serviceaccount"
)

// The sidecar's HTTP paths its probes use (internal/statusserver serves
// them; the tests ask a live one).
const (
	HealthPath  = "/healthz"
	ReadyPath   = "/readyz"
	MetricsPath = "/metrics"
)

const (
	postgresPort = 5432
	// postgresUID is the postgres user of the Debian postgres image;
	// every container runs as it, so the sidecar may signal the
	// postmaster (fencing), reach its socket as a peer and own the
	// files bootstrap writes.
	postgresUID = 999
	// gracePeriod covers a fast shutdown's checkpoint (the preStop hook
	// waits up to shutdownWait) and then the sidecar's own
	// --shutdown-timeout (25 s): native sidecars stop after the server.
	gracePeriod  = 150
	shutdownWait = 110
)

// Secret keys.
const (
	keySuperuserPassword   = "superuser-password"
	keyReplicationPassword = "replication-password"
	keyTLSCert             = "tls.crt"
	keyTLSKey              = "tls.key"
	keyCA                  = "ca.crt"
	keyGCSServiceAccount   = "service-account.json"
)

// site renders one site.
type site struct {
	o           Options
	repo        storage.Location
	sidecarPort int32
}

func (s *site) sts() string               { return s.o.Name + "-" + s.o.Site }
func (s *site) pod(i int) string          { return fmt.Sprintf("%s-%d", s.sts(), i) }
func (s *site) configMap() string         { return s.o.Name + "-config" }
func (s *site) scriptsMap() string        { return s.o.Name + "-scripts" }
func (s *site) credentialsSecret() string { return s.o.Name + "-credentials" }
func (s *site) repoSecret() string        { return s.o.Name + "-repository" }
func (s *site) tlsSecret() string         { return s.sts() + "-tls" }
func (s *site) rwService() string         { return s.o.Name }
func (s *site) roService() string         { return s.o.Name + "-replica" }
func (s *site) lbService() string         { return s.o.Name + "-external" }

// clusterLabels are on every object of the cluster, both sites.
func (s *site) clusterLabels() map[string]string {
	return map[string]string{nameLabel: "walferry", instanceLabel: s.o.Name, managedLabel: "walferry-k8s-render"}
}

// selector picks the cluster's pods on both sites.
func (s *site) selector() map[string]string {
	return map[string]string{nameLabel: "walferry", instanceLabel: s.o.Name}
}

// siteLabels are the site's objects' and pods' labels.
func (s *site) siteLabels() map[string]string {
	l := s.clusterLabels()
	l[SiteLabel] = s.sts()
	return l
}

func (s *site) siteSelector() map[string]string {
	l := s.selector()
	l[SiteLabel] = s.sts()
	return l
}

// workloadIdentity says the repository is reached with the pod's cloud
// identity rather than keys from a Secret.
func (s *site) workloadIdentity() bool { return s.o.WorkloadIdentity != "" }

// conn is a libpq connection string to host as the replication user:
// the password from the passfile the prepare container writes, the
// server's certificate checked against the cluster's CA and host name.
func (s *site) conn(host string) string {
	return fmt.Sprintf("host=%s port=%d user=%s passfile=%s sslmode=verify-full sslrootcert=%s/%s",
		host, postgresPort, s.o.ReplicationUser, PassFile, TLSDir, keyCA)
}

// inSiteSource is the first instance of a primary site, whom its other
// instances copy and stream from (the headless Service's DNS name).
func (s *site) inSiteSource() string { return s.pod(0) + "." + s.sts() }

// files renders every file of the base and of the site's overlay.
func (s *site) files() ([]File, error) {
	var files []File
	add := func(dir, name string, objs ...any) error {
		var b strings.Builder
		b.WriteString(header)
		for i, obj := range objs {
			if i > 0 {
				b.WriteString("---\n")
			}
			y, err := toYAML(obj)
			if err != nil {
				return fmt.Errorf("k8s render: %s/%s: %w", dir, name, err)
			}
			b.Write(y)
		}
		files = append(files, File{Path: dir + "/" + name, Data: []byte(b.String())})
		return nil
	}
	var errs []error
	try := func(err error) { errs = append(errs, err) }

	// The base: what both sites share.
	base := []string{"configmap.yaml", "secret-credentials.yaml", "service-read-write.yaml", "service-read-only.yaml"}
	try(add(BaseDir, "configmap.yaml", s.configConfigMap(), s.scriptsConfigMap()))
	try(add(BaseDir, "secret-credentials.yaml", s.credentials()))
	if sec := s.repositorySecret(); sec != nil {
		try(add(BaseDir, "secret-repository.yaml", sec))
		base = append(base, "secret-repository.yaml")
	}
	try(add(BaseDir, "service-read-write.yaml", s.roleService(s.rwService(), RolePrimary)))
	try(add(BaseDir, "service-read-only.yaml", s.roleService(s.roService(), RoleReplica)))
	try(add(BaseDir, "kustomization.yaml", kustomization(s.o.Namespace, false, base)))

	// The overlay: the site's own objects.
	dir := OverlayDir(s.o)
	overlay := []string{"../" + BaseDir, "statefulset.yaml", "service-pods.yaml", "rbac.yaml", "secret-tls.yaml"}
	try(add(dir, "statefulset.yaml", s.statefulSet()))
	try(add(dir, "service-pods.yaml", s.podsService()))
	try(add(dir, "rbac.yaml", s.serviceAccount(), s.role(), s.roleBinding()))
	try(add(dir, "secret-tls.yaml", s.tls()))
	if s.o.Site == SitePrimary {
		try(add(dir, "service-external.yaml", s.loadBalancer()))
		overlay = append(overlay, "service-external.yaml")
		if s.o.BackupCronJob {
			try(add(dir, "cronjob-backup.yaml", s.backupCronJob()))
			overlay = append(overlay, "cronjob-backup.yaml")
		}
	}
	if s.o.ServiceMonitor {
		try(add(dir, "servicemonitor.yaml", s.serviceMonitor()))
		overlay = append(overlay, "servicemonitor.yaml")
	}
	try(add(dir, "kustomization.yaml", kustomization(s.o.Namespace, true, overlay)))
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return files, nil
}

const header = "# Rendered by walferry k8s render: edit the flags and render again rather than this file.\n"

// toYAML prints an API object with sorted keys and without its status
// (the server's part, meaningless in a manifest).
func toYAML(obj any) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, err
	}
	dropStatus(m)
	return yaml.Marshal(m)
}

// dropStatus removes the status of an object and of the objects it
// embeds (a StatefulSet's volume claim templates).
func dropStatus(m map[string]any) {
	delete(m, "status")
	spec, _ := m["spec"].(map[string]any)
	if spec == nil {
		return
	}
	claims, _ := spec["volumeClaimTemplates"].([]any)
	for _, c := range claims {
		if cm, ok := c.(map[string]any); ok {
			delete(cm, "status")
		}
	}
}
