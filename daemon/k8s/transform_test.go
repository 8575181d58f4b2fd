package k8s

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"
)

func TestSlim(t *testing.T) {
	podWith := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: "web", Namespace: "pets", Labels: map[string]string{"app": "web"},
				Annotations:   map[string]string{lastApplied: "{...}", "keep": "me"},
				ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
			},
			Spec: corev1.PodSpec{
				NodeName: "node-a", ServiceAccountName: "web",
				Containers: []corev1.Container{{Name: "c", Image: "x", Env: []corev1.EnvVar{{Name: "A"}}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
			},
			Status: corev1.PodStatus{
				Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}, HostIP: "192.0.2.10",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady}},
			},
		}
		if mut != nil {
			mut(p)
		}
		return p
	}
	slimmed := func(p *corev1.Pod) *corev1.Pod {
		out, err := slim(p)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := slim(out)
		if again.(*corev1.Pod).Name != p.Name {
			t.Fatal("slim is not idempotent")
		}
		return out.(*corev1.Pod)
	}

	p := slimmed(podWith(nil))
	if p.Kind != "Pod" || p.APIVersion != "v1" {
		t.Errorf("type meta: %+v", p.TypeMeta)
	}
	if p.ManagedFields != nil || p.Annotations[lastApplied] != "" || p.Annotations["keep"] != "me" {
		t.Errorf("metadata: %+v", p.ObjectMeta)
	}
	if c := p.Spec.Containers[0]; c.Name != "c" || c.Image != "" || c.Env != nil || c.Ports[0].Name != "http" {
		t.Errorf("container: %+v", c)
	}
	if p.Spec.NodeName != "node-a" || p.Spec.ServiceAccountName != "web" || p.Status.PodIP != "10.244.1.5" || p.Status.HostIP != "192.0.2.10" || p.Status.Conditions != nil {
		t.Errorf("spec/status: %+v %+v", p.Spec, p.Status)
	}
	// The node's address, or one a finished pod no longer holds, is no
	// pod's identity.
	if p := slimmed(podWith(func(p *corev1.Pod) { p.Spec.HostNetwork = true; p.Status.PodIP = "192.0.2.10" })); p.Status.PodIP != "" || p.Status.PodIPs != nil || !p.Spec.HostNetwork {
		t.Errorf("host-network pod keeps its address: %+v", p.Status)
	}
	if p := slimmed(podWith(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })); p.Status.PodIP != "" {
		t.Errorf("failed pod keeps its address: %+v", p.Status)
	}

	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "c", "annotations": map[string]any{lastApplied: "{}"}, "managedFields": []any{map[string]any{}}},
	}}
	if _, err := slim(u); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.Object["metadata"].(map[string]any)["managedFields"]; ok || u.GetAnnotations() != nil {
		t.Errorf("unstructured metadata: %v", u.Object["metadata"])
	}

	tomb := cache.DeletedFinalStateUnknown{Key: "pets/web", Obj: podWith(nil)}
	if out, err := slim(tomb); err != nil || out.(cache.DeletedFinalStateUnknown).Key != "pets/web" {
		t.Errorf("tombstone: %v %v", out, err)
	}
}

func TestFingerprintIgnoresVersionAndStatus(t *testing.T) {
	u := func(rv, status, spec string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "acn.azure.com/v1alpha1", "kind": "ContainerNetworkLog",
			"metadata": map[string]any{"name": "all", "resourceVersion": rv},
			"spec":     map[string]any{"x": spec}, "status": map[string]any{"state": status},
		}}
	}
	a, _ := fingerprint(u("1", "CONFIGURED", "a"))
	b, _ := fingerprint(u("2", "FAILED", "a"))
	c, _ := fingerprint(u("3", "FAILED", "b"))
	if a != b || a == c {
		t.Errorf("fingerprints: same content %v, changed spec %v", a == b, a != c)
	}
	ns := func(rv string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "pets", ResourceVersion: rv}}
	}
	x, _ := fingerprint(ns("1"))
	y, _ := fingerprint(ns("2"))
	if x != y {
		t.Error("resourceVersion changes the fingerprint")
	}
}
