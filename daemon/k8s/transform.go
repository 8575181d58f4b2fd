package k8s

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// lastApplied is the annotation kubectl apply leaves: a second copy of the
// whole object, of no use to aegisd.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// slim trims objects before the informers store them, so the caches hold
// (and the snapshot fingerprints) only what aegisd reads: a node's daemon
// caches every pod of the cluster, and a pod's status changes far more
// often than its labels or addresses. It also sets the kind, which typed
// informers leave empty, so snapshot objects look like the directory
// source's.
//
// Pods keep their metadata (labels, annotations, owners), node, host
// networking, service account, container names and ports, phase and
// addresses; the addresses of host-network pods (the node's own) and of
// pods that have terminated (which kubelet may already have given to a new
// pod) are left out, so they never stand for a pod identity.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slimPod(o), nil
	case *corev1.Namespace:
		slimMeta(&o.ObjectMeta)
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}
		o.Spec = corev1.NamespaceSpec{}
		o.Status.Conditions = nil
	case *corev1.Service:
		slimMeta(&o.ObjectMeta)
		o.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}
	case *discoveryv1.EndpointSlice:
		slimMeta(&o.ObjectMeta)
		o.TypeMeta = metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"}
	case *networkingv1.NetworkPolicy:
		slimMeta(&o.ObjectMeta)
		o.TypeMeta = metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"}
	case *unstructured.Unstructured:
		unstructured.RemoveNestedField(o.Object, "metadata", "managedFields")
		unstructured.RemoveNestedField(o.Object, "metadata", "annotations", lastApplied)
		if a := o.GetAnnotations(); a != nil && len(a) == 0 {
			unstructured.RemoveNestedField(o.Object, "metadata", "annotations")
		}
	}
	// Anything else (a tombstone of a deleted object) passes as it is.
	return obj, nil
}

func slimMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	if _, ok := m.Annotations[lastApplied]; ok {
		a := make(map[string]string, len(m.Annotations)-1)
		for k, v := range m.Annotations {
			if k != lastApplied {
				a[k] = v
			}
		}
		if len(a) == 0 {
			a = nil
		}
		m.Annotations = a
	}
}

func slimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: p.ObjectMeta,
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			HostNetwork:        p.Spec.HostNetwork,
			ServiceAccountName: p.Spec.ServiceAccountName,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	slimMeta(&out.ObjectMeta)
	for _, c := range p.Spec.InitContainers {
		// Sidecars (init containers that keep running) serve ports too.
		out.Spec.InitContainers = append(out.Spec.InitContainers, corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy})
	}
	for _, c := range p.Spec.Containers {
		out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	terminated := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	if !p.Spec.HostNetwork && !terminated {
		out.Status.PodIP, out.Status.PodIPs = p.Status.PodIP, p.Status.PodIPs
	}
	out.Status.HostIP, out.Status.HostIPs = p.Status.HostIP, p.Status.HostIPs
	return out
}
