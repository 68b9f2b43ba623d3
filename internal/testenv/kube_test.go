package testenv_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/walferry/walferry/internal/testenv"
)

func TestKube(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	kube := testenv.Kube(t)
	t.Logf("kube-apiserver version %s", kube.Version)
	if kube.Version == "" || kube.Version == "v0.0.0-master+$Format:%H$" {
		t.Errorf("Version = %q, want the release tools/kube stamps (make deps sets it with -ldflags)", kube.Version)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cs, err := kubernetes.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "walferry-testenv"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "settings", Namespace: ns.Name},
		Data:       map[string]string{"role": "primary"},
	}
	if _, err := cs.CoreV1().ConfigMaps(ns.Name).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create configmap: %v", err)
	}

	// The kubeconfig reaches the same server with the same rights.
	kcfg, err := clientcmd.BuildConfigFromFlags("", kube.Kubeconfig)
	if err != nil {
		t.Fatalf("load %s: %v", kube.Kubeconfig, err)
	}
	cs2, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := cs2.CoreV1().ConfigMaps(ns.Name).Get(ctx, "settings", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get configmap through the kubeconfig: %v", err)
	}
	if got.Data["role"] != "primary" {
		t.Errorf("configmap data = %v, want role=primary", got.Data)
	}
}
