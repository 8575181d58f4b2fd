package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/aegis-cni/aegis/e2e/node"
)

// A pod's traffic to a ClusterIP leaves it before kube-proxy translates
// the address, so Aegis judges the service by the pods behind it.
// iptables DNAT in the node namespace stands in for kube-proxy.
func TestClusterIPJudgedByBackends(t *testing.T) {
	c := newCluster(t, node.Options{})
	const clusterIP = "10.96.0.10"
	c.n.NS.MustExec(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-d", clusterIP+"/32", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", c.web.Addr(8080))
	c.n.Apply("12-egress.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress, namespace: prod}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [client, other]}]}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
`)
	// Without the Service the address is just somewhere in the world.
	c.client.NS.ExpectBlocked(t, "tcp", clusterIP+":80")
	c.client.NS.ExpectAllowed(t, "tcp", c.web.Addr(8080))

	service := func(endpoints ...string) string {
		var eps strings.Builder
		for _, ip := range endpoints {
			fmt.Fprintf(&eps, "- addresses: [%s]\n  conditions: {ready: true}\n", ip)
		}
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  clusterIP: %s
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: prod, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
%s`, clusterIP, eps.String())
	}
	c.n.Apply("20-service.yaml", service(c.web.IP.String()))
	c.client.NS.ExpectAllowed(t, "tcp", clusterIP+":80")

	// A backend the policy does not allow closes the service port: kube-
	// proxy could send the connection there.
	c.n.Apply("20-service.yaml", service(c.web.IP.String(), c.other.IP.String()))
	c.client.NS.ExpectBlocked(t, "tcp", clusterIP+":80")
}
