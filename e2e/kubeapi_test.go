package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/aegis-cni/aegis/e2e/kube"
	"github.com/aegis-cni/aegis/e2e/node"
)

// The same daemon with the real Kubernetes API (kube-apiserver v1.37.2 and
// etcd, in the node's namespace) as its source instead of the directory.
func TestNetworkPolicyKubeAPI(t *testing.T) {
	n := node.New(t, node.Options{})
	kc := kube.Start(t, kube.Options{NetNS: n.NS.Path, Namespaces: []string{"prod", "dev"}})
	ctx := context.Background()
	label := func(ns string, l map[string]string) {
		nsObj, err := kc.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nsObj.Labels = l
		if _, err := kc.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	label("prod", map[string]string{"team": "a"})
	label("dev", map[string]string{"team": "b"})
	pod := func(ns, name, app string) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{NodeName: "e2e-node", Containers: []corev1.Container{{Name: "c", Image: "scratch"}}}}
		if _, err := kc.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("prod", "web", "web")
	pod("prod", "client", "client")
	pod("dev", "devclient", "client")
	n.Kubeconfig = kc.Kubeconfig
	n.StartDaemon()
	if st := n.Status(); st.Source.Kind != "kubernetes" {
		t.Fatalf("source %+v", st.Source)
	}
	web := n.NewPod("prod", "web", nil)
	client := n.NewPod("prod", "client", nil)
	devclient := n.NewPod("dev", "devclient", nil)
	web.NS.Serve(t, "tcp", web.Addr(8080), "web:")
	client.NS.ExpectAllowed(t, "tcp", web.Addr(8080))

	nps := kc.Client.NetworkingV1().NetworkPolicies("prod")
	port := intstr.FromInt32(8080)
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-allow-dev", Namespace: "prod"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
	n.Change(func() error { _, err := nps.Create(ctx, np, metav1.CreateOptions{}); return err })
	client.NS.ExpectBlocked(t, "tcp", web.Addr(8080))
	devclient.NS.ExpectAllowed(t, "tcp", web.Addr(8080))

	// kubectl describe shows whether the policy is in force.
	deadline := time.Now().Add(10 * time.Second)
	var reasons []string
	for time.Now().Before(deadline) {
		evs, err := kc.Client.CoreV1().Events("prod").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=web-allow-dev"})
		if err != nil {
			t.Fatal(err)
		}
		reasons = reasons[:0]
		for _, e := range evs.Items {
			reasons = append(reasons, e.Reason)
		}
		if strings.Contains(strings.Join(reasons, ","), "PolicyApplied") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(strings.Join(reasons, ","), "PolicyApplied") {
		t.Errorf("no PolicyApplied event on the policy: %v", reasons)
	}

	n.Change(func() error { return nps.Delete(ctx, "web-allow-dev", metav1.DeleteOptions{}) })
	client.NS.ExpectAllowed(t, "tcp", web.Addr(8080))
}
