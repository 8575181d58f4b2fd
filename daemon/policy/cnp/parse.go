package cnp

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/aegis-cni/aegis/daemon/strictjson"
)

// Policy is a validated policy, ready to compile.
type Policy struct {
	Kind      string
	Namespace string // "" for a clusterwide policy
	Name      string
	Rules     []Rule
	Compiled  []CompiledRule // one per rule, in order: spec, then specs
	// Unsupported lists, by field path, what the policy asks for that
	// Aegis does not enforce yet. Each such part of an allow rule allows
	// nothing, so traffic it would let through stays denied; the policy's
	// report says so.
	Unsupported []string
}

// CompiledRule is one rule with its selectors compiled and its sections
// read the way Cilium reads them.
type CompiledRule struct {
	Path    string // "spec" or "specs[i]"
	Subject *Matcher
	// The sections, allow and deny, per direction.
	Ingress, IngressDeny, Egress, EgressDeny []PeerRule
	// DefaultDeny says, per direction, whether the rule puts its subjects
	// in default deny. Cilium: a rule that has rules (allow or deny) for a
	// direction enables it unless enableDefaultDeny says false; a rule with
	// none (the section absent or []) does not touch the direction at all
	// (pkg/policy/repository.go, computePolicyEnforcementAndRules).
	DefaultDenyIngress, DefaultDenyEgress bool
}

// PeerRule is one element of a section.
type PeerRule struct {
	Index int // within its section
	// Wildcard: the rule names no peers but has ports, so it applies to
	// every peer ("for L4 policy an empty set of selectors allows all at
	// L3", pkg/policy/rule.go). None: it selects no peer at all, either
	// because a peer list is present but empty (`fromEndpoints: []`) or
	// because it names neither peers nor ports (`ingress: [{}]`, which
	// Cilium documents as the way to enter default deny without allowing
	// anything).
	Wildcard, None bool
	Endpoints      []*Matcher
	Entities       []string
	CIDRs          []CIDRSet
	// AllPorts: no toPorts, every port and protocol. Otherwise Ports is
	// the ports the rule covers; empty means none (every port rule of it
	// was unsupported or listed no ports).
	AllPorts bool
	Ports    []Port
	// FQDNs are the rule's toFQDNs selectors: the peers are the addresses
	// the DNS proxy learns for names they match, on the rule's ports.
	FQDNs []FQDNSelector
	// DNS are the ports with DNS rules: traffic to the peers on them goes
	// through the DNS proxy, which lets through queries the rules match.
	DNS []DNSPorts
	// HTTP are the ports with HTTP rules: connections with the peers on
	// them (to them for egress, from them for ingress) go through the HTTP
	// proxy, which lets through the requests the rules match and answers
	// the others 403.
	HTTP []HTTPPorts
}

// HTTPPorts is a port rule with HTTP rules.
type HTTPPorts struct {
	Ports []Port
	Rules []HTTPRule
}

// DNSPorts is a port rule with DNS rules.
type DNSPorts struct {
	Ports []Port
	Rules []FQDNSelector
}

// CIDRSet is a prefix minus its exceptions.
type CIDRSet struct {
	Prefix netip.Prefix
	Except []netip.Prefix
}

// Port is a validated port of a rule.
type Port struct {
	Protocol string // TCP, UDP, SCTP or ANY
	Port     uint16 // 0: every port of Protocol
	EndPort  uint16 // last port of a range, 0 when not a range
	Name     string // a named container port instead of Port
}

// Entities Cilium defines. Aegis has identities for world, host,
// remote-node and kube-apiserver; the others name peers an Aegis node
// never has, so they select nothing.
var knownEntities = map[string]bool{
	"all": true, "world": true, "cluster": true, "host": true, "remote-node": true,
	"kube-apiserver": true, "health": true, "init": true, "unmanaged": true,
	"ingress": true, "none": true, "world-ipv4": true, "world-ipv6": true,
}

// ParseUnstructured parses an object as the API server or a manifest
// directory delivers it.
func ParseUnstructured(u *unstructured.Unstructured) (*Policy, error) {
	js, err := u.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	return Parse(js)
}

// Parse decodes strictly and validates one policy object (JSON). Errors
// name the field at fault.
func Parse(js []byte) (*Policy, error) {
	var o Object
	if err := strictjson.Decode(js, &o); err != nil {
		return nil, err
	}
	if o.APIVersion != APIVersion {
		return nil, fmt.Errorf("apiVersion: %q is not %s", o.APIVersion, APIVersion)
	}
	p := &Policy{Kind: o.Kind, Name: o.Metadata.Name, Namespace: o.Metadata.Namespace}
	switch o.Kind {
	case KindCNP:
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
			return nil, fmt.Errorf("metadata.namespace: %s", strings.Join(errs, "; "))
		}
	case KindCCNP:
		p.Namespace = "" // cluster scoped: the API server ignores it too
	default:
		return nil, fmt.Errorf("kind: %q is not %s or %s", o.Kind, KindCNP, KindCCNP)
	}
	if p.Name == "" {
		return nil, errors.New("metadata.name: required")
	}
	if errs := validation.IsDNS1123Subdomain(p.Name); len(errs) > 0 {
		return nil, fmt.Errorf("metadata.name: %s", strings.Join(errs, "; "))
	}
	if o.Spec == nil && len(o.Specs) == 0 {
		return nil, errors.New("spec: a policy needs spec or specs")
	}
	type pathRule struct {
		path string
		r    *Rule
	}
	var rules []pathRule
	if o.Spec != nil {
		rules = append(rules, pathRule{"spec", o.Spec})
	}
	for i := range o.Specs {
		rules = append(rules, pathRule{fmt.Sprintf("specs[%d]", i), &o.Specs[i]})
	}
	for _, pr := range rules {
		cr, err := p.compileRule(pr.path, pr.r)
		if err != nil {
			return nil, err
		}
		p.Rules = append(p.Rules, *pr.r)
		p.Compiled = append(p.Compiled, cr)
	}
	return p, nil
}

func (p *Policy) unsupported(path, what string) {
	p.Unsupported = append(p.Unsupported, path+": "+what)
}

func (p *Policy) compileRule(path string, r *Rule) (CompiledRule, error) {
	cr := CompiledRule{Path: path}
	if r.NodeSelector != nil {
		if p.Kind == KindCNP {
			return cr, fmt.Errorf("%s.nodeSelector: only a CiliumClusterwideNetworkPolicy may select nodes", path)
		}
		// A host policy changes what is enforced on the node itself;
		// ignoring it would leave the node open, so it is refused whole.
		return cr, fmt.Errorf("%s.nodeSelector: host policies are not supported by aegis", path)
	}
	if r.EndpointSelector == nil {
		return cr, fmt.Errorf("%s.endpointSelector: required", path)
	}
	subject, err := r.EndpointSelector.Subject(p.Namespace)
	if err != nil {
		return cr, fmt.Errorf("%s.endpointSelector.%w", path, err)
	}
	if subject.usesServiceAccount() {
		return cr, fmt.Errorf("%s.endpointSelector: selecting by %s is not supported by aegis", path, LabelServiceAccount)
	}
	cr.Subject = subject

	for i := range r.Ingress {
		in := &r.Ingress[i]
		at := fmt.Sprintf("%s.ingress[%d]", path, i)
		pr, err := p.peerRule(at, i, false, peers{
			endpoints: in.FromEndpoints, endpointsName: "fromEndpoints",
			cidr: in.FromCIDR, cidrName: "fromCIDR",
			cidrSet: in.FromCIDRSet, cidrSetName: "fromCIDRSet",
			entities: in.FromEntities, entitiesName: "fromEntities",
			requires: in.FromRequires, requiresName: "fromRequires",
			nodes: in.FromNodes != nil, nodesName: "fromNodes",
			groups: in.FromGroups != nil, groupsName: "fromGroups",
			icmps: in.ICMPs != nil, auth: len(in.Authentication) > 0,
		})
		if err != nil {
			return cr, err
		}
		if err := p.allowPorts(at, false, in.ToPorts, &pr); err != nil {
			return cr, err
		}
		cr.Ingress = append(cr.Ingress, finish(pr, len(in.ToPorts) == 0 && len(in.ICMPs) == 0))
	}
	for i := range r.IngressDeny {
		in := &r.IngressDeny[i]
		at := fmt.Sprintf("%s.ingressDeny[%d]", path, i)
		pr, err := p.peerRule(at, i, true, peers{
			endpoints: in.FromEndpoints, endpointsName: "fromEndpoints",
			cidr: in.FromCIDR, cidrName: "fromCIDR",
			cidrSet: in.FromCIDRSet, cidrSetName: "fromCIDRSet",
			entities: in.FromEntities, entitiesName: "fromEntities",
			requires: in.FromRequires, requiresName: "fromRequires",
			nodes: in.FromNodes != nil, nodesName: "fromNodes",
			groups: in.FromGroups != nil, groupsName: "fromGroups",
			icmps: in.ICMPs != nil,
		})
		if err != nil {
			return cr, err
		}
		if err := denyPorts(at, in.ToPorts, &pr); err != nil {
			return cr, err
		}
		cr.IngressDeny = append(cr.IngressDeny, finish(pr, len(in.ToPorts) == 0 && len(in.ICMPs) == 0))
	}
	for i := range r.Egress {
		eg := &r.Egress[i]
		at := fmt.Sprintf("%s.egress[%d]", path, i)
		pr, err := p.peerRule(at, i, false, peers{
			endpoints: eg.ToEndpoints, endpointsName: "toEndpoints",
			cidr: eg.ToCIDR, cidrName: "toCIDR",
			cidrSet: eg.ToCIDRSet, cidrSetName: "toCIDRSet",
			entities: eg.ToEntities, entitiesName: "toEntities",
			requires: eg.ToRequires, requiresName: "toRequires",
			nodes: eg.ToNodes != nil, nodesName: "toNodes",
			groups: eg.ToGroups != nil, groupsName: "toGroups",
			services: eg.ToServices != nil,
			fqdns:    eg.ToFQDNs,
			icmps:    eg.ICMPs != nil, auth: len(eg.Authentication) > 0,
		})
		if err != nil {
			return cr, err
		}
		if err := p.allowPorts(at, true, eg.ToPorts, &pr); err != nil {
			return cr, err
		}
		cr.Egress = append(cr.Egress, finish(pr, len(eg.ToPorts) == 0 && len(eg.ICMPs) == 0))
	}
	for i := range r.EgressDeny {
		eg := &r.EgressDeny[i]
		at := fmt.Sprintf("%s.egressDeny[%d]", path, i)
		pr, err := p.peerRule(at, i, true, peers{
			endpoints: eg.ToEndpoints, endpointsName: "toEndpoints",
			cidr: eg.ToCIDR, cidrName: "toCIDR",
			cidrSet: eg.ToCIDRSet, cidrSetName: "toCIDRSet",
			entities: eg.ToEntities, entitiesName: "toEntities",
			requires: eg.ToRequires, requiresName: "toRequires",
			nodes: eg.ToNodes != nil, nodesName: "toNodes",
			groups: eg.ToGroups != nil, groupsName: "toGroups",
			services: eg.ToServices != nil,
			icmps:    eg.ICMPs != nil,
		})
		if err != nil {
			return cr, err
		}
		if err := denyPorts(at, eg.ToPorts, &pr); err != nil {
			return cr, err
		}
		cr.EgressDeny = append(cr.EgressDeny, finish(pr, len(eg.ToPorts) == 0 && len(eg.ICMPs) == 0))
	}

	var dd DefaultDeny
	if r.EnableDefaultDeny != nil {
		dd = *r.EnableDefaultDeny
	}
	cr.DefaultDenyIngress = (len(r.Ingress) > 0 || len(r.IngressDeny) > 0) && (dd.Ingress == nil || *dd.Ingress)
	cr.DefaultDenyEgress = (len(r.Egress) > 0 || len(r.EgressDeny) > 0) && (dd.Egress == nil || *dd.Egress)
	return cr, nil
}

// finish settles the wildcard and none cases once peers and ports are
// known. noPorts: the rule has no toPorts (nor icmps); an empty list is
// the same as none, as Cilium appends the lists before looking.
func finish(pr PeerRule, noPorts bool) PeerRule {
	pr.AllPorts = noPorts
	if pr.Wildcard && noPorts {
		pr.Wildcard, pr.None = false, true
	}
	return pr
}

// peers is one rule's peer fields, named for error paths.
type peers struct {
	endpoints               []Selector
	endpointsName           string
	cidr                    []string
	cidrName                string
	cidrSet                 []CIDRRule
	cidrSetName             string
	entities                []string
	entitiesName            string
	requires                []Selector
	requiresName            string
	nodes, groups, services bool
	nodesName, groupsName   string
	fqdns                   []FQDNSelector
	icmps, auth             bool
}

// peerRule validates and compiles one rule's peers. deny: the rule denies,
// so a part Aegis cannot enforce would deny less than asked; such a policy
// is refused instead of weakened.
func (p *Policy) peerRule(at string, index int, deny bool, ps peers) (PeerRule, error) {
	pr := PeerRule{Index: index}
	if ps.requires != nil {
		// Requirements narrow every other rule of the subject; ignoring
		// them would allow more than asked.
		return pr, fmt.Errorf("%s.%s: not supported by aegis", at, ps.requiresName)
	}
	type member struct {
		name string
		set  bool
		n    int
	}
	members := []member{
		{ps.endpointsName, ps.endpoints != nil, len(ps.endpoints)},
		{ps.cidrName, ps.cidr != nil, len(ps.cidr)},
		{ps.cidrSetName, ps.cidrSet != nil, len(ps.cidrSet)},
		{ps.entitiesName, ps.entities != nil, len(ps.entities)},
		{ps.nodesName, ps.nodes, 1},
		{ps.groupsName, ps.groups, 1},
	}
	// Cilium refuses rules that combine kinds of L3 peers
	// (pkg/policy/api/rule_validation.go); so does Aegis, so a policy
	// means the same on both.
	var first string
	anyPeer := ps.services || ps.fqdns != nil
	for _, m := range members {
		if !m.set {
			continue
		}
		anyPeer = true
		if m.n == 0 {
			// An empty list selects nothing (Cilium's
			// mergeEndpointSelectors: "empty non-nil slices ... should
			// not result in any identity being selected").
			pr.None = true
		}
		if m.n > 0 && first != "" {
			return pr, fmt.Errorf("%s: combining %s and %s in one rule is not supported (as in Cilium)", at, first, m.name)
		}
		if m.n > 0 {
			first = m.name
		}
	}
	unsupported := func(field, what string) error {
		if deny {
			return fmt.Errorf("%s.%s: %s, and a deny rule cannot be enforced in part", at, field, what)
		}
		p.unsupported(at+"."+field, what+"; the rule allows nothing through it")
		return nil
	}
	if ps.nodes {
		if err := unsupported(ps.nodesName, "node selectors are not supported by aegis"); err != nil {
			return pr, err
		}
	}
	if ps.groups {
		if err := unsupported(ps.groupsName, "cloud provider groups are not supported by aegis"); err != nil {
			return pr, err
		}
	}
	if ps.services {
		if err := unsupported("toServices", "toServices is not supported by aegis yet"); err != nil {
			return pr, err
		}
	}
	if ps.icmps {
		if err := unsupported("icmps", "ICMP rules are not supported by aegis yet"); err != nil {
			return pr, err
		}
	}
	if ps.auth {
		// Mutual authentication Aegis cannot perform: Cilium drops such
		// traffic until authenticated, so allowing it would be wrong.
		p.unsupported(at+".authentication", "mutual authentication is not supported by aegis; the rule allows nothing")
		pr.None = true
	}
	for i, f := range ps.fqdns {
		if err := validFQDNSelector(f); err != nil {
			return pr, fmt.Errorf("%s.toFQDNs[%d]: %w", at, i, err)
		}
		if len(ps.fqdns) > 0 && first != "" {
			return pr, fmt.Errorf("%s: combining toFQDNs and %s in one rule is not supported (as in Cilium)", at, first)
		}
	}
	pr.FQDNs = ps.fqdns
	if ps.fqdns != nil && len(ps.fqdns) == 0 {
		pr.None = true
	}

	for i := range ps.endpoints {
		m, err := ps.endpoints[i].Peer(p.Namespace)
		if err != nil {
			return pr, fmt.Errorf("%s.%s[%d].%w", at, ps.endpointsName, i, err)
		}
		if m.usesServiceAccount() {
			if err := unsupported(fmt.Sprintf("%s[%d]", ps.endpointsName, i), "selecting by "+LabelServiceAccount+" is not supported by aegis"); err != nil {
				return pr, err
			}
			continue
		}
		pr.Endpoints = append(pr.Endpoints, m)
	}
	for i, e := range ps.entities {
		if !knownEntities[e] {
			return pr, fmt.Errorf("%s.%s[%d]: unknown entity %q (want all, world, cluster, host, remote-node, kube-apiserver, health, init, unmanaged, ingress, none)", at, ps.entitiesName, i, e)
		}
		if e == "world-ipv4" || e == "world-ipv6" {
			if err := unsupported(fmt.Sprintf("%s[%d]", ps.entitiesName, i), "entity "+e+" is not supported by aegis (one world identity serves both families)"); err != nil {
				return pr, err
			}
			continue
		}
		pr.Entities = append(pr.Entities, e)
	}
	for i, s := range ps.cidr {
		pfx, err := parseCIDR(s)
		if err != nil {
			return pr, fmt.Errorf("%s.%s[%d]: %w", at, ps.cidrName, i, err)
		}
		pr.CIDRs = append(pr.CIDRs, CIDRSet{Prefix: pfx})
	}
	for i, cs := range ps.cidrSet {
		where := fmt.Sprintf("%s.%s[%d]", at, ps.cidrSetName, i)
		if cs.CIDRGroupRef != "" || len(cs.CIDRGroupSelector) > 0 {
			if err := unsupported(fmt.Sprintf("%s[%d]", ps.cidrSetName, i), "CiliumCIDRGroup references are not supported by aegis"); err != nil {
				return pr, err
			}
			continue
		}
		pfx, err := parseCIDR(cs.CIDR)
		if err != nil {
			return pr, fmt.Errorf("%s.cidr: %w", where, err)
		}
		set := CIDRSet{Prefix: pfx}
		for j, e := range cs.Except {
			ep, err := parseCIDR(e)
			if err != nil {
				return pr, fmt.Errorf("%s.except[%d]: %w", where, j, err)
			}
			if ep.Addr().Is4() != pfx.Addr().Is4() || ep.Bits() < pfx.Bits() || !pfx.Contains(ep.Addr()) {
				return pr, fmt.Errorf("%s.except[%d]: %s is not inside %s", where, j, ep, pfx)
			}
			set.Except = append(set.Except, ep)
		}
		pr.CIDRs = append(pr.CIDRs, set)
	}
	if !anyPeer {
		pr.Wildcard = true
	}
	return pr, nil
}

// parseCIDR reads a prefix; a bare address means that one address, as
// Cilium accepts in fromCIDR and toCIDR.
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("empty CIDR")
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: IPv4-mapped IPv6", s)
	}
	return pfx.Masked(), nil
}

// allowPorts validates an allow rule's toPorts and collects the ports
// Aegis can enforce.
func (p *Policy) allowPorts(at string, egress bool, rules []PortRule, pr *PeerRule) error {
	for i := range rules {
		r := &rules[i]
		where := fmt.Sprintf("%s.toPorts[%d]", at, i)
		ports, err := validPorts(where, r.Ports)
		if err != nil {
			return err
		}
		if err := validL7(where, egress, r.Rules); err != nil {
			return err
		}
		switch {
		case r.Rules != nil && r.Rules.DNS != nil:
			// Validated above: egress only, nothing else beside.
			pr.DNS = append(pr.DNS, DNSPorts{Ports: ports, Rules: r.Rules.DNS})
			continue
		case r.Rules != nil && r.Rules.HTTP != nil:
			for _, port := range ports {
				if port.Protocol != "TCP" && port.Protocol != "ANY" {
					return fmt.Errorf("%s.rules.http: HTTP rules need TCP ports, not %s", where, port.Protocol)
				}
			}
			pr.HTTP = append(pr.HTTP, HTTPPorts{Ports: ports, Rules: r.Rules.HTTP})
			continue
		case r.Rules != nil && !r.Rules.empty():
			p.unsupported(where+".rules", "layer 7 rules are not enforced by aegis yet; these ports allow nothing")
			continue
		case len(r.TerminatingTLS) > 0 || len(r.OriginatingTLS) > 0 || r.ServerNames != nil || len(r.Listener) > 0:
			p.unsupported(where, "TLS interception, serverNames and listeners are not supported by aegis; these ports allow nothing")
			continue
		}
		pr.Ports = append(pr.Ports, ports...)
	}
	return nil
}

func denyPorts(at string, rules []PortDenyRule, pr *PeerRule) error {
	for i := range rules {
		ports, err := validPorts(fmt.Sprintf("%s.toPorts[%d]", at, i), rules[i].Ports)
		if err != nil {
			return err
		}
		pr.Ports = append(pr.Ports, ports...)
	}
	return nil
}

func validPorts(where string, in []PortProtocol) ([]Port, error) {
	out := make([]Port, 0, len(in))
	for j, pp := range in {
		at := fmt.Sprintf("%s.ports[%d]", where, j)
		port := Port{Protocol: pp.Protocol}
		switch pp.Protocol {
		case "":
			port.Protocol = "ANY"
		case "TCP", "UDP", "SCTP", "ANY":
		default:
			return nil, fmt.Errorf("%s.protocol: %q is not TCP, UDP, SCTP or ANY", at, pp.Protocol)
		}
		switch n, err := strconv.ParseUint(pp.Port, 10, 16); {
		case pp.Port == "":
			// No port: every port of the protocol, as port "0".
		case err == nil:
			port.Port = uint16(n)
		case isDigits(pp.Port):
			return nil, fmt.Errorf("%s.port: %q is not a port number (0-65535)", at, pp.Port)
		default:
			if errs := validation.IsValidPortName(pp.Port); len(errs) > 0 {
				return nil, fmt.Errorf("%s.port: %q is neither a port number nor a valid port name: %s", at, pp.Port, strings.Join(errs, "; "))
			}
			port.Name = pp.Port
		}
		if pp.EndPort != 0 {
			switch {
			case port.Name != "":
				return nil, fmt.Errorf("%s.endPort: a range cannot start at a named port", at)
			case pp.EndPort < 0 || pp.EndPort > 65535:
				return nil, fmt.Errorf("%s.endPort: %d is not a port number", at, pp.EndPort)
			case port.Port == 0:
				return nil, fmt.Errorf("%s.endPort: a range needs a start port", at)
			case int(pp.EndPort) < int(port.Port):
				return nil, fmt.Errorf("%s.endPort: %d is below port %d", at, pp.EndPort, port.Port)
			}
			port.EndPort = uint16(pp.EndPort)
		}
		out = append(out, port)
	}
	return out, nil
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

func (r *L7Rules) empty() bool {
	return r.HTTP == nil && r.DNS == nil && r.Kafka == nil && r.L7Proto == "" && r.L7 == nil
}

// validL7 checks layer 7 rules even before Aegis enforces them, so a
// policy that would fail later fails now.
func validL7(where string, egress bool, r *L7Rules) error {
	if r == nil {
		return nil
	}
	kinds := 0
	for _, set := range []bool{r.HTTP != nil, r.DNS != nil, r.Kafka != nil, r.L7Proto != "" || r.L7 != nil} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return fmt.Errorf("%s.rules: only one of http, dns, kafka and l7 may be set", where)
	}
	if r.DNS != nil && !egress {
		return fmt.Errorf("%s.rules.dns: DNS rules apply to egress only", where)
	}
	for i, d := range r.DNS {
		if err := validFQDNSelector(d); err != nil {
			return fmt.Errorf("%s.rules.dns[%d]: %w", where, i, err)
		}
	}
	for i, h := range r.HTTP {
		for field, re := range map[string]string{"method": h.Method, "path": h.Path, "host": h.Host} {
			if _, err := regexp.Compile(re); err != nil {
				return fmt.Errorf("%s.rules.http[%d].%s: invalid regular expression: %w", where, i, field, err)
			}
		}
		for j, hm := range h.HeaderMatches {
			if hm.Name == "" {
				return fmt.Errorf("%s.rules.http[%d].headerMatches[%d].name: required", where, i, j)
			}
		}
	}
	return nil
}

// fqdnChars is what Cilium allows in matchName and matchPattern.
var fqdnChars = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)

func validFQDNSelector(f FQDNSelector) error {
	switch {
	case f.MatchName == "" && f.MatchPattern == "":
		return errors.New("one of matchName and matchPattern is required")
	case f.MatchName != "" && f.MatchPattern != "":
		return errors.New("only one of matchName and matchPattern may be set")
	case f.MatchName != "" && (strings.Contains(f.MatchName, "*") || !fqdnChars.MatchString(f.MatchName)):
		return fmt.Errorf("matchName %q: only letters, digits, '-', '_' and '.' are allowed", f.MatchName)
	case f.MatchPattern != "" && !fqdnChars.MatchString(f.MatchPattern):
		return fmt.Errorf("matchPattern %q: only letters, digits, '-', '_', '.' and '*' are allowed", f.MatchPattern)
	case len(f.MatchName) > 255 || len(f.MatchPattern) > 255:
		return errors.New("name longer than 255 characters")
	}
	return nil
}
