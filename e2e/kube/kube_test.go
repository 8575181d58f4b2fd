package kube

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/netns"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/clientcmd"
)

func TestStart(t *testing.T) {
	c := Start(t, Options{Namespaces: []string{"pets"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The kubeconfig works on its own.
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != c.Server {
		t.Errorf("kubeconfig server %s, want %s", cfg.Host, c.Server)
	}
	v, err := c.Client.Discovery().ServerVersion()
	if err != nil || v.GitVersion != Version {
		t.Fatalf("server version %v, %v; want %s", v, err, Version)
	}

	// A pod can be created (its ServiceAccount exists) and given an
	// address through the status subresource.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "pets", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}
	pod, err = c.Client.CoreV1().Pods("pets").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status.PodIP, pod.Status.PodIPs = "10.244.2.7", []corev1.PodIP{{IP: "10.244.2.7"}}
	if pod, err = c.Client.CoreV1().Pods("pets").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil || pod.Status.PodIP != "10.244.2.7" {
		t.Fatalf("update status: %v", err)
	}

	// The CRDs are served.
	cnp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "c", "namespace": "pets"},
		"spec":     map[string]any{"endpointSelector": map[string]any{}, "ingress": []any{map[string]any{}}},
	}}
	gvr := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	if _, err := c.Dynamic.Resource(gvr).Namespace("pets").Create(ctx, cnp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cnl := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "acn.azure.com/v1alpha1", "kind": "ContainerNetworkLog",
		"metadata": map[string]any{"name": "all"},
		"spec":     map[string]any{"includefilters": []any{map[string]any{"name": "x"}}},
	}}
	gvr = schema.GroupVersionResource{Group: "acn.azure.com", Version: "v1alpha1", Resource: "containernetworklogs"}
	if _, err := c.Dynamic.Resource(gvr).Create(ctx, cnl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestStartInNetNS runs the control plane inside a network namespace: the
// kubeconfig serves processes in there, Config serves this process.
func TestStartInNetNS(t *testing.T) {
	netns.RequireRoot(t)
	node := netns.New(t, "kube")
	c := Start(t, Options{NetNS: node.Path})
	if _, err := c.Client.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	// Inside the namespace the API answers on 127.0.0.1; outside, that
	// address is someone else's (or no one's).
	out, err := node.Exec(10*time.Second, "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", c.Server+"/readyz")
	if err != nil {
		t.Fatalf("curl inside: %v %s", err, out)
	}
	if out != "200" {
		t.Errorf("curl /readyz inside the namespace: %s", out)
	}
	if conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.Server, "https://"), time.Second); err == nil {
		conn.Close()
		t.Logf("note: something in this process's namespace also listens on %s", c.Server)
	}
}
