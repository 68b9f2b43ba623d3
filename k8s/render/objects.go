package render

import (
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// fillIn marks the Secret templates' values the user fills in.
const fillIn = ""

// credentials is the template of the database credentials, in the base:
// the same Secret on both sites. A standby site is a copy of the
// primary's cluster, roles and passwords included; a site whose Secret
// said otherwise would break replication as soon as it is promoted
// (seed 002's trap).
func (s *site) credentials() *corev1.Secret {
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: s.credentialsSecret(), Labels: s.clusterLabels(),
			Annotations: map[string]string{"walferry.io/fill-in": "the same values on both sites: " +
				keySuperuserPassword + " (postgres), " + keyReplicationPassword + " (" + s.o.ReplicationUser + ")"}},
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{keySuperuserPassword: fillIn, keyReplicationPassword: fillIn},
	}
}

// repoSecretKeys are the repository credentials a container reads, by
// the SDKs' standard names; none with workload identity or a file://
// repository.
func (s *site) repoSecretKeys() []string {
	if s.workloadIdentity() {
		return nil
	}
	switch s.repo.Scheme {
	case "s3":
		return []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
	case "gs":
		return []string{keyGCSServiceAccount}
	case "azure":
		return []string{"AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY"}
	}
	return nil
}

func (s *site) repositorySecret() *corev1.Secret {
	keys := s.repoSecretKeys()
	if len(keys) == 0 {
		return nil
	}
	data := map[string]string{}
	for _, k := range keys {
		data[k] = fillIn
	}
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: s.repoSecret(), Labels: s.clusterLabels(),
			Annotations: map[string]string{"walferry.io/fill-in": "the credentials of " + s.o.Repo + " (or render with --workload-identity)"}},
		Type:       corev1.SecretTypeOpaque,
		StringData: data,
	}
}

// tls is the template of the site's server certificate: each site's
// names differ, the CA is one for both (the standby checks the primary
// site's certificate with it, and the other way after a switchover).
func (s *site) tls() *corev1.Secret {
	return &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: s.tlsSecret(), Labels: s.siteLabels(),
			Annotations: map[string]string{"walferry.io/fill-in": "a server certificate for " + s.rwService() + ", " +
				s.roService() + ", *." + s.sts() + ", *." + s.sts() + "." + s.o.Namespace + ".svc and the site's external name, signed by the CA both sites share (ca.crt); or let cert-manager write this Secret"}},
		Type:       corev1.SecretTypeTLS,
		StringData: map[string]string{keyTLSCert: fillIn, keyTLSKey: fillIn, keyCA: fillIn},
	}
}

func (s *site) service(name string, labels, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.ServiceSpec{Selector: selector, Ports: ports},
	}
}

func postgresServicePort() corev1.ServicePort {
	return corev1.ServicePort{Name: portPostgres, Port: postgresPort, TargetPort: intstr.FromString(portPostgres), Protocol: corev1.ProtocolTCP}
}

// roleService is the read-write (RolePrimary) or read-only (RoleReplica)
// Service, following the role label the sidecars keep (Kubegres' NAME
// and NAME-replica, seed 004). In the base: the same on both sites.
func (s *site) roleService(name, role string) *corev1.Service {
	sel := s.selector()
	sel[RoleLabel] = role
	return s.service(name, s.clusterLabels(), sel, postgresServicePort())
}

// podsService is the StatefulSet's headless Service: stable names for
// its pods (NAME-SITE-0.NAME-SITE), published before they are ready, or
// an instance waiting for its source's name would wait forever (seed
// 003's deadlock). It also carries the sidecars' metrics port.
func (s *site) podsService() *corev1.Service {
	svc := s.service(s.sts(), s.siteLabels(), s.siteSelector(), postgresServicePort(),
		corev1.ServicePort{Name: portSidecar, Port: s.sidecarPort, TargetPort: intstr.FromString(portSidecar), Protocol: corev1.ProtocolTCP})
	svc.Spec.ClusterIP = corev1.ClusterIPNone
	svc.Spec.PublishNotReadyAddresses = true
	return svc
}

// loadBalancer exposes the primary to the standby site's cluster for
// streaming (seed 000); TLS and scram-sha-256 guard it, source ranges
// narrow it.
func (s *site) loadBalancer() *corev1.Service {
	sel := s.selector()
	sel[RoleLabel] = RolePrimary
	svc := s.service(s.lbService(), s.siteLabels(), sel, postgresServicePort())
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.LoadBalancerSourceRanges = s.o.LoadBalancerSourceRanges
	return svc
}

// serviceAccount is the pods' identity; with WorkloadIdentity, bound to
// the cloud identity that reaches the repository.
func (s *site) serviceAccount() *corev1.ServiceAccount {
	sa := &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts(), Labels: s.siteLabels()},
	}
	if id := s.o.WorkloadIdentity; id != "" {
		key := map[string]string{
			"s3":    "eks.amazonaws.com/role-arn",
			"gs":    "iam.gke.io/gcp-service-account",
			"azure": "azure.workload.identity/client-id",
		}[s.repo.Scheme]
		sa.Annotations = map[string]string{key: id}
	}
	return sa
}

// role is what the sidecar calls, and nothing more: get and patch its
// own Pod (the role label), in its own namespace. Pods are named by
// their ordinal, so the names are known here; scaling up means
// rendering again.
func (s *site) role() *rbacv1.Role {
	names := make([]string, s.o.Instances)
	for i := range names {
		names[i] = s.pod(i)
	}
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts() + "-sidecar", Labels: s.siteLabels()},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"pods"}, ResourceNames: names,
			Verbs: []string{"get", "patch"},
		}},
	}
}

func (s *site) roleBinding() *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts() + "-sidecar", Labels: s.siteLabels()},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: s.sts() + "-sidecar"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: s.sts(), Namespace: s.o.Namespace}},
	}
}

// backupCronJob takes the primary site's base backups over the
// replication protocol when its sidecar does not schedule them: it runs
// anywhere in the cluster and reaches the primary through the
// read-write Service.
func (s *site) backupCronJob() *batchv1.CronJob {
	c := corev1.Container{
		Name:  "backup",
		Image: s.o.Image,
		Args:  []string{"backup-push", "--remote", "--repo", s.o.Repo, "--pg-conn", s.cronConn()},
		Env: append([]corev1.EnvVar{
			secretEnv("PGPASSWORD", s.credentialsSecret(), keyReplicationPassword),
			{Name: "WALFERRY_LOG_FORMAT", Value: "json"},
		}, s.repoEnv()...),
		Resources:       requests("500m", "512Mi"),
		SecurityContext: containerSecurity(),
		VolumeMounts:    append([]corev1.VolumeMount{mount(volTLS, TLSDir, true), mount(volTmp, TmpDir, false)}, s.repoMounts()...),
	}
	vols := []corev1.Volume{
		{Name: volTLS, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: s.tlsSecret(), DefaultMode: ptr(int32(0o440)), Items: []corev1.KeyToPath{{Key: keyCA, Path: keyCA}}}}},
		{Name: volTmp, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	for _, v := range s.volumes() {
		if v.Name == volRepo {
			vols = append(vols, v)
		}
	}
	labels := s.siteLabels()
	labels["app.kubernetes.io/component"] = "backup"
	if s.o.WorkloadIdentity != "" && s.repo.Scheme == "azure" {
		labels["azure.workload.identity/use"] = "true"
	}
	return &batchv1.CronJob{
		TypeMeta:   metav1.TypeMeta{APIVersion: "batch/v1", Kind: "CronJob"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts() + "-backup", Labels: s.siteLabels()},
		Spec: batchv1.CronJobSpec{
			Schedule: s.o.BackupSchedule,
			// backup-push holds the repository's lease: never two at once.
			ConcurrencyPolicy:          batchv1.ForbidConcurrent,
			SuccessfulJobsHistoryLimit: ptr(int32(3)),
			FailedJobsHistoryLimit:     ptr(int32(3)),
			JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{
				BackoffLimit: ptr(int32(2)),
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{
						ServiceAccountName:           s.sts(),
						AutomountServiceAccountToken: ptr(false),
						RestartPolicy:                corev1.RestartPolicyNever,
						SecurityContext: &corev1.PodSecurityContext{
							RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(postgresUID)), RunAsGroup: ptr(int64(postgresUID)),
							FSGroup:        ptr(int64(postgresUID)),
							SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						},
						Containers: []corev1.Container{c},
						Volumes:    vols,
					},
				},
			}},
		},
	}
}

// cronConn reaches the primary through the read-write Service, as the
// replication user (BASE_BACKUP needs the REPLICATION attribute), its
// password from PGPASSWORD: the CronJob's pod has no shell to write a
// passfile, and PGPASSWORD never reaches a file.
func (s *site) cronConn() string {
	return "host=" + s.rwService() + " port=5432 user=" + s.o.ReplicationUser +
		" dbname=postgres sslmode=verify-full sslrootcert=" + TLSDir + "/" + keyCA
}
