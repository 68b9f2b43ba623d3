package render

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/walferry/walferry/internal/testenv"
)

// TestAcceptedByAPIServer creates every rendered document of both sites,
// at 1 and 3 instances, in a real kube-apiserver (testenv.Kube), as
// `kubectl apply -k` of the site's overlay would: the server validates each
// against the API it serves (field names, types, enums, cross-field rules
// of StatefulSets, native sidecars, probes, RBAC) and must accept all.
func TestAcceptedByAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiserver (make deps); skipped with -short")
	}
	kube := testenv.Kube(t)
	t.Logf("kube-apiserver %s", kube.Version)
	cs, err := kubernetes.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cases := []Options{
		{Site: SitePrimary, Instances: 1},
		{Site: SitePrimary, Instances: 3, BackupCronJob: true, BackupSchedule: "0 2 * * *", WALReceive: true,
			WorkloadIdentity: "arn:aws:iam::123456789012:role/walferry", LoadBalancerSourceRanges: []string{"203.0.113.0/24"}},
		{Site: SiteStandby, Instances: 1, SourceHost: "xkube-primary.example.com"},
		{Site: SiteStandby, Instances: 3},
	}
	for i, o := range cases {
		o.Name, o.Repo = "xkube", "s3://walferry-backups/xkube"
		o.Namespace = fmt.Sprintf("render-%d-%s-%d", i, o.Site, o.Instances)
		t.Run(o.Namespace, func(t *testing.T) {
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.Namespace}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			files, err := Render(o)
			if err != nil {
				t.Fatal(err)
			}
			created := 0
			for _, f := range files {
				if path.Base(f.Path) == "kustomization.yaml" {
					continue
				}
				for _, doc := range bytes.Split(f.Data, []byte("\n---\n")) {
					var obj unstructured.Unstructured
					if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
						t.Fatalf("%s: %v", f.Path, err)
					}
					if len(obj.Object) == 0 {
						continue
					}
					gvk := obj.GroupVersionKind()
					m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
					if err != nil {
						t.Errorf("%s: %s %s: the server does not serve it: %v", f.Path, gvk, obj.GetName(), err)
						continue
					}
					if _, err := dyn.Resource(m.Resource).Namespace(o.Namespace).Create(ctx, &obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
						t.Errorf("%s: the server refused %s %s: %v", f.Path, gvk.Kind, obj.GetName(), err)
						continue
					}
					created++
				}
			}
			t.Logf("%s: the server accepted %d documents", o.Namespace, created)
			if created == 0 {
				t.Error("nothing was created")
			}
		})
	}
}
