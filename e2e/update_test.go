package e2e

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/node"
)

// Replacing a policy never opens a window: during 100 replacements that
// alternate between two policies, a flow neither allows never passes and a
// flow both allow never fails. Once with NetworkPolicies, once with
// CiliumNetworkPolicies whose second version adds a deny.
func TestPolicyReplacementUnderTraffic(t *testing.T) {
	t.Run("NetworkPolicy", func(t *testing.T) { replaceUnderTraffic(t, npA, npB) })
	t.Run("CiliumNetworkPolicy", func(t *testing.T) { replaceUnderTraffic(t, cnpA, cnpB) })
}

const (
	cnpA = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`
	cnpB = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "8000", endPort: 9090, protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`
	npA = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
`
	npB = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
  - from: [{podSelector: {matchLabels: {app: other}}}]
    ports: [{port: 9090}]
`
)

func replaceUnderTraffic(t *testing.T, a, b string) {
	c := newCluster(t, node.Options{})
	c.n.Apply("10.yaml", a)
	ctx, cancel := context.WithCancel(context.Background())
	var forbiddenPassed, allowedFailed, probes atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // neither policy lets other reach 8080
		defer wg.Done()
		for ctx.Err() == nil {
			probes.Add(1)
			if c.other.NS.Probe("tcp", c.web.Addr(8080), 150*time.Millisecond) == nil {
				forbiddenPassed.Add(1)
			}
		}
	}()
	go func() { // both let client reach 8080
		defer wg.Done()
		for ctx.Err() == nil {
			probes.Add(1)
			if err := c.client.NS.Probe("tcp", c.web.Addr(8080), 2*time.Second); err != nil {
				allowedFailed.Add(1)
				t.Logf("allowed probe failed: %v", err)
			}
		}
	}()
	for i := range 100 {
		if i%2 == 0 {
			c.n.Apply("10.yaml", b)
		} else {
			c.n.Apply("10.yaml", a)
		}
	}
	cancel()
	wg.Wait()
	t.Logf("%d probes during 100 replacements", probes.Load())
	if n := forbiddenPassed.Load(); n != 0 {
		t.Errorf("a flow neither policy allows passed %d times", n)
	}
	if n := allowedFailed.Load(); n != 0 {
		t.Errorf("a flow both policies allow failed %d times", n)
	}
	if probes.Load() < 100 {
		t.Errorf("only %d probes ran", probes.Load())
	}
}
