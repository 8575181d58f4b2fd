package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/netns"
	"github.com/aegis-cni/aegis/e2e/node"
)

// The AKS workshop's pet store (shared/fixtures/workshop): store-front
// 8080, order-service 3000, product-service 3002, rabbitmq 5672/15672 in
// namespace pets, kube-dns in kube-system, a user on the internet
// (192.0.2.10) reaching store-front through the load balancer, and an
// internet service (203.0.113.10:443) order-service calls.
//
// The workshop's first policy (acns-network-policy.yaml) is a set of
// CiliumNetworkPolicies; until those are supported this test applies the
// equivalent Kubernetes NetworkPolicies (fromEntities world = ipBlock
// 0.0.0.0/0, which selects everything outside the cluster and no pod).
// `make demo` runs this test and prints its narration.

const petStorePolicy = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-rabbitmq-traffic, namespace: pets}
spec:
  podSelector: {matchLabels: {app: rabbitmq}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: order-service}}}]
    ports: [{port: 5672, protocol: TCP}, {port: 15672, protocol: TCP}]
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-order-service-traffic, namespace: pets}
spec:
  podSelector: {matchLabels: {app: order-service}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: store-front}}}]
    ports: [{port: 3000, protocol: TCP}]
  egress:
  - to: [{podSelector: {matchLabels: {app: rabbitmq}}}]
    ports: [{port: 5672, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-product-service-traffic, namespace: pets}
spec:
  podSelector: {matchLabels: {app: product-service}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: store-front}}}]
    ports: [{port: 3002, protocol: TCP}]
  egress:
  - to: [{podSelector: {matchLabels: {app: ai-service}}}]
    ports: [{port: 5001, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-store-front-traffic, namespace: pets}
spec:
  podSelector: {matchLabels: {app: store-front}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
    ports: [{port: 8080, protocol: TCP}]
  egress:
  - to: [{podSelector: {matchLabels: {app: order-service}}}]
    ports: [{port: 3000, protocol: TCP}]
  - to: [{podSelector: {matchLabels: {app: product-service}}}]
    ports: [{port: 3002, protocol: TCP}]
`

// narrator prints to stdout when AEGIS_DEMO is set (make demo), to the
// test log otherwise.
type narrator struct{ t *testing.T }

func (n narrator) say(format string, args ...any) {
	if os.Getenv("AEGIS_DEMO") != "" {
		fmt.Printf(format+"\n", args...)
		return
	}
	n.t.Logf(format, args...)
}

type flowCheck struct {
	from    string
	ns      *netns.NS
	to      string
	addr    string
	allowed bool
}

func (n narrator) check(t *testing.T, checks []flowCheck) {
	t.Helper()
	for _, c := range checks {
		err := c.ns.Probe("tcp", c.addr, 800*time.Millisecond)
		got := "allowed"
		if err != nil {
			got = "blocked"
		}
		want := "blocked"
		if c.allowed {
			want = "allowed"
		}
		mark := "ok "
		if got != want {
			mark = "BAD"
			t.Errorf("%s -> %s (%s): %s, want %s (%v)", c.from, c.to, c.addr, got, want, err)
		}
		n.say("  [%s] %-16s -> %-28s %s", mark, c.from, c.to+" "+c.addr, strings.ToUpper(got))
	}
}

func TestPetStore(t *testing.T) {
	say := narrator{t}
	n := node.New(t, node.Options{})
	say.say("== Aegis demo: a node built from network namespaces, pods wired by ptp + aegis-ipam + aegis-cni")
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("pets", nil)+"---\n"+node.NamespaceManifest("kube-system", nil))
	pods := map[string]string{"store-front": "pets", "order-service": "pets", "product-service": "pets", "rabbitmq": "pets", "kube-dns": "kube-system"}
	var manifests []string
	for name, ns := range pods {
		labels := map[string]string{"app": name}
		if name == "kube-dns" {
			labels = map[string]string{"k8s-app": "kube-dns"}
		}
		manifests = append(manifests, node.PodManifest(ns, name, labels))
	}
	n.Apply("01-pods.yaml", strings.Join(manifests, "---\n"))
	n.StartDaemon()
	say.say("aegisd is running (bpffs %s); creating the pet-store pods through the CNI chain", n.BPFRoot)

	p := map[string]*node.Pod{}
	for _, name := range []string{"store-front", "order-service", "product-service", "rabbitmq", "kube-dns"} {
		p[name] = n.NewPod(pods[name], name, nil)
		say.say("  pod %-16s %s", pods[name]+"/"+name, p[name].IP)
	}
	serve := map[string][]int{"store-front": {8080}, "order-service": {3000}, "product-service": {3002}, "rabbitmq": {5672, 15672}}
	for name, ports := range serve {
		for _, port := range ports {
			p[name].NS.Serve(t, "tcp", p[name].Addr(port), name+":")
		}
	}
	user := n.AddOutside(t, "192.0.2.10", "203.0.113.10")
	user.NS.Serve(t, "tcp", "203.0.113.10:443", "internet:")
	say.say("  user on the internet 192.0.2.10, an internet service at 203.0.113.10:443")

	say.say("\n== Before any policy: every flow passes")
	say.check(t, []flowCheck{
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", true},
		{"order-service", p["order-service"].NS, "product-service", p["product-service"].Addr(3002), true},
		{"rabbitmq", p["rabbitmq"].NS, "internet", "203.0.113.10:443", true},
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), true},
	})

	n.Apply("10-pets-policy.yaml", petStorePolicy)
	say.say("\n== After the workshop's acns-network-policy (as NetworkPolicies): only the pet store's own flows")
	say.check(t, []flowCheck{
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), true},
		{"store-front", p["store-front"].NS, "order-service", p["order-service"].Addr(3000), true},
		{"store-front", p["store-front"].NS, "product-service", p["product-service"].Addr(3002), true},
		{"order-service", p["order-service"].NS, "rabbitmq", p["rabbitmq"].Addr(5672), true},
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", false},
		{"order-service", p["order-service"].NS, "product-service", p["product-service"].Addr(3002), false},
		{"rabbitmq", p["rabbitmq"].NS, "internet", "203.0.113.10:443", false},
		{"user", user.NS, "order-service", p["order-service"].Addr(3000), false},
		{"product-service", p["product-service"].NS, "rabbitmq", p["rabbitmq"].Addr(15672), false},
	})

	if os.Getenv("AEGIS_DEMO") != "" {
		for _, args := range [][]string{{"endpoint", "list"}, {"policy", "get", "--pod", "pets/order-service"}, {"bpf", "counters"}} {
			out, err := n.CLI(args...)
			if err != nil {
				t.Errorf("aegis %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			say.say("\n$ aegis %s\n%s", strings.Join(args, " "), strings.TrimRight(out, "\n"))
		}
	}

	n.Remove("10-pets-policy.yaml")
	say.say("\n== Policy removed: traffic flows again")
	say.check(t, []flowCheck{
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", true},
	})
}
