package render

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kustomization is the part of kustomize's kustomization.yaml the render
// writes (kustomize.config.k8s.io/v1beta1): the resources, and for an
// overlay the namespace.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
}

// kustomization lists the directory's files; the overlay adds the base
// and puts everything in the namespace.
func kustomization(namespace string, overlay bool, resources []string) Kustomization {
	k := Kustomization{APIVersion: "kustomize.config.k8s.io/v1beta1", Kind: "Kustomization", Resources: resources}
	if overlay {
		k.Namespace = namespace
	}
	return k
}

// ServiceMonitor is the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1), the fields the render writes. Applying it
// needs the operator's CustomResourceDefinition in the cluster.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServiceMonitorSpec `json:"spec"`
}

// ServiceMonitorSpec selects the Services whose endpoints are scraped.
type ServiceMonitorSpec struct {
	Selector  metav1.LabelSelector `json:"selector"`
	Endpoints []MonitorEndpoint    `json:"endpoints"`
}

// MonitorEndpoint is one scraped port of the selected Services.
type MonitorEndpoint struct {
	Port     string `json:"port"`
	Path     string `json:"path"`
	Interval string `json:"interval"`
}

// serviceMonitor scrapes every sidecar of the site through the headless
// Service's metrics port.
func (s *site) serviceMonitor() *ServiceMonitor {
	return &ServiceMonitor{
		TypeMeta:   metav1.TypeMeta{APIVersion: "monitoring.coreos.com/v1", Kind: "ServiceMonitor"},
		ObjectMeta: metav1.ObjectMeta{Name: s.sts(), Labels: s.siteLabels()},
		Spec: ServiceMonitorSpec{
			Selector:  metav1.LabelSelector{MatchLabels: s.siteSelector()},
			Endpoints: []MonitorEndpoint{{Port: portSidecar, Path: MetricsPath, Interval: "30s"}},
		},
	}
}
