package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/e2e/node"
)

// fqdnNode is the pet store with the DNS world, policy from the manifest
// directory.
type fqdnNode struct {
	n     *node.Node
	pods  map[string]*node.Pod
	world *dnsWorld
}

func newFQDNNode(t *testing.T, daemonArgs ...string) *fqdnNode {
	n := node.New(t, node.Options{})
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("pets", nil)+"---\n"+node.NamespaceManifest("kube-system", nil))
	var manifests []string
	for name, ns := range petStorePods {
		m := node.PodManifest(ns, name, petStoreLabels(name))
		if name == "order-service" {
			// A Deployment's pod, as on AKS: flows name the Deployment as
			// the pod's workload.
			m = strings.Replace(m, "  labels:\n", "  ownerReferences:\n  - {apiVersion: apps/v1, kind: ReplicaSet, name: order-service-5d8f9c, uid: 3b1f, controller: true}\n  labels:\n    pod-template-hash: 5d8f9c\n", 1)
		}
		manifests = append(manifests, m)
	}
	n.Apply("01-pods.yaml", strings.Join(manifests, "---\n"))
	n.StartDaemon(daemonArgs...)
	f := &fqdnNode{n: n, pods: map[string]*node.Pod{}}
	for _, name := range []string{"store-front", "order-service", "product-service", "rabbitmq", "kube-dns"} {
		f.pods[name] = n.NewPod(petStorePods[name], name, nil)
	}
	f.world = newDNSWorld(t, n, f.pods["kube-dns"], f.pods["rabbitmq"].IP.String())
	return f
}

// TestFQDNWorkshop: the workshop's FQDN policy for order-service
// (acns-network-policy-fqdn.yaml over acns-network-policy.yaml) against
// real resolvers.
func TestFQDNWorkshop(t *testing.T) {
	f := newFQDNNode(t)
	order := f.pods["order-service"].NS
	dnsIP := f.world.kubeDNS
	say := narrator{t}
	say.say("\n== FQDN filtering: CoreDNS v1.15.0 as kube-dns at %s, unbound as the internet's resolver (test zones on TEST-NET)", dnsIP)

	// Before policy everything resolves and connects.
	if ips, _, err := resolve(order, dnsIP, "udp", "www.bing.com"); err != nil || len(ips) == 0 {
		t.Fatalf("before policy: www.bing.com: %v %v", ips, err)
	}
	say.say("  before policy: order-service resolves www.bing.com")
	// The node's policy routing for the proxies comes with the first
	// policy that redirects, not before.
	if rules := proxyRules(t, f.n); rules != "" {
		t.Errorf("a proxy routing rule before any DNS rule: %s", rules)
	}
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy.yaml"))
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy-fqdn.yaml"))
	if rules := proxyRules(t, f.n); !strings.Contains(rules, "lookup 2005") {
		t.Errorf("no proxy routing rule with DNS rules in force: %q", rules)
	}
	say.say("\n== $ kubectl apply -n pets -f acns-network-policy.yaml -f acns-network-policy-fqdn.yaml")

	// www.microsoft.com resolves (through the search list, as curl in the
	// pod does) and 443 connects.
	ips, codes, err := resolve(order, dnsIP, "udp", "www.microsoft.com")
	if err != nil || !slices.Contains(ips, mustAddr(msAddr)) {
		t.Fatalf("www.microsoft.com: %v (%v) %v", ips, codes, err)
	}
	t.Logf("www.microsoft.com: %v after %v", ips, codes)
	say.say("  order-service: www.microsoft.com resolves to %v (answers through the search list: %v)", ips, codes)
	if c, err := connect(order, msAddr+":443", 2*time.Second); err != nil {
		t.Errorf("connect to www.microsoft.com:443: %v", err)
	} else {
		say.say("  [ok ] order-service    -> www.microsoft.com:443 ALLOWED (learned from the answer)")
		c.Close()
	}
	// The connection's flow names the address by the name the pod asked
	// for, and the pod's workload: `hubble observe --to-fqdn` finds it.
	checkNamedFlow(t, f.n, msAddr)
	// Only 443: port 80 of the same host stays closed.
	if err := order.Probe("tcp", msAddr+":80", 500*time.Millisecond); err == nil {
		t.Error("www.microsoft.com:80 connected; the policy allows 443 only")
	}
	// www.bing.com is refused at every step of the search list.
	if ips, codes, err := resolve(order, dnsIP, "udp", "www.bing.com"); err == nil || len(ips) != 0 || !slices.Contains(codes, "REFUSED") {
		t.Errorf("www.bing.com: %v, %v, %v; want REFUSED", ips, codes, err)
	} else {
		say.say("  [ok ] order-service: www.bing.com gets %v from the DNS proxy", codes)
	}
	// Addresses not learned through DNS stay blocked, even by IP.
	for _, a := range []string{strayAddr, bingAddr, msLearnAddr} {
		if err := order.Probe("tcp", a+":443", 500*time.Millisecond); err == nil {
			t.Errorf("%s:443 connected without a DNS answer naming it", a)
		} else {
			say.say("  [ok ] order-service    -> %-18s BLOCKED (no DNS answer named it)", a+":443")
		}
	}
	// A CNAME chain: alias.microsoft.com -> edge.bing.com -> an address;
	// the chain starts at a name the policy selects, so it is learned.
	if ips, _, err := resolve(order, dnsIP, "udp", "alias.microsoft.com."); err != nil || !slices.Contains(ips, mustAddr(msLearnAddr)) {
		t.Errorf("alias.microsoft.com: %v %v", ips, err)
	} else if err := order.Probe("tcp", msLearnAddr+":443", 2*time.Second); err != nil {
		t.Errorf("connect to the CNAME target: %v", err)
	}
	// Cluster names the rules allow resolve; rabbitmq stays reachable.
	if ips, _, err := resolve(order, dnsIP, "udp", "rabbitmq.pets.svc.cluster.local."); err != nil || len(ips) == 0 {
		t.Errorf("rabbitmq.pets.svc.cluster.local: %v %v", ips, err)
	}

	// The cache lists what was learned.
	out, err := f.n.CLI("fqdn", "cache", "list", "-o", "json")
	if err != nil {
		t.Fatalf("aegis fqdn cache list: %v\n%s", err, out)
	}
	var entries []api.FQDNEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	found := false
	for _, e := range entries {
		if e.Name == "www.microsoft.com." && e.IP == msAddr && slices.Contains(e.Selectors, "*.microsoft.com") {
			found = true
		}
	}
	if !found {
		t.Errorf("www.microsoft.com -> %s not in the cache: %+v", msAddr, entries)
	}
	if out, err := f.n.CLI("fqdn", "cache", "list"); err != nil || !strings.Contains(out, "www.microsoft.com.") {
		t.Errorf("table output: %v\n%s", err, out)
	} else {
		say.say("\n$ aegis fqdn cache list\n%s", strings.TrimRight(out, "\n"))
	}

	// policy trace understands names and DNS rules.
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--src", "pets/order-service", "--dst", "www.microsoft.com", "--port", "443"}, []string{"FORWARDED", "toFQDNs", "allow-order-service-traffic"}},
		{[]string{"--src", "pets/order-service", "--dst", msAddr, "--port", "443"}, []string{"FORWARDED", "toFQDNs"}},
		{[]string{"--src", "pets/order-service", "--dst", "api.github.com", "--port", "443"}, []string{"DROPPED", "no address learned"}},
		{[]string{"--src", "pets/order-service", "--dst", "docs.microsoft.com", "--port", "443"}, []string{"DROPPED", `toFQDNs selector "*.microsoft.com"`}},
		{[]string{"--src", "pets/order-service", "--dst", dnsIP, "--proto", "UDP", "--port", "53", "--dns-name", "www.bing.com"}, []string{"DROPPED", "REFUSED"}},
		{[]string{"--src", "pets/order-service", "--dst", dnsIP, "--proto", "UDP", "--port", "53", "--dns-name", "www.microsoft.com"}, []string{"FORWARDED", `matches "*.microsoft.com"`}},
	} {
		out, err := f.n.CLI(append([]string{"policy", "trace"}, tc.args...)...)
		if err != nil {
			t.Errorf("aegis policy trace %v: %v\n%s", tc.args, err, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("aegis policy trace %v: no %q in\n%s", tc.args, w, out)
			}
		}
	}

	// DNS flows: the refused query is a DROPPED L7 flow with its name,
	// the allowed one a FORWARDED one with its answer.
	checkDNSFlows(t, f.n)
	if out, err := f.n.CLI("observe", "--type", "l7", "--dns-query", "bing", "--last", "4"); err != nil {
		t.Errorf("aegis observe --type l7: %v\n%s", err, out)
	} else {
		say.say("\n$ aegis observe --type l7 --dns-query bing --last 4\n%s", strings.TrimRight(out, "\n"))
	}
	metrics := scrapeMetrics(t, f.n)
	for _, want := range []string{
		`hubble_dns_queries_total{destination_namespace="kube-system",destination_pod="kube-dns",ips_returned="0",qtypes="A",rcode="Refused",source_namespace="pets",source_pod="order-service"}`,
		`hubble_dns_responses_total{destination_namespace="pets",destination_pod="order-service",ips_returned="1",qtypes="A",rcode="No Error",source_namespace="kube-system",source_pod="kube-dns"}`,
		`hubble_dns_response_types_total{`,
		`hubble_flows_processed_total{destination_namespace="kube-system",destination_pod="kube-dns",source_namespace="pets",source_pod="order-service",subtype="dns",type="L7",verdict="DROPPED"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// aegis fqdn cache clean closes what was learned.
	if out, err := f.n.CLI("fqdn", "cache", "clean"); err != nil || !strings.Contains(out, "removed") {
		t.Errorf("aegis fqdn cache clean: %v\n%s", err, out)
	}
	if err := order.Probe("tcp", msAddr+":443", 500*time.Millisecond); err == nil {
		t.Error("www.microsoft.com:443 still connects after the cache was cleaned")
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// checkNamedFlow: a flow from order-service to addr:443 found by the FQDN
// filter carries the DNS name and order-service's Deployment.
func checkNamedFlow(t *testing.T, n *node.Node, addr string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(3 * time.Second) // events are read every 50 ms
	for time.Now().Before(deadline) {
		out, err := n.CLI("observe", "-o", "json", "--last", "100", "--to-fqdn", "*.microsoft.com", "--from-workload", "Deployment/order-service")
		if err != nil {
			t.Fatalf("aegis observe --to-fqdn: %v\n%s", err, out)
		}
		last = out
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var fl flow.Flow
			if line == "" || protojson.Unmarshal([]byte(line), &fl) != nil {
				continue
			}
			w := fl.GetSource().GetWorkloads()
			if fl.GetIP().GetDestination() == addr && fl.GetL4().GetTCP().GetDestinationPort() == 443 &&
				slices.Contains(fl.GetDestinationNames(), "www.microsoft.com") &&
				len(w) == 1 && w[0].GetName() == "order-service" && w[0].GetKind() == "Deployment" {
				// Another kind of workload of that name selects nothing.
				if out, err := n.CLI("observe", "-o", "json", "--last", "100", "--from-workload", "StatefulSet/order-service"); err != nil || strings.TrimSpace(out) != "" {
					t.Errorf("--from-workload StatefulSet/order-service: %v\n%s", err, out)
				}
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no flow to %s:443 named www.microsoft.com from the order-service Deployment:\n%s", addr, last)
}

func checkDNSFlows(t *testing.T, n *node.Node) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	var refused, answered bool
	for time.Now().Before(deadline) && !(refused && answered) {
		out, err := n.CLI("observe", "-o", "json", "--last", "500", "--from-pod", "pets/order-service")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out)
		}
		out2, err := n.CLI("observe", "-o", "json", "--last", "500", "--to-pod", "pets/order-service")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out2)
		}
		for _, line := range strings.Split(out+"\n"+out2, "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var f flow.Flow
			if err := protojson.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
			d := f.GetL7().GetDns()
			if d == nil {
				continue
			}
			if f.GetVerdict() == flow.Verdict_DROPPED && strings.HasPrefix(d.GetQuery(), "www.bing.com.") && len(f.GetEgressDeniedBy()) > 0 {
				refused = true
			}
			if f.GetL7().GetType() == flow.L7FlowType_RESPONSE && d.GetQuery() == "www.microsoft.com." && slices.Contains(d.GetIps(), msAddr) &&
				len(f.GetEgressAllowedBy()) > 0 && f.GetEgressAllowedBy()[0].GetName() == "allow-order-service-traffic" {
				answered = true
			}
		}
		if !(refused && answered) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !refused {
		t.Error("no DROPPED DNS flow for www.bing.com naming the policy")
	}
	if !answered {
		t.Error("no DNS RESPONSE flow for www.microsoft.com with its address naming allow-order-service-traffic")
	}
}

// TestFQDNCombined: the workshop's combined policy on store-front: DNS over
// UDP and TCP through the proxy, api.github.com in toFQDNs but refused at
// DNS, HTTP and HTTPS to *.microsoft.com.
func TestFQDNCombined(t *testing.T) {
	// Room for every address of big.microsoft.com (the default keeps 50).
	f := newFQDNNode(t, "--fqdn-max-ips-per-name", "100")
	sf := f.pods["store-front"].NS
	dnsIP := f.world.kubeDNS
	dirSource{f.n}.apply(t, workshopObjects(t, "aks-combined-fqdn-l7.yaml"))

	if _, codes, err := resolve(sf, dnsIP, "udp", "api.github.com"); err == nil || !slices.Contains(codes, "REFUSED") {
		t.Errorf("api.github.com resolved (%v) although no DNS rule allows it", codes)
	}
	if err := sf.Probe("tcp", githubAddr+":443", 500*time.Millisecond); err == nil {
		t.Error("api.github.com's address connected without a DNS answer")
	}
	if ips, _, err := resolve(sf, dnsIP, "udp", "rabbitmq.pets.svc.cluster.local."); err != nil || len(ips) == 0 {
		t.Errorf("rabbitmq.pets.svc.cluster.local: %v %v", ips, err)
	}
	// DNS over TCP goes through the proxy too (protocol ANY).
	ips, codes, err := resolve(sf, dnsIP, "tcp", "learn.microsoft.com")
	if err != nil || !slices.Contains(ips, mustAddr(msLearnAddr)) {
		t.Fatalf("learn.microsoft.com over TCP: %v %v %v", ips, codes, err)
	}
	for _, port := range []string{"80", "443"} {
		if err := sf.Probe("tcp", msLearnAddr+":"+port, 2*time.Second); err != nil {
			t.Errorf("learn.microsoft.com:%s: %v", port, err)
		}
	}
	if _, codes, err := resolve(sf, dnsIP, "tcp", "www.bing.com"); err == nil || !slices.Contains(codes, "REFUSED") {
		t.Errorf("www.bing.com over TCP: %v", codes)
	}
	// A truncated UDP answer passes as it is; the resolver asks again over
	// TCP, and that answer is learned.
	udp, err := dnsExchange(sf, dnsIP, "udp", "big.microsoft.com.", dns.TypeA)
	if err != nil || !udp.Truncated {
		t.Fatalf("big.microsoft.com over UDP: truncated %v, %v", udp != nil && udp.Truncated, err)
	}
	tcp, err := dnsExchange(sf, dnsIP, "tcp", "big.microsoft.com.", dns.TypeA)
	if err != nil || len(tcp.Answer) != 60 {
		t.Fatalf("big.microsoft.com over TCP: %d answers, %v", len(tcp.Answer), err)
	}
	last := tcp.Answer[len(tcp.Answer)-1].(*dns.A).A.String()
	if err := sf.Probe("tcp", last+":443", 2*time.Second); err != nil {
		t.Errorf("an address of the TCP answer (%s): %v", last, err)
	}
}

// TestFQDNFirstConnection: the first connection after each answer
// succeeds: lookup-then-connect with a fresh address every round.
func TestFQDNFirstConnection(t *testing.T) {
	f := newFQDNNode(t)
	order := f.pods["order-service"].NS
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy.yaml"))
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy-fqdn.yaml"))
	const rounds = 1000
	failed := 0
	start := time.Now()
	for i := range rounds {
		if i > 0 && i%freshCount == 0 {
			// Forget the last lap, so every address is new to the datapath.
			if out, err := f.n.CLI("fqdn", "cache", "clean"); err != nil {
				t.Fatalf("clean: %v\n%s", err, out)
			}
		}
		name := fmt.Sprintf("r%d.microsoft.com.", i%freshCount)
		r, err := dnsExchange(order, f.world.kubeDNS, "udp", name, dns.TypeA)
		if err != nil || len(r.Answer) == 0 {
			t.Fatalf("round %d: %s: %v %v", i, name, r, err)
		}
		c, err := connect(order, net.JoinHostPort(freshAddr(i), "443"), time.Second)
		if err != nil {
			failed++
			t.Logf("round %d: connect to %s: %v", i, freshAddr(i), err)
			continue
		}
		c.Close()
	}
	t.Logf("%d lookup-then-connect rounds in %v, %d failed", rounds, time.Since(start).Round(time.Millisecond), failed)
	if failed != 0 {
		t.Errorf("%d of %d first connections after an answer failed", failed, rounds)
	}
}

// TestFQDNExpiry: an address closes after its TTL when no connection uses
// it, and a live connection keeps it open through the grace.
func TestFQDNExpiry(t *testing.T) {
	f := newFQDNNode(t)
	order := f.pods["order-service"].NS
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy.yaml"))
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy-fqdn.yaml"))
	if _, err := dnsExchange(order, f.world.kubeDNS, "udp", "short.microsoft.com.", dns.TypeA); err != nil {
		t.Fatal(err)
	}
	held, err := connect(order, ttlAddr+":443", time.Second)
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	defer held.Close()
	// TTL 2s; the sweep runs every second. The held connection keeps the
	// address while it lives.
	time.Sleep(4 * time.Second)
	if err := echo(held, "still here"); err != nil {
		t.Errorf("the live connection broke after the TTL: %v", err)
	}
	held.Close()
	// Once the connection is gone (its conntrack entry closing), the
	// address expires: new connections are dropped again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := order.Probe("tcp", ttlAddr+":443", 300*time.Millisecond)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the address stayed open 10s after its TTL and its last connection")
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if !strings.Contains(string(buf[:n]), msg) {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

// TestFQDNRestart: aegisd killed and started again during a steady stream
// of queries: no query fails, names first resolved while aegisd was down
// are reachable right after, and what was learned survives. The proxy
// itself killed: aegisd starts it again with its rules and names.
func TestFQDNRestart(t *testing.T) {
	f := newFQDNNode(t)
	order := f.pods["order-service"].NS
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy.yaml"))
	dirSource{f.n}.apply(t, workshopObjects(t, "acns-network-policy-fqdn.yaml"))
	if _, err := dnsExchange(order, f.world.kubeDNS, "udp", "www.microsoft.com.", dns.TypeA); err != nil {
		t.Fatal(err)
	}
	proxyPID := f.n.DNSProxyPID()
	if proxyPID == 0 {
		t.Fatal("no DNS proxy pid")
	}

	stop := make(chan struct{})
	type result struct {
		queries, failed int
		during          []int // fresh names resolved while aegisd was down
	}
	var down atomic.Bool
	done := make(chan result)
	go func() {
		var r result
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			r.queries++
			resp, err := dnsExchange(order, f.world.kubeDNS, "udp", fmt.Sprintf("r%d.microsoft.com.", i%freshCount), dns.TypeA)
			if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) == 0 {
				r.failed++
				t.Logf("query %d failed: %v %v", i, resp, err)
			} else if down.Load() {
				r.during = append(r.during, i%freshCount)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(300 * time.Millisecond)
	down.Store(true)
	f.n.StopDaemon(syscall.SIGKILL)
	time.Sleep(time.Second)
	down.Store(false)
	f.n.StartDaemon()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	r := <-done
	t.Logf("%d queries across the restart, %d failed, %d answered while aegisd was down", r.queries, r.failed, len(r.during))
	if r.failed != 0 {
		t.Errorf("%d of %d queries failed across the restart", r.failed, r.queries)
	}
	if len(r.during) == 0 {
		t.Fatal("no query was answered while aegisd was down")
	}
	for _, i := range r.during[:min(len(r.during), 20)] {
		if err := order.Probe("tcp", net.JoinHostPort(freshAddr(i), "443"), time.Second); err != nil {
			t.Errorf("r%d.microsoft.com, resolved while aegisd was down, is not reachable: %v", i, err)
		}
	}
	if pid := f.n.DNSProxyPID(); pid != proxyPID {
		t.Errorf("the DNS proxy was replaced across aegisd's restart (pid %d, then %d)", proxyPID, pid)
	}
	out, err := f.n.CLI("fqdn", "cache", "list")
	if err != nil || !strings.Contains(out, "www.microsoft.com.") {
		t.Errorf("learned names lost across the restart: %v\n%s", err, out)
	}

	// The proxy itself dies: aegisd starts it again, with the names it
	// had learned.
	if err := syscall.Kill(proxyPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.n.DNSProxyPID() == proxyPID || f.n.DNSProxyPID() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the DNS proxy was not started again")
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		resp, err := dnsExchange(order, f.world.kubeDNS, "udp", "learn.microsoft.com.", dns.TypeA)
		if err == nil && resp.Rcode == dns.RcodeSuccess {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from the new proxy: %v %v", resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := f.n.CLI("fqdn", "cache", "list"); err != nil || !strings.Contains(out, "www.microsoft.com.") || !strings.Contains(out, "learn.microsoft.com.") {
		t.Errorf("cache after the proxy's restart: %v\n%s", err, out)
	}
	if err := order.Probe("tcp", msAddr+":443", time.Second); err != nil {
		t.Errorf("www.microsoft.com, learned before the proxy died: %v", err)
	}
}

// proxyRules returns the node's policy routing rules that send the
// proxies' marked packets to their local table.
func proxyRules(t *testing.T, n *node.Node) string {
	t.Helper()
	out, err := n.NS.Exec(5*time.Second, "ip", "-4", "rule", "show")
	if err != nil {
		t.Fatalf("ip rule show: %v: %s", err, out)
	}
	var rules []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "0xa00/0xf00") {
			rules = append(rules, strings.TrimSpace(l))
		}
	}
	return strings.Join(rules, "; ")
}
