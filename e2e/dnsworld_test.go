package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/e2e/netns"
	"github.com/aegis-cni/aegis/e2e/node"
)

// The DNS world of the FQDN tests: kube-dns is CoreDNS v1.15.0 in the
// kube-dns pod, serving cluster.local from a hosts file and forwarding the
// rest to an "internet" resolver, Debian's unbound, on an outside host
// (192.0.2.53) that serves microsoft.com-, bing.com- and github.com-like
// test zones resolving to TEST-NET hosts, which run TCP servers on 80 and
// 443.

const (
	resolverAddr = "192.0.2.53"
	msAddr       = "203.0.113.20" // www.microsoft.com
	msLearnAddr  = "203.0.113.21" // learn.microsoft.com
	bingAddr     = "203.0.113.30" // www.bing.com
	githubAddr   = "203.0.113.40" // api.github.com
	strayAddr    = "203.0.113.99" // in no zone
	ttlAddr      = "203.0.113.50" // short.microsoft.com, TTL 2s
	// freshBase..: r<N>.microsoft.com, one address each, for the
	// lookup-then-connect rounds.
	freshCount = 250
)

func freshAddr(i int) string { return fmt.Sprintf("198.51.100.%d", 1+i%freshCount) }

func coreDNSBinary(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("AEGIS_CACHE")
	if cache == "" {
		cache = "/var/cache/aegis"
	}
	bin := filepath.Join(cache, "coredns-v1.15.0", "coredns")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("CoreDNS not built (%v): run scripts/build-coredns.sh (make peers does)", err)
	}
	return bin
}

func unboundBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("unbound")
	if err != nil {
		for _, p := range []string{"/usr/sbin/unbound", "/sbin/unbound"} {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
		t.Fatalf("unbound not installed: run scripts/deps.sh (make test does)")
	}
	return bin
}

type dnsWorld struct {
	internet *node.Outside
	kubeDNS  string // the kube-dns pod's address
}

// startProcess runs a daemon inside ns until the test ends.
func startProcess(t *testing.T, ns *netns.NS, logName string, name string, args ...string) {
	t.Helper()
	cmd := ns.Command(name, args...)
	logf, err := os.Create(filepath.Join(t.TempDir(), logName))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", logName, b)
		}
	})
}

// newDNSWorld starts the resolvers and the internet hosts. kubeDNS is the
// kube-dns pod, rabbitmq the address rabbitmq.pets.svc.cluster.local
// resolves to.
func newDNSWorld(t *testing.T, n *node.Node, kubeDNS *node.Pod, rabbitmq string) *dnsWorld {
	t.Helper()
	w := &dnsWorld{kubeDNS: kubeDNS.IP.String()}
	w.internet = n.AddOutside(t, resolverAddr)
	var batch strings.Builder
	hosts := []string{msAddr, msLearnAddr, bingAddr, githubAddr, strayAddr, ttlAddr}
	for _, a := range hosts {
		fmt.Fprintf(&batch, "addr add %s/32 dev eth0\n", a)
	}
	for i := range freshCount {
		fmt.Fprintf(&batch, "addr add %s/32 dev eth0\n", freshAddr(i))
	}
	runBatch(t, w.internet.NS, batch.String())
	runBatch(t, n.NS, fmt.Sprintf("route add 203.0.113.0/24 via %s\nroute add 198.51.100.0/24 via %s\n", resolverAddr, resolverAddr))
	for _, port := range []int{80, 443} {
		w.internet.NS.Serve(t, "tcp", fmt.Sprintf("0.0.0.0:%d", port), "internet:")
	}

	dir := t.TempDir()
	// microsoft.com is an authoritative zone (unbound follows CNAMEs
	// inside it); bing.com and github.com are local data.
	var ms strings.Builder
	ms.WriteString(`$ORIGIN microsoft.com.
@ 300 IN SOA ns.microsoft.com. admin.microsoft.com. 1 7200 3600 1209600 300
@ 300 IN NS ns.microsoft.com.
ns 300 IN A ` + resolverAddr + `
www 300 IN A ` + msAddr + `
learn 300 IN A ` + msLearnAddr + `
short 2 IN A ` + ttlAddr + `
alias 300 IN CNAME edge
edge 300 IN A ` + msLearnAddr + `
`)
	for i := range freshCount {
		fmt.Fprintf(&ms, "r%d 300 IN A %s\n", i, freshAddr(i))
	}
	// big: more addresses than fit a 512-byte UDP answer (truncated, then
	// asked again over TCP).
	for i := range 60 {
		fmt.Fprintf(&ms, "big 300 IN A %s\n", freshAddr(i))
	}
	msZone := filepath.Join(dir, "microsoft.com.zone")
	if err := os.WriteFile(msZone, []byte(ms.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var zone strings.Builder
	zone.WriteString(`server:
  interface: ` + resolverAddr + `
  port: 53
  do-ip6: no
  do-daemonize: no
  use-syslog: no
  logfile: ""
  username: ""
  chroot: ""
  pidfile: ""
  directory: "` + dir + `"
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  local-zone: "bing.com." static
  local-zone: "github.com." static
  local-data: "www.bing.com. 300 IN A ` + bingAddr + `"
  local-data: "api.github.com. 300 IN A ` + githubAddr + `"
auth-zone:
  name: "microsoft.com."
  zonefile: "` + msZone + `"
  for-downstream: yes
  for-upstream: yes
`)
	conf := filepath.Join(dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(zone.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, w.internet.NS, "unbound.log", unboundBinary(t), "-d", "-c", conf)

	// cluster.local as kube-dns serves it: authoritative, NXDOMAIN for
	// names it does not have (what a pod's search list runs into).
	zoneFile := filepath.Join(dir, "cluster.local.zone")
	if err := os.WriteFile(zoneFile, []byte(`$ORIGIN cluster.local.
@ 30 IN SOA ns.cluster.local. admin.cluster.local. 1 7200 3600 1209600 30
@ 30 IN NS ns.cluster.local.
ns 30 IN A `+w.kubeDNS+`
rabbitmq.pets.svc 30 IN A `+rabbitmq+`
`), 0o644); err != nil {
		t.Fatal(err)
	}
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`cluster.local:53 {
    bind %[1]s
    file %[2]s
}
.:53 {
    bind %[1]s
    forward . %[3]s
}
`, w.kubeDNS, zoneFile, resolverAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, kubeDNS.NS, "coredns.log", coreDNSBinary(t), "-conf", corefile, "-dns.port", "53")

	// Both answer before the test goes on.
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err1 := dnsExchange(kubeDNS.NS, w.kubeDNS, "udp", "rabbitmq.pets.svc.cluster.local.", dns.TypeA)
		_, err2 := dnsExchange(w.internet.NS, resolverAddr, "udp", "www.microsoft.com.", dns.TypeA)
		if err1 == nil && err2 == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolvers not answering: coredns %v, unbound %v", err1, err2)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return w
}

func runBatch(t *testing.T, ns *netns.NS, batch string) {
	t.Helper()
	cmd := ns.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch in %s: %v\n%s", ns.Name, err, out)
	}
}

// exchange sends one query from inside ns to server:53.
func dnsExchange(ns *netns.NS, server, network, name string, qtype uint16) (*dns.Msg, error) {
	var resp *dns.Msg
	err := ns.Do(func() error {
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err := c.Exchange(m, net.JoinHostPort(server, "53"))
		resp = r
		return err
	})
	return resp, err
}

// podSearch is the search list a pod in namespace pets has in its
// resolv.conf (ndots 5), as on AKS.
var podSearch = []string{"pets.svc.cluster.local.", "svc.cluster.local.", "cluster.local."}

// resolve looks a name up the way a pod's resolver does: a name with
// fewer than five dots is tried with each search domain first, then as
// is; the first answer with addresses wins. It returns the addresses and
// the rcode of each try.
func resolve(ns *netns.NS, server, network, name string) ([]netip.Addr, []string, error) {
	var tries []string
	if strings.Count(strings.TrimSuffix(name, "."), ".") < 5 && !strings.HasSuffix(name, ".") {
		for _, s := range podSearch {
			tries = append(tries, name+"."+s)
		}
	}
	tries = append(tries, dns.Fqdn(name))
	var codes []string
	for _, q := range tries {
		r, err := dnsExchange(ns, server, network, q, dns.TypeA)
		if err != nil {
			return nil, codes, err
		}
		codes = append(codes, dns.RcodeToString[r.Rcode])
		var ips []netip.Addr
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				ip, _ := netip.AddrFromSlice(a.A.To4())
				ips = append(ips, ip)
			}
		}
		if len(ips) > 0 {
			return ips, codes, nil
		}
	}
	return nil, codes, fmt.Errorf("%s: no address (%s)", name, strings.Join(codes, ", "))
}

// connect opens a TCP connection from inside ns, to be closed by the
// caller.
func connect(ns *netns.NS, addr string, timeout time.Duration) (net.Conn, error) {
	return ns.Dial("tcp", addr, timeout)
}
