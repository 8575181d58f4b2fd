package agent

import (
	"net/netip"

	"github.com/aegis-cni/aegis/daemon/endpoint"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// names is what flow enrichment reads on every event: immutable, swapped
// whole after each change, so the observer never waits for a
// regeneration.
type names struct {
	byIP   map[netip.Addr]observe.Peer
	labels map[uint32][]string
	rules  map[uint32]policy.RuleRef
}

// publishNames rebuilds the enrichment tables from the view.
func (a *Agent) publishNames(v *view, eps []endpoint.Endpoint) {
	n := &names{byIP: map[netip.Addr]observe.Peer{}, labels: make(map[uint32][]string, len(v.identities)), rules: v.compiled.Rules}
	for _, id := range v.identities {
		n.labels[id.ID] = labelStrings(id)
	}
	for _, p := range v.pods.remote {
		id := v.byKey[v.pods.labels(p.Namespace, p.Name).Key()]
		for _, ip := range podIPs(p) {
			n.byIP[ip] = observe.Peer{Identity: id, Namespace: p.Namespace, PodName: p.Name, Labels: n.labels[id]}
		}
	}
	for _, ep := range eps {
		a.nameEndpoint(n, ep)
	}
	a.names.Store(n)
}

func (a *Agent) nameEndpoint(n *names, ep endpoint.Endpoint) {
	for _, ip := range ep.IPs {
		n.byIP[ip] = observe.Peer{Identity: ep.Identity, EndpointID: ep.ID, Namespace: ep.PodNamespace, PodName: ep.PodName, Labels: n.labels[ep.Identity]}
	}
}

// renameEndpoint updates the tables for one endpoint added (or removed,
// when gone) by a fast path: a copy of the address table, the rest shared.
func (a *Agent) renameEndpoint(ep endpoint.Endpoint, gone bool) {
	old := a.names.Load()
	if old == nil {
		return
	}
	n := &names{byIP: make(map[netip.Addr]observe.Peer, len(old.byIP)+1), labels: old.labels, rules: old.rules}
	for k, v := range old.byIP {
		n.byIP[k] = v
	}
	if gone {
		for _, ip := range ep.IPs {
			delete(n.byIP, ip)
		}
	} else {
		a.nameEndpoint(n, ep)
	}
	a.names.Store(n)
}

// Peer implements observe.Resolver.
func (a *Agent) Peer(ip netip.Addr, identity uint32) observe.Peer {
	n := a.names.Load()
	if n == nil {
		return observe.Peer{Identity: identity}
	}
	if p, ok := n.byIP[ip]; ok {
		return p
	}
	return observe.Peer{Identity: identity, Labels: n.labels[identity]}
}

// Rule implements observe.Resolver.
func (a *Agent) Rule(cookie uint32) (policy.RuleRef, bool) {
	n := a.names.Load()
	if n == nil {
		return policy.RuleRef{}, false
	}
	r, ok := n.rules[cookie]
	return r, ok
}

// NodeName implements observe.Resolver.
func (a *Agent) NodeName() string { return a.cfg.NodeName }
