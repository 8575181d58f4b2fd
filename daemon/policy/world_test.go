package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// testPod is a pod of a test world.
type testPod struct {
	ns, name string
	labels   map[string]string
	ports    []NamedPort
	remote   bool // on another node: this node enforces nothing for it
}

// testWorld is the cluster a conformance case runs in: namespaces (name to
// labels) and pods.
type testWorld struct {
	namespaces map[string]map[string]string
	pods       []testPod
}

func tcp(name string, port uint16) NamedPort {
	return NamedPort{Name: name, Protocol: ProtoTCP, Port: port}
}

func udp(name string, port uint16) NamedPort {
	return NamedPort{Name: name, Protocol: ProtoUDP, Port: port}
}

func sctp(name string, port uint16) NamedPort {
	return NamedPort{Name: name, Protocol: ProtoSCTP, Port: port}
}

// defaultWorld is the world most conformance cases share.
func defaultWorld() testWorld {
	return testWorld{
		namespaces: map[string]map[string]string{
			"default": {},
			"pets":    {"team": "a", "env": "prod"},
			"shop":    {"team": "b", "env": "prod"},
			"dev":     {"team": "a", "env": "dev"},
		},
		pods: []testPod{
			{ns: "default", name: "client", labels: map[string]string{"app": "client"}},
			{ns: "pets", name: "cat", labels: map[string]string{"app": "cat", "tier": "backend"},
				ports: []NamedPort{tcp("http", 8080), tcp("metrics", 9090), udp("dns", 53)}},
			{ns: "pets", name: "dog", labels: map[string]string{"app": "dog", "tier": "frontend"},
				ports: []NamedPort{tcp("http", 80), sctp("diameter", 3868)}},
			{ns: "pets", name: "bird", labels: map[string]string{"app": "bird"}},
			{ns: "shop", name: "web", labels: map[string]string{"app": "web", "tier": "frontend"},
				ports: []NamedPort{tcp("http", 8000)}},
			{ns: "shop", name: "db", labels: map[string]string{"app": "db", "tier": "backend"},
				ports: []NamedPort{tcp("pg", 5432)}},
			{ns: "shop", name: "far", labels: map[string]string{"app": "far"},
				ports: []NamedPort{tcp("http", 81)}, remote: true},
			{ns: "dev", name: "cat", labels: map[string]string{"app": "cat", "tier": "backend"},
				ports: []NamedPort{tcp("http", 8081)}},
			{ns: "dev", name: "dog", labels: map[string]string{"app": "dog"}},
		},
	}
}

// testCluster is a world with identities allocated as the daemon would,
// and its policies compiled for the identities of local pods.
type testCluster struct {
	res   *Result
	pods  map[string]uint32 // "ns/name" to identity
	local map[string]bool   // "ns/name" of local pods
	cidrs []Identity        // the ipcache's CIDR identities
}

func newTestCluster(tb testing.TB, w testWorld, policies []string) *testCluster {
	tb.Helper()
	nps := make([]*networkingv1.NetworkPolicy, 0, len(policies))
	var cps []*cnp.Policy
	for i, y := range policies {
		if strings.Contains(y, "kind: Cilium") {
			cp, err := decodeCilium(y)
			if err != nil {
				tb.Fatalf("policy %d: %v", i, err)
			}
			cps = append(cps, cp)
			continue
		}
		np, err := decodePolicy(y)
		if err != nil {
			tb.Fatalf("policy %d: %v", i, err)
		}
		nps = append(nps, np)
	}
	in, c := w.input(nps, cps...)
	res, err := Compile(in, NewCookieJar())
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	c.res = res
	return c
}

// input allocates identities: pods that share namespace and labels share
// one, as in Cilium; every prefix CIDRs asks for gets one; the reserved
// identities exist always.
func (w testWorld) input(nps []*networkingv1.NetworkPolicy, cps ...*cnp.Policy) (Input, *testCluster) {
	c := &testCluster{pods: map[string]uint32{}, local: map[string]bool{}}
	in := Input{
		Identities: []Identity{
			{ID: IdentityHost, Reserved: "host"},
			{ID: IdentityWorld, Reserved: "world"},
			{ID: IdentityRemoteNode, Reserved: "remote-node"},
			{ID: IdentityKubeAPIServer, Reserved: "kube-apiserver"},
		},
		NamedPorts:      map[uint32][]NamedPort{},
		NetworkPolicies: nps,
		CiliumPolicies:  cps,
	}
	byLabels := map[string]uint32{}
	next := FirstPodIdentity
	for _, p := range w.pods {
		key := p.ns + "|" + labelString(p.labels)
		id, ok := byLabels[key]
		if !ok {
			id = next
			next++
			byLabels[key] = id
			nsLabels := maps.Clone(w.namespaces[p.ns])
			if nsLabels == nil {
				nsLabels = map[string]string{}
			}
			nsLabels["kubernetes.io/metadata.name"] = p.ns
			in.Identities = append(in.Identities, Identity{ID: id, Namespace: p.ns, Labels: p.labels, NamespaceLabels: nsLabels})
		}
		c.pods[p.ns+"/"+p.name] = id
		in.NamedPorts[id] = append(in.NamedPorts[id], p.ports...)
		if !p.remote {
			c.local[p.ns+"/"+p.name] = true
			if !slices.Contains(in.Local, id) {
				in.Local = append(in.Local, id)
			}
		}
	}
	for i, prefix := range CIDRs(nps, cps) {
		id := Identity{ID: FirstCIDRIdentity + uint32(i), CIDR: prefix}
		c.cidrs = append(c.cidrs, id)
		in.Identities = append(in.Identities, id)
	}
	return in, c
}

func labelString(l map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(l)) {
		fmt.Fprintf(&b, "%s=%s,", k, l[k])
	}
	return b.String()
}

// decodePolicy reads a policy written in YAML, indented with tabs to sit in
// Go source (dedent removes them).
func decodePolicy(y string) (*networkingv1.NetworkPolicy, error) {
	var np networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(dedent(y)), &np); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	return &np, nil
}

// decodeCilium reads a CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy written in YAML (apiVersion may be left
// out) through the daemon's own parser.
func decodeCilium(y string) (*cnp.Policy, error) {
	y = dedent(y)
	if !strings.Contains(y, "apiVersion:") {
		y = "apiVersion: cilium.io/v2\n" + y
	}
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	return cnp.Parse(js)
}

// dedent removes the leading tabs the shallowest non-blank line has.
func dedent(s string) string {
	lines := strings.Split(s, "\n")
	indent := -1
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			continue
		}
		n := len(l) - len(strings.TrimLeft(l, "\t"))
		if indent < 0 || n < indent {
			indent = n
		}
	}
	for i, l := range lines {
		switch {
		case strings.TrimSpace(l) == "":
			lines[i] = ""
		case indent > 0:
			lines[i] = l[indent:]
		}
	}
	return strings.Join(lines, "\n")
}

// endpoint is one side of a probe.
type endpoint struct {
	id    uint32
	local bool // a pod on this node: its policy is enforced here
}

// resolve maps a probe's endpoint as the datapath's ipcache would: a pod to
// its identity, an address to the identity of the longest CIDR identity
// prefix that contains it, else world; reserved names to their identity.
func (c *testCluster) resolve(s string) (endpoint, error) {
	switch s {
	case "host":
		return endpoint{id: IdentityHost}, nil
	case "world":
		return endpoint{id: IdentityWorld}, nil
	case "remote-node":
		return endpoint{id: IdentityRemoteNode}, nil
	case "kube-apiserver":
		return endpoint{id: IdentityKubeAPIServer}, nil
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		best := endpoint{id: IdentityWorld}
		bits := -1
		for _, id := range c.cidrs {
			if id.CIDR.Contains(addr) && id.CIDR.Bits() > bits {
				best, bits = endpoint{id: id.ID}, id.CIDR.Bits()
			}
		}
		return best, nil
	}
	id, ok := c.pods[s]
	if !ok {
		return endpoint{}, fmt.Errorf("unknown endpoint %q", s)
	}
	return endpoint{id: id, local: c.local[s]}, nil
}

// probe is one connection attempt: "SRC DST PROTO[/PORT] allow|deny".
type probe struct {
	src, dst string
	proto    uint8
	port     uint16
	allow    bool
}

func parseProbe(s string) (probe, error) {
	f := strings.Fields(s)
	if len(f) != 4 {
		return probe{}, fmt.Errorf("probe %q: want SRC DST PROTO[/PORT] allow|deny", s)
	}
	p := probe{src: f[0], dst: f[1]}
	protoName, portStr, _ := strings.Cut(f[2], "/")
	switch protoName {
	case "tcp":
		p.proto = ProtoTCP
	case "udp":
		p.proto = ProtoUDP
	case "sctp":
		p.proto = ProtoSCTP
	case "icmp":
		p.proto = ProtoICMP
	default:
		return probe{}, fmt.Errorf("probe %q: unknown protocol %q", s, protoName)
	}
	if portStr != "" {
		n, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return probe{}, fmt.Errorf("probe %q: bad port: %w", s, err)
		}
		p.port = uint16(n)
	}
	switch f[3] {
	case "allow":
		p.allow = true
	case "deny":
	default:
		return probe{}, fmt.Errorf("probe %q: verdict must be allow or deny", s)
	}
	return p, nil
}

// verdict evaluates a probe as the datapath does for a new connection: the
// egress check at the source if it is a local pod, then the ingress check
// at the destination if it is a local pod. why explains a deny.
func (c *testCluster) verdict(p probe) (allow bool, why string, err error) {
	src, err := c.resolve(p.src)
	if err != nil {
		return false, "", err
	}
	dst, err := c.resolve(p.dst)
	if err != nil {
		return false, "", err
	}
	if src.local {
		// A redirect to the DNS proxy passes the packet on to the proxy,
		// which decides per query: the datapath lets it through.
		if e, enforced := c.res.Lookup(src.id, dst.id, Egress, p.proto, p.port); enforced && e.Action != ActionAllow && e.Action != ActionRedirectDNS && e.Action != ActionRedirectL7 {
			return false, fmt.Sprintf("egress of %d to %d: %v (cookie %d)", src.id, dst.id, e.Action, e.Cookie), nil
		}
	}
	if dst.local {
		// A redirect to the HTTP proxy passes the connection on to the
		// proxy, which decides per request.
		if e, enforced := c.res.Lookup(dst.id, src.id, Ingress, p.proto, p.port); enforced && e.Action != ActionAllow && e.Action != ActionRedirectL7 {
			return false, fmt.Sprintf("ingress of %d from %d: %v (cookie %d)", dst.id, src.id, e.Action, e.Cookie), nil
		}
	}
	return true, "", nil
}
