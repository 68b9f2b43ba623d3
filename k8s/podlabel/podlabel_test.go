package podlabel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/internal/testenv"
	"github.com/walferry/walferry/storage/retry"
)

// fastRetry keeps a test's retries short.
var fastRetry = retry.Policy{MaxAttempts: 3, InitialBackoff: 10 * time.Millisecond, MaxElapsed: time.Second}

func TestRoleValid(t *testing.T) {
	for _, tc := range []struct {
		role Role
		want bool
	}{{Primary, true}, {Replica, true}, {"", false}, {"standby", false}, {"Primary", false}} {
		if got := tc.role.Valid(); got != tc.want {
			t.Errorf("Role(%q).Valid() = %v, want %v", tc.role, got, tc.want)
		}
	}
}

func TestNewOutsideCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	dir := t.TempDir()
	if inCluster(dir) {
		t.Error("inCluster = true without KUBERNETES_SERVICE_HOST")
	}
	_, err := New(Config{ServiceAccountDir: dir, PodName: "p", Namespace: "n"})
	if err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("New outside a cluster: err = %v, want one naming --kubeconfig", err)
	}

	t.Setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "6443")
	_, err = New(Config{ServiceAccountDir: dir, PodName: "p", Namespace: "n"})
	if err == nil || !strings.Contains(err.Error(), "automountServiceAccountToken") {
		t.Errorf("New without a token: err = %v, want one naming automountServiceAccountToken", err)
	}
}

// TestLabelerAgainstAPIServer runs a Labeler as a service account that may
// only get and patch pods in its own namespace, against a real API server.
func TestLabelerAgainstAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	kube := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := kubernetes.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}

	const ns, other, sa, pod = "walferry-db", "elsewhere", "walferry", "db-0"
	mustCreate := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("create %s: %v", what, err)
		}
	}
	for _, n := range []string{ns, other} {
		_, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		mustCreate("namespace "+n, err)
		// No controller-manager runs: the service account the Pods name is
		// created here, before them (its admission plugin checks it exists).
		_, err = admin.CoreV1().ServiceAccounts(n).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		mustCreate("service account in "+n, err)
		// No kubelet either: the API stores the Pod all the same.
		_, err = admin.CoreV1().Pods(n).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: pod, Labels: map[string]string{"app": "db"}},
			Spec: corev1.PodSpec{
				ServiceAccountName: sa,
				Containers:         []corev1.Container{{Name: "postgres", Image: "postgres:15"}},
			},
		}, metav1.CreateOptions{})
		mustCreate("pod in "+n, err)
	}
	_, err = admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "walferry-podlabel"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}}},
	}, metav1.CreateOptions{})
	mustCreate("role", err)
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "walferry-podlabel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "walferry-podlabel"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}, metav1.CreateOptions{})
	mustCreate("rolebinding", err)

	// The service account's token as the kubelet would mount it, with the
	// CA and the namespace beside it.
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	saDir := t.TempDir()
	ca, err := os.ReadFile(kube.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"token": tr.Status.Token, "ca.crt": string(ca), "namespace": ns} {
		if err := os.WriteFile(filepath.Join(saDir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", kube.Host)
	t.Setenv("KUBERNETES_SERVICE_PORT", kube.Port)
	t.Setenv("POD_NAME", pod)
	t.Setenv("POD_NAMESPACE", "")
	if !inCluster(saDir) {
		t.Fatal("inCluster = false with a token and KUBERNETES_SERVICE_HOST/PORT")
	}

	l, err := New(Config{ServiceAccountDir: saDir, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l.Pod(), ns+"/"+pod; got != want {
		t.Fatalf("Pod() = %s, want %s (POD_NAME and the namespace file)", got, want)
	}
	label := func() (string, string) {
		t.Helper()
		p, err := admin.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Labels[Key], p.ResourceVersion
	}
	for _, role := range []Role{Primary, Replica, Primary} {
		if err := l.Set(ctx, role); err != nil {
			t.Fatalf("Set(%s): %v", role, err)
		}
		if got, _ := label(); got != string(role) {
			t.Fatalf("after Set(%s): label %s = %q", role, Key, got)
		}
		if got, err := l.Get(ctx); err != nil || got != role {
			t.Fatalf("Get after Set(%s) = %q, %v", role, got, err)
		}
	}
	p, err := admin.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Labels["app"] != "db" {
		t.Errorf("labels = %v: the patch removed app=db", p.Labels)
	}

	// The same role again: no write (the resourceVersion stays).
	_, before := label()
	if err := l.Set(ctx, Primary); err != nil {
		t.Fatal(err)
	}
	if _, after := label(); after != before {
		t.Errorf("Set of the current role wrote the Pod: resourceVersion %s -> %s", before, after)
	}

	// Another namespace: RBAC refuses, at once, and the error says what to grant.
	elsewhere, err := New(Config{ServiceAccountDir: saDir, Namespace: other, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	err = elsewhere.Set(ctx, Replica)
	if err == nil {
		t.Fatal("Set in a namespace the service account has no Role in: no error")
	}
	t.Logf("forbidden: %v", err)
	if !strings.Contains(err.Error(), "grant get,patch on pods in namespace "+other) {
		t.Errorf("error %q does not name the grant to add", err)
	}
	if k := failure.Of(err); k != failure.Permission {
		t.Errorf("failure kind = %v, want %v", k, failure.Permission)
	}
	if strings.Contains(err.Error(), "giving up") {
		t.Errorf("a refused permission was retried: %v", err)
	}

	// A service account that may get but not patch: refused on the patch.
	_, err = admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "reader"}}, metav1.CreateOptions{})
	mustCreate("service account reader", err)
	_, err = admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{})
	mustCreate("role pod-reader", err)
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "reader"}},
	}, metav1.CreateOptions{})
	mustCreate("rolebinding pod-reader", err)
	rt, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "reader", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for reader: %v", err)
	}
	readerCfg := rest.AnonymousClientConfig(kube.Config)
	readerCfg.BearerToken = rt.Status.Token
	reader, err := NewForConfig(readerCfg, ns, pod, fastRetry, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := reader.Get(ctx); err != nil || got != Primary {
		t.Errorf("reader Get = %q, %v; want %q", got, err, Primary)
	}
	err = reader.Set(ctx, Replica)
	if err == nil || !strings.Contains(err.Error(), "patch pod") || !strings.Contains(err.Error(), "grant get,patch") {
		t.Errorf("Set without patch permission: err = %v, want a refused patch naming the grant", err)
	}

	// A Pod that is not there: the error names the downward API variables.
	t.Setenv("POD_NAME", "db-9")
	missing, err := New(Config{ServiceAccountDir: saDir, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Set(ctx, Primary); err == nil || !strings.Contains(err.Error(), "POD_NAME") {
		t.Errorf("Set on a missing Pod: err = %v, want one naming POD_NAME", err)
	}

	// Outside the cluster, a kubeconfig (the admin's here) reaches the same Pod.
	kl, err := New(Config{Kubeconfig: kube.Kubeconfig, PodName: pod, Namespace: ns, Retry: fastRetry})
	if err != nil {
		t.Fatal(err)
	}
	if err := kl.Set(ctx, Replica); err != nil {
		t.Fatalf("Set through the kubeconfig: %v", err)
	}
	if got, _ := label(); got != string(Replica) {
		t.Errorf("label after Set through the kubeconfig = %q, want %q", got, Replica)
	}
}
