package agent

import (
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/cilium/cilium/api/v1/flow"
	corev1 "k8s.io/api/core/v1"

	"github.com/aegis-cni/aegis/daemon/endpoint"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// names is what flow enrichment reads on every event: immutable, swapped
// whole after each change, so the observer never waits for a
// regeneration.
type names struct {
	version   uint64
	byIP      map[netip.Addr]observe.Peer
	labels    map[uint32][]string
	rules     map[uint32]policy.RuleRef
	workloads map[string][]*flow.Workload // by namespace/name
}

// namesVersion numbers the tables, so that the observer knows what it
// resolved is still true without asking again for every event.
var namesVersion atomic.Uint64

// publishNames rebuilds the enrichment tables from the view.
func (a *Agent) publishNames(v *view, eps []endpoint.Endpoint) {
	n := &names{version: namesVersion.Add(1), byIP: map[netip.Addr]observe.Peer{}, labels: make(map[uint32][]string, len(v.identities)), rules: v.compiled.Rules,
		workloads: map[string][]*flow.Workload{}}
	for _, id := range v.identities {
		n.labels[id.ID] = labelStrings(id)
	}
	for key, p := range v.pods.pods {
		if w := workloadOf(p); w != nil {
			n.workloads[key] = w
		}
	}
	for _, p := range v.pods.remote {
		id := v.byKey[v.pods.labels(p.Namespace, p.Name).Key()]
		for _, ip := range podIPs(p) {
			n.byIP[ip] = observe.Peer{Identity: id, Namespace: p.Namespace, PodName: p.Name, Labels: n.labels[id],
				Workloads: n.workloads[p.Namespace+"/"+p.Name]}
		}
	}
	for _, ep := range eps {
		a.nameEndpoint(n, ep)
	}
	a.names.Store(n)
}

func (a *Agent) nameEndpoint(n *names, ep endpoint.Endpoint) {
	for _, ip := range ep.IPs {
		n.byIP[ip] = observe.Peer{Identity: ep.Identity, EndpointID: ep.ID, Namespace: ep.PodNamespace, PodName: ep.PodName, Labels: n.labels[ep.Identity],
			Workloads: n.workloads[ep.PodNamespace+"/"+ep.PodName]}
	}
}

// renameEndpoint updates the tables for one endpoint added (or removed,
// when gone) by a fast path: a copy of the address table, the rest shared.
func (a *Agent) renameEndpoint(ep endpoint.Endpoint, gone bool) {
	old := a.names.Load()
	if old == nil {
		return
	}
	n := &names{version: namesVersion.Add(1), byIP: make(map[netip.Addr]observe.Peer, len(old.byIP)+1), labels: old.labels, rules: old.rules, workloads: old.workloads}
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

// NamesVersion implements observe.Versioned.
func (a *Agent) NamesVersion() uint64 {
	if n := a.names.Load(); n != nil {
		return n.version
	}
	return 0
}

// NodeName implements observe.Resolver.
func (a *Agent) NodeName() string { return a.cfg.NodeName }

// workloadOf names the workload a pod belongs to, as Hubble does: its
// controller, and for a ReplicaSet that a Deployment made (its name is the
// Deployment's plus the pod template hash), the Deployment.
func workloadOf(p *corev1.Pod) []*flow.Workload {
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		name, kind := o.Name, o.Kind
		if hash := p.Labels["pod-template-hash"]; kind == "ReplicaSet" && hash != "" {
			if base, ok := strings.CutSuffix(name, "-"+hash); ok {
				name, kind = base, "Deployment"
			}
		}
		return []*flow.Workload{{Name: name, Kind: kind}}
	}
	return nil
}
