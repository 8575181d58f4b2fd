package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/l7proxy"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Trace answers what the datapath would do with the first packet of a
// connection from src to dst, from the same compiled policy the maps hold:
// the egress verdict where the source is a local endpoint, the ingress
// verdict where the destination is one.
func (a *Agent) Trace(req api.TraceRequest) (*api.TraceResponse, error) {
	// The view's maps change under stateMu (endpoint fast paths).
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	v := a.view
	if v.compiled == nil {
		return nil, errNotReady("no policy compiled yet")
	}
	proto, err := protoNumber(req.Protocol)
	if err != nil {
		return nil, err
	}
	src, err := a.resolvePeer(v, req.Source)
	if err != nil {
		return nil, fmt.Errorf("%w: source: %v", api.ErrBadRequest, err)
	}
	if isName(req.Destination) {
		return a.traceName(v, src, req, proto)
	}
	dst, err := a.resolvePeer(v, req.Destination)
	if err != nil {
		return nil, fmt.Errorf("%w: destination: %v", api.ErrBadRequest, err)
	}
	return a.trace(v, src, dst, req, proto)
}

// trace judges one connection between resolved peers.
func (a *Agent) trace(v view, src, dst api.TracePeer, req api.TraceRequest, proto uint8) (*api.TraceResponse, error) {
	resp := &api.TraceResponse{Source: src, Destination: dst, Verdict: "FORWARDED"}
	dstIP, dstErr := netip.ParseAddr(dst.Name)
	dstIsIP := dstErr == nil
	judge := func(local, remote uint32, dir policy.Direction) {
		e, enforced := v.compiled.Lookup(local, remote, dir, proto, req.Port)
		step := api.TraceStep{Direction: dir.String(), Local: local, Remote: remote, Enforced: enforced, Verdict: "allowed"}
		explicit := e.Action == policy.ActionDeny && e.Cookie != policy.CookieNone && !v.compiled.Rules[e.Cookie].Default
		// No rule decided: an address a toFQDNs rule learned may still
		// pass, as in the datapath.
		if enforced && e.Action == policy.ActionDeny && !explicit && dir == policy.Egress && dstIsIP {
			if cookie, ok := a.Maps().LookupFQDN(local, dstIP, proto, req.Port); ok {
				e = policy.Entry{Action: policy.ActionAllow, Cookie: cookie}
				step.Reason = "allowed by a toFQDNs rule (address learned from a DNS answer)"
			}
		}
		switch {
		case !enforced:
			step.Reason = "no policy selects the endpoint in this direction"
		case e.Action == policy.ActionDeny && e.Cookie == policy.CookieNone:
			step.Verdict, step.Reason = "denied", "default deny: no rule allows it"
		case e.Action == policy.ActionDeny && v.compiled.Rules[e.Cookie].Default:
			// The rule named is the policy that put the direction in
			// default deny.
			step.Verdict, step.Reason, step.Rule = "denied", "default deny: no rule allows it", RuleName(v.compiled.Rules[e.Cookie])
		case e.Action == policy.ActionDeny:
			step.Verdict, step.Reason, step.Rule = "denied", "denied by rule", RuleName(v.compiled.Rules[e.Cookie])
		case e.Action == policy.ActionRedirectDNS:
			step.Verdict, step.Reason, step.Rule = "proxied", "to the DNS proxy, which allows the queries its DNS rules match", RuleName(v.compiled.Rules[e.Cookie])
			if req.DNSName != "" {
				step.Verdict, step.Reason, step.Rule = a.traceQuery(v, local, remote, proto, req.Port, req.DNSName)
			}
		case e.Action == policy.ActionRedirectL7:
			step.Verdict, step.Reason, step.Rule = "proxied", "to the HTTP proxy, which allows the requests its HTTP rules match", RuleName(v.compiled.Rules[e.Cookie])
			if req.HTTPMethod != "" || req.HTTPPath != "" {
				step.Verdict, step.Reason, step.Rule = traceRequest(v, local, remote, dir, req)
			}
		default:
			if step.Reason == "" {
				step.Reason = "allowed by rule"
			}
			step.Rule = RuleName(v.compiled.Rules[e.Cookie])
		}
		if step.Verdict == "denied" {
			resp.Verdict = "DROPPED"
		}
		resp.Steps = append(resp.Steps, step)
	}
	if src.Local {
		judge(src.Identity, dst.Identity, policy.Egress)
	}
	if dst.Local {
		judge(dst.Identity, src.Identity, policy.Ingress)
	}
	if !src.Local && !dst.Local {
		return nil, fmt.Errorf("%w: neither %s nor %s is an endpoint of this node", api.ErrBadRequest, req.Source, req.Destination)
	}
	return resp, nil
}

// traceQuery says what the DNS proxy does with a query for name from local
// to the server remote.
func (a *Agent) traceQuery(v view, local, remote uint32, proto uint8, port uint16, name string) (verdict, reason, rule string) {
	rules := v.compiled.DNSPatterns(local, remote, proto, port)
	for _, r := range rules {
		for _, pat := range r.Patterns {
			sel, err := fqdn.Compile(pat.MatchName, pat.MatchPattern)
			if err == nil && sel.Matches(name) {
				return "allowed", fmt.Sprintf("the DNS proxy forwards the query for %s (matches %q)", fqdn.Normalize(name), sel.Source), RuleName(v.compiled.Rules[r.Cookie])
			}
		}
	}
	if len(rules) == 0 {
		return "denied", "the DNS proxy has no DNS rule for this server and port: the query is refused", ""
	}
	return "denied", fmt.Sprintf("no DNS rule matches %s: the DNS proxy answers REFUSED", fqdn.Normalize(name)), RuleName(v.compiled.Rules[rules[0].Cookie])
}

// traceRequest says what the HTTP rules of local's side (dir) make of a
// request; the proxy lets it through only if every side with rules does.
func traceRequest(v view, local, remote uint32, dir policy.Direction, req api.TraceRequest) (verdict, reason, rule string) {
	method, path := req.HTTPMethod, req.HTTPPath
	if method == "" {
		method = http.MethodGet
	}
	if path == "" {
		path = "/"
	}
	// The Host a client would send is not known here; rules on host do
	// not match.
	hr, err := l7proxy.TraceRequest(method, path)
	if err != nil {
		return "denied", "not a request: " + err.Error(), ""
	}
	sets := v.compiled.HTTPRules(local, remote, dir, req.Port)
	for _, s := range sets {
		if len(s.Rules) == 0 {
			return "allowed", fmt.Sprintf("the HTTP proxy forwards %s %s (a rule without conditions)", method, path), RuleName(v.compiled.Rules[s.Cookie])
		}
		for _, r := range s.Rules {
			c, err := l7proxy.Compile(r)
			if err == nil && c.Matches(hr) {
				return "allowed", fmt.Sprintf("the HTTP proxy forwards %s %s (matches method %q path %q)", method, path, r.Method, r.Path), RuleName(v.compiled.Rules[s.Cookie])
			}
		}
	}
	if len(sets) == 0 {
		return "denied", "the HTTP proxy has no HTTP rule for this peer and port: 403 Access denied", ""
	}
	return "denied", fmt.Sprintf("no HTTP rule matches %s %s: 403 Access denied", method, path), RuleName(v.compiled.Rules[sets[0].Cookie])
}

// isName reports whether s is a DNS name rather than a pod, an address or
// an entity: it has a dot and no slash, and is not an address.
func isName(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return false
	}
	return strings.Contains(s, ".") && !strings.Contains(s, "/")
}

// traceName traces a connection to a DNS name: to each address learned for
// it (for the source's identity), or, when none is, what the toFQDNs rules
// would allow after an answer.
func (a *Agent) traceName(v view, src api.TracePeer, req api.TraceRequest, proto uint8) (*api.TraceResponse, error) {
	if !src.Local {
		return nil, fmt.Errorf("%w: a DNS name destination needs a source endpoint of this node", api.ErrBadRequest)
	}
	name := fqdn.Normalize(req.Destination)
	var addrs []string
	if p := a.dnsProxy.Load(); p != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		learned, err := (*p).FQDNCache(ctx)
		cancel()
		if err == nil {
			for _, l := range learned {
				if l.Local == src.Identity && l.Name == name && !slices.Contains(addrs, l.IP.String()) {
					addrs = append(addrs, l.IP.String())
				}
			}
		}
	}
	resp := &api.TraceResponse{Source: src, Destination: api.TracePeer{Name: req.Destination, Identity: policy.IdentityWorld}, Verdict: "DROPPED"}
	for _, addr := range addrs {
		dst, err := a.resolvePeer(v, addr)
		if err != nil {
			continue
		}
		r, err := a.trace(v, src, dst, req, proto)
		if err != nil {
			continue
		}
		for i := range r.Steps {
			r.Steps[i].Reason = addr + ": " + r.Steps[i].Reason
		}
		resp.Steps = append(resp.Steps, r.Steps...)
		if r.Verdict == "FORWARDED" {
			resp.Verdict = "FORWARDED"
		}
	}
	if len(addrs) > 0 {
		return resp, nil
	}
	step := api.TraceStep{Direction: "egress", Local: src.Identity, Remote: policy.IdentityWorld, Enforced: true, Verdict: "denied",
		Reason: "no address learned for " + name + " yet, and no toFQDNs rule selects it"}
	for _, r := range v.compiled.FQDN[src.Identity] {
		for _, s := range r.Selectors {
			sel, err := fqdn.Compile(s.MatchName, s.MatchPattern)
			if err != nil || !sel.Matches(name) {
				continue
			}
			if policyCovers(r.Ports, proto, req.Port) {
				step.Reason = fmt.Sprintf("no address learned for %s yet: toFQDNs selector %q allows its addresses once a DNS answer through the proxy names them", name, sel.Source)
				step.Rule = RuleName(v.compiled.Rules[r.Cookie])
			}
		}
	}
	resp.Steps = append(resp.Steps, step)
	return resp, nil
}

func policyCovers(ports []policy.ProtoPort, proto uint8, port uint16) bool {
	for _, pp := range ports {
		if pp.Proto == policy.ProtoAny || (pp.Proto == proto && (pp.Port == 0 || pp.Port == port)) {
			return true
		}
	}
	return false
}

// resolvePeer turns "pod:ns/name" (or "ns/name"), an IP address, or an
// entity name ("world", "host") into an identity.
func (a *Agent) resolvePeer(v view, s string) (api.TracePeer, error) {
	p := api.TracePeer{Name: s}
	switch {
	case s == "world" || s == "reserved:world":
		p.Identity = policy.IdentityWorld
		return p, nil
	case s == "host" || s == "reserved:host":
		p.Identity = policy.IdentityHost
		return p, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		p.Identity = policy.IdentityWorld
		best := -1
		for pfx, id := range v.ipcache {
			if pfx.Contains(ip) && pfx.Bits() > best {
				best, p.Identity = pfx.Bits(), id
			}
		}
	} else {
		ns, name, ok := strings.Cut(strings.TrimPrefix(s, "pod:"), "/")
		if !ok {
			return p, fmt.Errorf("%q is not a pod (namespace/name), an IP or an entity (world, host)", s)
		}
		id, known := v.byKey[v.pods.labels(ns, name).Key()]
		if !known {
			return p, fmt.Errorf("pod %s/%s is not known to this node", ns, name)
		}
		p.Identity = id
	}
	p.Local = v.users[p.Identity] > 0
	return p, nil
}

func protoNumber(s string) (uint8, error) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return policy.ProtoTCP, nil
	case "UDP":
		return policy.ProtoUDP, nil
	case "SCTP":
		return policy.ProtoSCTP, nil
	case "ICMP":
		return policy.ProtoICMP, nil
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return uint8(n), nil
	}
	return 0, fmt.Errorf("%w: protocol %q: want TCP, UDP, SCTP, ICMP or a number", api.ErrBadRequest, s)
}
