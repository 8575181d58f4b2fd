package agent

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/aegis-cni/aegis/daemon/api"
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
	dst, err := a.resolvePeer(v, req.Destination)
	if err != nil {
		return nil, fmt.Errorf("%w: destination: %v", api.ErrBadRequest, err)
	}
	resp := &api.TraceResponse{Source: src, Destination: dst, Verdict: "FORWARDED"}
	judge := func(local, remote uint32, dir policy.Direction) {
		e, enforced := v.compiled.Lookup(local, remote, dir, proto, req.Port)
		step := api.TraceStep{Direction: dir.String(), Local: local, Remote: remote, Enforced: enforced, Verdict: "allowed"}
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
		default:
			step.Reason, step.Rule = "allowed by rule", RuleName(v.compiled.Rules[e.Cookie])
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
