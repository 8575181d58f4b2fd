package policy

import (
	"slices"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// ProtoPort is one protocol and port of a DNS or toFQDNs rule. Port 0 is
// every port of Proto; Proto ProtoAny (with port 0) is everything.
type ProtoPort struct {
	Proto uint8
	Port  uint16
}

// DNSRule is what the DNS proxy enforces for a local identity: queries to
// the remotes on the ports are allowed when a pattern matches the name.
type DNSRule struct {
	AnyRemote bool
	Remotes   []uint32 // sorted; service identities whose backends all are remotes included
	Ports     []ProtoPort
	Patterns  []cnp.FQDNSelector
	Cookie    uint32
}

// FQDNRule is a toFQDNs rule of a local identity: the addresses of names
// its selectors match are allowed on its ports.
type FQDNRule struct {
	Selectors []cnp.FQDNSelector
	Ports     []ProtoPort
	Cookie    uint32
}

// maxRulePorts bounds the ports one DNS or toFQDNs rule expands to (a
// range becomes one entry per port in the proxy's tables).
const maxRulePorts = 1024

// protoPorts expands a rule's ports: ANY to TCP, UDP and SCTP, ranges to
// their ports (at most maxRulePorts, the rest left out: it allows less,
// never more). all: the rule has no ports, so everything.
func protoPorts(ports []cnp.Port, all bool) []ProtoPort {
	if all {
		return []ProtoPort{{Proto: ProtoAny}}
	}
	var out []ProtoPort
	for _, p := range ports {
		if p.Name != "" {
			continue // named ports name pods' ports; a DNS server or a name has none
		}
		protos := []uint8{protoOf(p.Protocol)}
		if p.Protocol == "ANY" {
			if p.Port == 0 {
				return []ProtoPort{{Proto: ProtoAny}}
			}
			protos = []uint8{ProtoTCP, ProtoUDP, ProtoSCTP}
		}
		last := p.Port
		if p.EndPort != 0 {
			last = p.EndPort
		}
		for _, proto := range protos {
			for port := uint32(p.Port); port <= uint32(last) && len(out) < maxRulePorts; port++ {
				out = append(out, ProtoPort{Proto: proto, Port: uint16(port)})
			}
		}
	}
	return out
}

func protoOf(name string) uint8 {
	switch name {
	case "UDP":
		return ProtoUDP
	case "SCTP":
		return ProtoSCTP
	case "TCP":
		return ProtoTCP
	}
	return ProtoAny
}

// Covers reports whether the rule's ports include proto/port.
func covers(ports []ProtoPort, proto uint8, port uint16) bool {
	return slices.ContainsFunc(ports, func(pp ProtoPort) bool {
		return pp.Proto == ProtoAny || (pp.Proto == proto && (pp.Port == 0 || pp.Port == port))
	})
}

// DNSPatterns returns the DNS rules of local that apply to a query sent
// to remote on proto/port: the proxy allows the query if one of their
// patterns matches the name. None means no DNS rule covers the query.
func (r *Result) DNSPatterns(local, remote uint32, proto uint8, port uint16) []DNSRule {
	var out []DNSRule
	for _, d := range r.DNS[local] {
		if (d.AnyRemote || slices.Contains(d.Remotes, remote)) && covers(d.Ports, proto, port) {
			out = append(out, d)
		}
	}
	return out
}

// addL7 records the DNS and toFQDNs parts of an egress allow rule for the
// selected local identities, and gives DNS ports their redirect entries.
func (c *compiler) addL7(selected []*Identity, rs remotes, pr *cnp.PeerRule, cookie uint32) {
	if c.res.DNS == nil {
		c.res.DNS = map[uint32][]DNSRule{}
		c.res.FQDN = map[uint32][]FQDNRule{}
	}
	if len(pr.FQDNs) > 0 {
		ports := protoPorts(pr.Ports, pr.AllPorts)
		for _, local := range selected {
			c.res.FQDN[local.ID] = append(c.res.FQDN[local.ID], FQDNRule{Selectors: pr.FQDNs, Ports: ports, Cookie: cookie})
		}
	}
	if len(pr.DNS) == 0 || (!rs.any && len(rs.ids) == 0) {
		return
	}
	for _, d := range pr.DNS {
		rule := DNSRule{AnyRemote: rs.any, Remotes: rs.ids, Ports: protoPorts(d.Ports, len(d.Ports) == 0), Patterns: d.Rules, Cookie: cookie}
		ports, all := npPorts(&cnp.PeerRule{Ports: d.Ports, AllPorts: len(d.Ports) == 0})
		e := Entry{Action: ActionRedirectDNS, Cookie: cookie}
		for _, local := range selected {
			c.res.DNS[local.ID] = append(c.res.DNS[local.ID], rule)
			if all {
				c.add(local.ID, Egress, rs, nil, e)
			} else {
				c.add(local.ID, Egress, rs, ports, e)
			}
		}
	}
}

// HTTPRuleSet is what the HTTP proxy enforces for a local identity's
// connections with the remotes on the ports (to them for egress, from them
// for ingress): a request passes when one rule matches it (an empty rule
// matches every request).
type HTTPRuleSet struct {
	AnyRemote bool
	Remotes   []uint32
	Ports     []ProtoPort
	Rules     []cnp.HTTPRule
	Cookie    uint32
}

// HTTPRules returns the HTTP rule sets of local for dir that apply to a
// connection with remote on port (local's port for ingress, remote's for
// egress: the destination port either way); none means no HTTP rule of
// that direction covers it.
func (r *Result) HTTPRules(local, remote uint32, dir Direction, port uint16) []HTTPRuleSet {
	all := r.HTTP
	if dir == Ingress {
		all = r.HTTPIngress
	}
	var out []HTTPRuleSet
	for _, h := range all[local] {
		if h.Applies(remote, port) {
			out = append(out, h)
		}
	}
	return out
}

// HTTPSets returns every HTTP rule set of local for dir, whatever the
// connection: the proxy picks the ones that apply (Applies) without
// building a list per request.
func (r *Result) HTTPSets(local uint32, dir Direction) []HTTPRuleSet {
	if dir == Ingress {
		return r.HTTPIngress[local]
	}
	return r.HTTP[local]
}

// Applies says whether the set covers a connection with remote on port.
func (h *HTTPRuleSet) Applies(remote uint32, port uint16) bool {
	return (h.AnyRemote || slices.Contains(h.Remotes, remote)) && covers(h.Ports, ProtoTCP, port)
}

// addHTTP records the HTTP rules of an allow rule and gives their ports
// redirect entries to the HTTP proxy, in the rule's direction: the peers
// still are the rule's, so a port with HTTP rules stays subject to them.
func (c *compiler) addHTTP(selected []*Identity, dir Direction, rs remotes, pr *cnp.PeerRule, cookie uint32) {
	if dir == Ingress && !rs.any {
		// The node's own connections to its pods pass without the proxy,
		// as every ingress policy lets them (kubelet probes): the kernel
		// refuses a packet from one of its own addresses coming in on a
		// pod's veth, so it could not reach the proxy anyway.
		rs.ids = slices.DeleteFunc(slices.Clone(rs.ids), func(id uint32) bool { return id == IdentityHost })
	}
	if len(pr.HTTP) == 0 || (!rs.any && len(rs.ids) == 0) {
		return
	}
	target := &c.res.HTTP
	if dir == Ingress {
		target = &c.res.HTTPIngress
	}
	if *target == nil {
		*target = map[uint32][]HTTPRuleSet{}
	}
	for _, h := range pr.HTTP {
		// HTTP runs over TCP: ANY means TCP here.
		tcp := make([]cnp.Port, len(h.Ports))
		for i, p := range h.Ports {
			p.Protocol = "TCP"
			tcp[i] = p
		}
		ports, all := npPorts(&cnp.PeerRule{Ports: tcp, AllPorts: len(tcp) == 0})
		e := Entry{Action: ActionRedirectL7, Cookie: cookie}
		for _, local := range selected {
			set := HTTPRuleSet{AnyRemote: rs.any, Remotes: rs.ids, Ports: c.httpPorts(local.ID, dir, tcp), Rules: h.Rules, Cookie: cookie}
			(*target)[local.ID] = append((*target)[local.ID], set)
			if all {
				c.add(local.ID, dir, rs, nil, e)
			} else {
				c.add(local.ID, dir, rs, ports, e)
			}
		}
	}
}

// httpPorts expands an HTTP rule's ports for the proxy. At ingress a named
// port names the local pods' container port, as it does for the redirect
// entries; at egress it names a remote pod's and is left out (protoPorts).
func (c *compiler) httpPorts(local uint32, dir Direction, tcp []cnp.Port) []ProtoPort {
	if dir != Ingress {
		return protoPorts(tcp, len(tcp) == 0)
	}
	named := make([]cnp.Port, 0, len(tcp))
	for _, p := range tcp {
		if p.Name == "" {
			named = append(named, p)
			continue
		}
		for _, port := range resolveNamedPort(c.namedPorts[local], p.Name, ProtoTCP) {
			named = append(named, cnp.Port{Protocol: "TCP", Port: port})
		}
	}
	if len(tcp) > 0 && len(named) == 0 {
		return nil
	}
	return protoPorts(named, len(tcp) == 0)
}
