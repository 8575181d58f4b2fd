package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/node"
)

// BenchmarkPolicyToEnforcement measures the time from writing a policy
// change into the manifest directory to the entry being in the datapath's
// policy map, for a one-rule policy and inside a 10,000-rule one, written
// as a NetworkPolicy and as a CiliumNetworkPolicy.
func BenchmarkPolicyToEnforcement(b *testing.B) {
	n := node.New(b, node.Options{})
	n.Apply("00-pods.yaml", node.NamespaceManifest("bench", nil)+"---\n"+
		node.PodManifest("bench", "client", map[string]string{"app": "client"})+"---\n"+
		node.PodManifest("bench", "server", map[string]string{"app": "server"}))
	n.StartDaemon()
	n.NewPod("bench", "client", nil)
	n.NewPod("bench", "server", nil)
	eps, err := n.Client().Endpoints(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	ids := map[string]uint32{}
	for _, ep := range eps {
		ids[ep.PodName] = ep.Identity
	}
	m, err := bpf.OpenMaps(bpf.Paths{Root: n.BPFRoot})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.ResetTimer()
	for range b.N {
		var report []string
		for _, kind := range []string{"NetworkPolicy", "CiliumNetworkPolicy"} {
			for _, extra := range []int{0, 10000} {
				var lat []time.Duration
				for i := range 30 {
					port := 20000 + i
					body := strings.Replace(bigPolicy(extra), "ports: [{port: 5001}, {port: 5201}, {port: 5002}]", fmt.Sprintf("ports: [{port: %d}]", port), 1)
					if kind == "CiliumNetworkPolicy" {
						body = bigCiliumPolicy(extra, port)
					}
					want := policy.Key{Local: ids["server"], Remote: ids["client"], Dir: policy.Ingress, Proto: policy.ProtoTCP, Port: uint16(port), PortPrefixLen: 16}
					path := filepath.Join(n.Manifests, "10-big.yaml")
					tmp := path + ".tmp~"
					if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					if err := os.Rename(tmp, path); err != nil {
						b.Fatal(err)
					}
					deadline := start.Add(10 * time.Second)
					for {
						if _, ok := m.LookupPolicy(want); ok {
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("policy change not enforced within 10s (%d extra rules)", extra)
						}
						time.Sleep(200 * time.Microsecond)
					}
					lat = append(lat, time.Since(start))
				}
				p50, p99 := percentile(lat, 0.5), percentile(lat, 0.99)
				b.ReportMetric(float64(p99.Microseconds())/1000, fmt.Sprintf("p99_ms_%s_%drules", kind, extra+1))
				line := fmt.Sprintf("policy change -> enforcement, %-19s %5d rules: p50 %s p99 %s", kind, extra+1, p50.Round(time.Millisecond/10), p99.Round(time.Millisecond/10))
				if extra == 0 {
					verdict := "meets"
					if p99 > 50*time.Millisecond {
						verdict = "ABOVE"
					}
					line += " (target p99 <= 50ms: " + verdict + ")"
				}
				report = append(report, line)
			}
		}
		fmt.Fprintln(os.Stdout, "\n"+strings.Join(report, "\n"))
	}
}

// bigCiliumPolicy is bigPolicy as a CiliumNetworkPolicy allowing the
// client on port, plus n fromCIDR /32 rules.
func bigCiliumPolicy(n, port int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: big, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, port)
	for i := range n {
		fmt.Fprintf(&b, "  - fromCIDR: [198.51.%d.%d/32]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]\n", 100+i/250, i%250+1, 10000+i%5000)
	}
	return b.String()
}
