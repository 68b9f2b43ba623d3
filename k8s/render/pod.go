package render

import (
	"fmt"
	"path"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptr[T any](v T) *T { return &v }

// Volume names.
const (
	volData    = "data"
	volBin     = "walferry-bin"
	volRun     = "walferry-run"
	volPGSock  = "pg-socket"
	volTmp     = "tmp"
	volConfig  = "config"
	volScripts = "scripts"
	volTLS     = "tls"
	volRepo    = "repository"
	volToken   = "kube-api-access"
)

const (
	portPostgres = "postgresql"
	portSidecar  = "walferry"
)

// statefulSet is the site's instances. The pod: prepare (postgres image)
// writes the passfile and, on a new primary site's first instance, runs
// initdb; walferry bootstrap installs walferry and walferry-hook into the
// shared volume and builds the data directory of every other instance;
// on a primary site walferry repo init makes sure the repository is
// this cluster's; then the sidecar (a native sidecar: it starts before
// the server and stops after it, so the server's last archive_command
// still finds its daemon) and the server.
func (s *site) statefulSet() *appsv1.StatefulSet {
	labels := s.siteLabels()
	if s.o.WorkloadIdentity != "" && s.repo.Scheme == "azure" {
		// Azure's webhook injects the token only into pods so labelled.
		labels["azure.workload.identity/use"] = "true"
	}
	init := []corev1.Container{s.prepareContainer(), s.bootstrapContainer()}
	if s.o.Site == SitePrimary {
		init = append(init, s.repoInitContainer())
	}
	init = append(init, s.sidecarContainer())
	policy := appsv1.OrderedReadyPodManagement
	if s.o.Site == SiteStandby {
		// A standby site's instances are built independently from the
		// repository and the source; none waits for another.
		policy = appsv1.ParallelPodManagement
	}
	claim := corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: volData, Labels: s.siteLabels()},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(s.o.StorageSize)},
			},
		},
	}
	if s.o.StorageClass != "" {
		claim.Spec.StorageClassName = ptr(s.o.StorageClass)
	}
	return &appsv1.StatefulSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "StatefulSet"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts(), Labels: s.siteLabels()},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr(int32(s.o.Instances)),
			ServiceName:         s.sts(),
			PodManagementPolicy: policy,
			Selector:            &metav1.LabelSelector{MatchLabels: s.siteSelector()},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: s.sts(),
					// Only the sidecar gets an API token (kubeAPIAccess).
					AutomountServiceAccountToken: ptr(false),
					// The sidecar fences a primary the repository's lineage
					// record does not allow by stopping the postmaster of
					// postmaster.pid: it must see the server's processes.
					ShareProcessNamespace:         ptr(true),
					TerminationGracePeriodSeconds: ptr(int64(gracePeriod)),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:        ptr(true),
						RunAsUser:           ptr(int64(postgresUID)),
						RunAsGroup:          ptr(int64(postgresUID)),
						FSGroup:             ptr(int64(postgresUID)),
						FSGroupChangePolicy: ptr(corev1.FSGroupChangeOnRootMismatch),
						SeccompProfile:      &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Affinity:       s.antiAffinity(),
					InitContainers: init,
					Containers:     []corev1.Container{s.postgresContainer()},
					Volumes:        s.volumes(),
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{claim},
		},
	}
}

// antiAffinity spreads the site's instances over nodes when there are
// enough, as Kubegres does (seed 004): preferred, not required, so three
// instances still run on two nodes.
func (s *site) antiAffinity() *corev1.Affinity {
	return &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
			Weight: 100,
			PodAffinityTerm: corev1.PodAffinityTerm{
				LabelSelector: &metav1.LabelSelector{MatchLabels: s.siteSelector()},
				TopologyKey:   "kubernetes.io/hostname",
			},
		}},
	}}
}

func (s *site) volumes() []corev1.Volume {
	empty := func(name string) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}
	}
	vols := []corev1.Volume{
		empty(volBin), empty(volRun), empty(volPGSock), empty(volTmp),
		{Name: volConfig, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.configMap()}}}},
		{Name: volScripts, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: s.scriptsMap()}, DefaultMode: ptr(int32(0o555))}}},
		// 0640, owned by root and the postgres group (fsGroup): the
		// server accepts a root-owned key readable by its group.
		{Name: volTLS, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.tlsSecret(), DefaultMode: ptr(int32(0o640))}}},
		s.kubeAPIAccess(),
	}
	switch {
	case s.repo.Scheme == "file":
		vols = append(vols, corev1.Volume{Name: volRepo, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: s.repoSecret()}}})
	case s.repo.Scheme == "gs" && !s.workloadIdentity():
		vols = append(vols, corev1.Volume{Name: volRepo, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.repoSecret(), DefaultMode: ptr(int32(0o440)),
			Items: []corev1.KeyToPath{{Key: keyGCSServiceAccount, Path: keyGCSServiceAccount}}}}})
	}
	return vols
}

// kubeAPIAccess is the API token, for the sidecar only: it sets its
// Pod's role label, and nothing else in the pod talks to the API.
func (s *site) kubeAPIAccess() corev1.Volume {
	return corev1.Volume{Name: volToken, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr(int32(0o444)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		},
	}}}
}

func mount(vol, at string, readOnly bool) corev1.VolumeMount {
	return corev1.VolumeMount{Name: vol, MountPath: at, ReadOnly: readOnly}
}

// repoMounts and repoEnv give a container the repository: its volume
// (file://), or its credentials (none with workload identity: the SDKs
// find the pod's identity themselves).
func (s *site) repoMounts() []corev1.VolumeMount {
	switch {
	case s.repo.Scheme == "file":
		return []corev1.VolumeMount{mount(volRepo, s.repo.Path, false)}
	case s.repo.Scheme == "gs" && !s.workloadIdentity():
		return []corev1.VolumeMount{mount(volRepo, GCSKeyDir, true)}
	}
	return nil
}

func (s *site) repoEnv() []corev1.EnvVar {
	if s.workloadIdentity() {
		return nil
	}
	var env []corev1.EnvVar
	for _, key := range s.repoSecretKeys() {
		if key == keyGCSServiceAccount {
			env = append(env, corev1.EnvVar{Name: "GOOGLE_APPLICATION_CREDENTIALS", Value: path.Join(GCSKeyDir, key)})
			continue
		}
		env = append(env, secretEnv(key, s.repoSecret(), key))
	}
	return env
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}}
}

// containerSecurity: no root, no privilege, no capability, nothing
// written outside the volumes.
func containerSecurity() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             ptr(true),
		AllowPrivilegeEscalation: ptr(false),
		ReadOnlyRootFilesystem:   ptr(true),
		Privileged:               ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

func requests(cpu, memory string) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(memory)}}
}

func (s *site) prepareContainer() corev1.Container {
	env := []corev1.EnvVar{
		{Name: "PGDATA", Value: PGData},
		secretEnv("REPLICATION_PASSWORD", s.credentialsSecret(), keyReplicationPassword),
	}
	if s.o.Site == SitePrimary {
		env = append(env, corev1.EnvVar{Name: "WALFERRY_INITDB", Value: "true"},
			secretEnv("SUPERUSER_PASSWORD", s.credentialsSecret(), keySuperuserPassword))
	}
	return corev1.Container{
		Name:            "prepare",
		Image:           s.o.PostgresImage,
		Command:         []string{"bash", ScriptsDir + "/prepare.sh"},
		Env:             env,
		Resources:       requests("100m", "256Mi"),
		SecurityContext: containerSecurity(),
		VolumeMounts: []corev1.VolumeMount{
			mount(volData, DataMount, false), mount(volRun, RunDir, false), mount(volTmp, TmpDir, false),
			mount(volScripts, ScriptsDir, true),
		},
	}
}

// bootstrapContainer: on a primary site, the instances after the first
// copy it with BASE_BACKUP (its data directory is initdb's; the
// repository may hold nothing yet) and the first is left alone; on a
// standby site every instance is restored from the repository or copied
// from the source (--from auto), or restored from the repository alone
// when the site has no network path to the source (seed 002).
func (s *site) bootstrapContainer() corev1.Container {
	args := []string{"bootstrap", "--pgdata", PGData, "--config-file", ConfigFile, "--install-bin", BinDir}
	switch {
	case s.o.Site == SitePrimary:
		args = append(args, "--from", "primary", "--source-conn", s.conn(s.inSiteSource()))
	case s.o.SourceHost != "":
		args = append(args, "--repo", s.o.Repo, "--socket", Socket, "--from", "auto", "--source-conn", s.conn(s.o.SourceHost))
	default:
		args = append(args, "--repo", s.o.Repo, "--socket", Socket, "--from", "repo", "--partial")
	}
	mounts := []corev1.VolumeMount{
		mount(volData, DataMount, false), mount(volBin, BinDir, false), mount(volRun, RunDir, false),
		mount(volTmp, TmpDir, false), mount(volConfig, ConfigDir, true), mount(volTLS, TLSDir, true),
	}
	var env []corev1.EnvVar
	if s.o.Site == SiteStandby {
		mounts = append(mounts, s.repoMounts()...)
		env = s.repoEnv()
	}
	return corev1.Container{
		Name:            "bootstrap",
		Image:           s.o.Image,
		Args:            args,
		Env:             append(env, corev1.EnvVar{Name: "WALFERRY_LOG_FORMAT", Value: "json"}),
		Resources:       requests("500m", "512Mi"),
		SecurityContext: containerSecurity(),
		VolumeMounts:    mounts,
	}
}

// repoInitContainer makes the repository this cluster's on a primary
// site: a new repository is initialized from the control file, one of
// this cluster is left as it is, one of another cluster is refused (the
// pod does not start: a lost volume never becomes a second lineage).
func (s *site) repoInitContainer() corev1.Container {
	return corev1.Container{
		Name:            "repo-init",
		Image:           s.o.Image,
		Args:            []string{"repo", "init", "--pgdata", PGData, "--repo", s.o.Repo},
		Env:             append(s.repoEnv(), corev1.EnvVar{Name: "WALFERRY_LOG_FORMAT", Value: "json"}),
		Resources:       requests("100m", "128Mi"),
		SecurityContext: containerSecurity(),
		VolumeMounts:    append([]corev1.VolumeMount{mount(volData, DataMount, true), mount(volTmp, TmpDir, false)}, s.repoMounts()...),
	}
}

// sidecarArgs: the same on every instance of the site; the sidecar does
// what its instance's role needs (backups and --wal-receive on the
// primary, streaming from --source-conn on a standby).
func (s *site) sidecarArgs() []string {
	args := []string{"sidecar", "--pgdata", PGData, "--repo", s.o.Repo, "--config-file", ConfigFile,
		"--socket", Socket, "--listen", fmt.Sprintf(":%d", s.sidecarPort), "--site", s.sts()}
	switch {
	case s.o.Site == SitePrimary:
		args = append(args, "--source-conn", s.conn(s.inSiteSource()))
		if !s.o.BackupCronJob {
			args = append(args, "--backup-schedule", s.o.BackupSchedule)
		}
		if s.o.WALReceive {
			args = append(args, "--wal-receive")
		}
		// The standby site's slots, kept from the start so a standby
		// still being built loses no WAL.
		standby := site{o: s.o}
		standby.o.Site = SiteStandby
		for i := 0; i < s.o.StandbyInstances; i++ {
			args = append(args, "--standby-slot", slotName(standby.pod(i)))
		}
	case s.o.SourceHost != "":
		args = append(args, "--source-conn", s.conn(s.o.SourceHost))
	default:
		args = append(args, "--ready-on-archive")
	}
	return args
}

func (s *site) sidecarContainer() corev1.Container {
	http := func(p string) corev1.ProbeHandler {
		return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: p, Port: intstr.FromString(portSidecar)}}
	}
	env := []corev1.EnvVar{
		// The sidecar reaches its server on the shared socket directory,
		// as postgres by peer authentication (same uid).
		{Name: "PGHOST", Value: PGSocketDir},
		{Name: "PGUSER", Value: "postgres"},
		{Name: "PGDATABASE", Value: "postgres"},
		{Name: "WALFERRY_LOG_FORMAT", Value: "json"},
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
	}
	return corev1.Container{
		Name:          "sidecar",
		Image:         s.o.Image,
		Args:          s.sidecarArgs(),
		RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways),
		Ports:         []corev1.ContainerPort{{Name: portSidecar, ContainerPort: s.sidecarPort, Protocol: corev1.ProtocolTCP}},
		Env:           append(env, s.repoEnv()...),
		// Started: the sidecar listens at once, before PostgreSQL runs
		// (which starts only after this probe passes: /healthz, which
		// needs PostgreSQL, would never pass here).
		StartupProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString(portSidecar)}},
			PeriodSeconds: 2, FailureThreshold: 30, TimeoutSeconds: 2,
		},
		// Ready (for the pod, so for the Services): a primary, or a
		// standby streaming with little lag.
		ReadinessProbe: &corev1.Probe{ProbeHandler: http(ReadyPath), PeriodSeconds: 5, FailureThreshold: 3, TimeoutSeconds: 3},
		// Alive: the sidecar observes and PostgreSQL answers; patient,
		// since a server replaying after a crash answers late.
		LivenessProbe:   &corev1.Probe{ProbeHandler: http(HealthPath), PeriodSeconds: 10, FailureThreshold: 30, TimeoutSeconds: 5},
		Resources:       requests("100m", "256Mi"),
		SecurityContext: containerSecurity(),
		VolumeMounts: append([]corev1.VolumeMount{
			mount(volData, DataMount, false), mount(volRun, RunDir, false), mount(volPGSock, PGSocketDir, false),
			mount(volTmp, TmpDir, false), mount(volConfig, ConfigDir, true), mount(volTLS, TLSDir, true),
			mount(volToken, tokenDir, true),
		}, s.repoMounts()...),
	}
}

// postgresContainer runs the server itself (not the image's entrypoint:
// initdb is prepare's) with the ConfigMap's postgresql.conf (seed 003).
// Kubernetes stops containers with SIGTERM, PostgreSQL's smart shutdown,
// which waits for every client: the preStop hook asks for a fast one.
func (s *site) postgresContainer() corev1.Container {
	env := []corev1.EnvVar{
		{Name: "PGDATA", Value: PGData},
		// The hooks PostgreSQL runs find the sidecar's daemon and, when it
		// does not answer, the repository.
		{Name: "WALFERRY_SOCKET", Value: Socket},
		{Name: "WALFERRY_REPO", Value: s.o.Repo},
		{Name: "WALFERRY_LOG_FORMAT", Value: "json"},
	}
	return corev1.Container{
		Name:    "postgres",
		Image:   s.o.PostgresImage,
		Command: []string{"postgres", "-D", PGData, "-c", "config_file=" + ConfigFile},
		Ports:   []corev1.ContainerPort{{Name: portPostgres, ContainerPort: postgresPort, Protocol: corev1.ProtocolTCP}},
		Env:     append(env, s.repoEnv()...),
		Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
			Command: []string{"pg_ctl", "stop", "--pgdata", PGData, "--mode", "fast", "--wait", "--timeout", fmt.Sprint(shutdownWait)},
		}}},
		Resources:       requests("500m", "1Gi"),
		SecurityContext: containerSecurity(),
		VolumeMounts: append([]corev1.VolumeMount{
			mount(volData, DataMount, false), mount(volBin, BinDir, true), mount(volRun, RunDir, false),
			mount(volPGSock, PGSocketDir, false), mount(volTmp, TmpDir, false),
			mount(volConfig, ConfigDir, true), mount(volTLS, TLSDir, true),
		}, s.repoMounts()...),
	}
}
