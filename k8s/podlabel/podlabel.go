// Package podlabel keeps the sidecar's role on its own Pod as the label
// walferry.io/role (primary or replica), so that a Service can select the
// primary (walferry.io/role=primary) and kubectl shows who is who.
//
// A Labeler only reads and patches its own Pod: the RBAC it needs is a Role
// in the Pod's namespace granting get and patch on pods, bound to the Pod's
// service account:
//
//	rules:
//	- apiGroups: [""]
//	  resources: ["pods"]
//	  verbs: ["get", "patch"]
//
// It finds its Pod by name and namespace: Config's fields, else the
// POD_NAME and POD_NAMESPACE variables (the downward API: fieldRef
// metadata.name and metadata.namespace), else the hostname (a Pod's
// hostname is its name unless spec.hostname says otherwise) and the
// service account's namespace file (or the kubeconfig context's namespace).
package podlabel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/walferry/walferry/internal/failure"
	"github.com/walferry/walferry/storage/retry"
)

// Key is the label a Labeler keeps on its Pod.
const Key = "walferry.io/role"

// Role is the label's value.
type Role string

// The roles.
const (
	Primary Role = "primary"
	Replica Role = "replica"
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool { return r == Primary || r == Replica }

// DefaultServiceAccountDir is where Kubernetes mounts a Pod's service
// account token, CA and namespace.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Config says how a Labeler reaches the API server and which Pod is its own.
type Config struct {
	// Kubeconfig is a kubeconfig file (--kubeconfig). Empty: the in-cluster
	// service account (ServiceAccountDir and KUBERNETES_SERVICE_HOST/PORT).
	Kubeconfig string
	// ServiceAccountDir holds token, ca.crt and namespace; empty:
	// DefaultServiceAccountDir.
	ServiceAccountDir string
	// PodName empty: $POD_NAME, else the hostname.
	PodName string
	// Namespace empty: $POD_NAMESPACE, else the service account's namespace
	// file (in cluster) or the kubeconfig context's namespace.
	Namespace string
	// Retry bounds the retries of one Set on transient errors and conflicts;
	// zero fields take retry.DefaultPolicy's values.
	Retry retry.Policy
	// Logger gets one Info line per label change and per retry; nil: none.
	Logger *slog.Logger
}

// Labeler keeps the role label on one Pod. Its methods are safe for
// concurrent use (they hold no state but the client).
type Labeler struct {
	pods      corev1client.PodInterface
	namespace string
	pod       string
	policy    retry.Policy
	log       *slog.Logger
}

// InCluster reports whether this process runs in a Pod with a service
// account token mounted: the API server's address is in the environment
// and the token file exists.
func InCluster() bool { return inCluster(DefaultServiceAccountDir) }

func inCluster(saDir string) bool {
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" || os.Getenv("KUBERNETES_SERVICE_PORT") == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(saDir, "token"))
	return err == nil
}

// New resolves cfg (see Config's fields) and returns a Labeler. It does no
// request: a missing Pod or a missing permission shows at the first Set.
func New(cfg Config) (*Labeler, error) {
	saDir := cfg.ServiceAccountDir
	if saDir == "" {
		saDir = DefaultServiceAccountDir
	}
	var (
		rc        *rest.Config
		defaultNS string
		err       error
	)
	if cfg.Kubeconfig != "" {
		loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: cfg.Kubeconfig}, &clientcmd.ConfigOverrides{})
		if rc, err = loader.ClientConfig(); err != nil {
			return nil, fmt.Errorf("podlabel: kubeconfig %s: %w (pass a readable kubeconfig, or none in a Pod)", cfg.Kubeconfig, err)
		}
		if defaultNS, _, err = loader.Namespace(); err != nil {
			return nil, fmt.Errorf("podlabel: kubeconfig %s: namespace: %w", cfg.Kubeconfig, err)
		}
	} else {
		if rc, err = inClusterConfig(saDir); err != nil {
			return nil, err
		}
		if b, err := os.ReadFile(filepath.Join(saDir, "namespace")); err == nil {
			defaultNS = strings.TrimSpace(string(b))
		}
	}

	pod := firstNonEmpty(cfg.PodName, os.Getenv("POD_NAME"))
	if pod == "" {
		if pod, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("podlabel: pod name: hostname: %w (set POD_NAME from the downward API: fieldRef metadata.name)", err)
		}
	}
	ns := firstNonEmpty(cfg.Namespace, os.Getenv("POD_NAMESPACE"), defaultNS)
	if ns == "" {
		return nil, errors.New("podlabel: pod namespace unknown: set POD_NAMESPACE from the downward API (fieldRef metadata.namespace)")
	}
	return NewForConfig(rc, ns, pod, cfg.Retry, cfg.Logger)
}

// NewForConfig returns a Labeler for Pod namespace/pod reached through rc.
func NewForConfig(rc *rest.Config, namespace, pod string, p retry.Policy, log *slog.Logger) (*Labeler, error) {
	if namespace == "" || pod == "" {
		return nil, fmt.Errorf("podlabel: pod %q in namespace %q: both names are required", pod, namespace)
	}
	rc = rest.CopyConfig(rc)
	if rc.UserAgent == "" {
		rc.UserAgent = "walferry-podlabel"
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("podlabel: client for %s: %w", rc.Host, err)
	}
	if log != nil {
		log = log.With(slog.String("pod", namespace+"/"+pod))
	}
	return &Labeler{pods: cs.CoreV1().Pods(namespace), namespace: namespace, pod: pod, policy: p, log: log}, nil
}

// inClusterConfig is rest.InClusterConfig with the token directory as a
// parameter. The token is read from its file as it rotates (client-go
// rereads BearerTokenFile), never copied once.
func inClusterConfig(saDir string) (*rest.Config, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("podlabel: not in a Pod (KUBERNETES_SERVICE_HOST/PORT unset): pass --kubeconfig to run outside Kubernetes")
	}
	token := filepath.Join(saDir, "token")
	if _, err := os.Stat(token); err != nil {
		return nil, fmt.Errorf("podlabel: service account token: %w (set automountServiceAccountToken: true on the Pod, or pass --kubeconfig)", err)
	}
	rc := &rest.Config{
		Host:            "https://" + net.JoinHostPort(host, port),
		BearerTokenFile: token,
	}
	if ca := filepath.Join(saDir, "ca.crt"); fileExists(ca) {
		rc.TLSClientConfig.CAFile = ca
	}
	return rc, nil
}

// Pod returns namespace/name of the Pod the Labeler labels.
func (l *Labeler) Pod() string { return l.namespace + "/" + l.pod }

// Get returns the Pod's current role label, "" when it has none.
func (l *Labeler) Get(ctx context.Context) (Role, error) {
	var role Role
	err := retry.Do(ctx, l.policy, "get pod "+l.Pod(), l.log, func(int) error {
		p, err := l.pods.Get(ctx, l.pod, metav1.GetOptions{})
		if err != nil {
			return l.classify("get", err)
		}
		role = Role(p.Labels[Key])
		return nil
	})
	return role, err
}

// Set makes the Pod's label walferry.io/role say role. It reads the Pod and
// patches it only when the label differs, so calling Set on every
// observation of the role costs one GET. Conflicts and transient failures
// (timeouts, 429, 5xx, connection errors) are retried with Config.Retry;
// a refused permission or a missing Pod is returned at once, naming the fix.
func (l *Labeler) Set(ctx context.Context, role Role) error {
	if !role.Valid() {
		return failure.Wrap(failure.Usage, fmt.Errorf("podlabel: role %q: want %q or %q", role, Primary, Replica))
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"labels": map[string]string{Key: string(role)}},
	})
	if err != nil {
		return err
	}
	return retry.Do(ctx, l.policy, "label pod "+l.Pod(), l.log, func(int) error {
		p, err := l.pods.Get(ctx, l.pod, metav1.GetOptions{})
		if err != nil {
			return l.classify("get", err)
		}
		old := p.Labels[Key]
		if old == string(role) {
			return nil
		}
		// A merge patch of the one label: other labels and concurrent
		// writers of the Pod (the kubelet's status) are left alone.
		if _, err := l.pods.Patch(ctx, l.pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return l.classify("patch", err)
		}
		if l.log != nil {
			l.log.LogAttrs(ctx, slog.LevelInfo, "pod role label set",
				slog.String("label", Key), slog.String("from", old), slog.String("to", string(role)))
		}
		return nil
	})
}

// classify wraps an API error with what to do about it and its failure kind
// (which decides whether retry.Do tries again).
func (l *Labeler) classify(verb string, err error) error {
	what := fmt.Sprintf("podlabel: %s pod %s", verb, l.Pod())
	switch {
	case apierrors.IsForbidden(err):
		return failure.Wrap(failure.Permission, fmt.Errorf(
			"%s: %w (grant get,patch on pods in namespace %s to the Pod's service account: a Role with those verbs and a RoleBinding)",
			what, err, l.namespace))
	case apierrors.IsUnauthorized(err):
		return failure.Wrap(failure.Permission, fmt.Errorf(
			"%s: %w (the credentials were refused: an expired or foreign service account token, or the kubeconfig's user)", what, err))
	case apierrors.IsNotFound(err):
		return fmt.Errorf("%s: %w (set POD_NAME and POD_NAMESPACE from the downward API: fieldRef metadata.name and metadata.namespace)", what, err)
	case apierrors.IsConflict(err), apierrors.IsServerTimeout(err), apierrors.IsTimeout(err),
		apierrors.IsTooManyRequests(err), apierrors.IsServiceUnavailable(err),
		apierrors.IsInternalError(err), apierrors.IsUnexpectedServerError(err):
		return failure.Wrap(failure.Transient, fmt.Errorf("%s: %w", what, err))
	}
	// Another answer of the server (invalid, method not allowed), which the
	// same request would get again, or no answer: the connection (net
	// errors are Transient in internal/failure) or the context.
	return fmt.Errorf("%s: %w", what, err)
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
