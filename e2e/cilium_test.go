package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/node"
)

const catFromDog = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cat-from-dog, namespace: pets}
spec:
  endpointSelector: {matchLabels: {app: cat}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: dog}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

// TestCiliumPolicyBadInput: a Cilium policy that does not parse or
// validate is reported with its file, object and field, and the last good
// version stays in force; a 10 MB policy is handled.
func TestCiliumPolicyBadInput(t *testing.T) {
	n := node.New(t, node.Options{})
	n.Apply("00-ns.yaml", node.NamespaceManifest("pets", nil))
	n.Apply("01-pods.yaml", node.PodManifest("pets", "cat", map[string]string{"app": "cat"})+"---\n"+
		node.PodManifest("pets", "dog", map[string]string{"app": "dog"})+"---\n"+
		node.PodManifest("pets", "bird", map[string]string{"app": "bird"}))
	n.StartDaemon()
	cat := n.NewPod("pets", "cat", nil)
	dog := n.NewPod("pets", "dog", nil)
	bird := n.NewPod("pets", "bird", nil)
	cat.NS.Serve(t, "tcp", cat.Addr(8080), "cat:")

	n.Apply("cnp.yaml", catFromDog)
	dog.NS.ExpectAllowed(t, "tcp", cat.Addr(8080))
	bird.NS.ExpectBlocked(t, "tcp", cat.Addr(8080))

	bad := []struct{ name, yaml, want string }{
		{"unknown field", strings.Replace(catFromDog, "fromEndpoints", "fromEndpointz", 1), "spec.ingress[0].fromEndpointz: unknown field"},
		{"wrong type", strings.Replace(catFromDog, `port: "8080"`, `port: 8080`, 1), "wrong type"},
		{"invalid CIDR", strings.Replace(catFromDog, "fromEndpoints: [{matchLabels: {app: dog}}]", "fromCIDR: [10.0.0.0/40]", 1), "spec.ingress[0].fromCIDR[0]: invalid CIDR"},
		{"selector that cannot parse", strings.Replace(catFromDog, "{matchLabels: {app: dog}}", "{matchExpressions: [{key: app, operator: Is}]}", 1), "matchExpressions[0].operator"},
		{"not YAML", "spec: [unclosed", "invalid YAML"},
	}
	for _, b := range bad {
		writeManifest(t, n, "cnp.yaml", b.yaml)
		waitRejected(t, n, b.want)
		// The last good version is still what the datapath enforces.
		dog.NS.ExpectAllowed(t, "tcp", cat.Addr(8080))
		bird.NS.ExpectBlocked(t, "tcp", cat.Addr(8080))
	}

	// 10 MB of policy: ninety thousand rules naming pods that do not exist,
	// then the rule that matters. It is taken in full.
	var big strings.Builder
	big.WriteString("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big, namespace: pets}\nspec:\n  endpointSelector: {matchLabels: {app: cat}}\n  ingress:\n")
	for i := 0; big.Len() < 10<<20; i++ {
		fmt.Fprintf(&big, "  - fromEndpoints: [{matchLabels: {app: absent-%d}}]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]\n", i, 1+i%65535)
	}
	big.WriteString("  - fromEndpoints: [{matchLabels: {app: bird}}]\n    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]\n")
	start := time.Now()
	n.Apply("cnp.yaml", big.String())
	t.Logf("a %d-byte policy applied in %v", big.Len(), time.Since(start))
	bird.NS.ExpectAllowed(t, "tcp", cat.Addr(8080))
	dog.NS.ExpectBlocked(t, "tcp", cat.Addr(8080))
	if st := n.Status(); len(st.Source.Rejected) != 0 {
		t.Errorf("rejected: %v", st.Source.Rejected)
	}
}

func writeManifest(t *testing.T, n *node.Node, file, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.Manifests, file), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitRejected waits until the daemon reports a rejection saying want.
func waitRejected(t *testing.T, n *node.Node, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		got = n.Status().Source.Rejected
		for _, r := range got {
			if strings.Contains(r, want) && strings.Contains(r, "cnp.yaml") {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no rejection saying %q (file cnp.yaml) within 10s: %q", want, got)
}
