// Package identity hands out numeric identities: a pod's label set
// (namespace, pod labels, namespace labels) or a CIDR prefix to a number
// that policy is keyed by. Numbers are node-local (packets carry no
// identity across nodes in an overlay without encapsulation of ours, so
// each node only needs to agree with itself) and stable: allocations are
// persisted, so a restart maps every label set to the number it had.
package identity

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/state"
)

// Labels is a pod identity's label set.
type Labels struct {
	Namespace       string            `json:"namespace"`
	Pod             map[string]string `json:"labels,omitempty"`
	NamespaceLabels map[string]string `json:"namespaceLabels,omitempty"`
}

// Key is the canonical text of a label set, the allocator's key.
func (l Labels) Key() string {
	var b strings.Builder
	b.WriteString("ns=")
	b.WriteString(l.Namespace)
	for _, k := range slices.Sorted(maps.Keys(l.Pod)) {
		fmt.Fprintf(&b, ";k8s:%s=%s", k, l.Pod[k])
	}
	for _, k := range slices.Sorted(maps.Keys(l.NamespaceLabels)) {
		fmt.Fprintf(&b, ";ns:%s=%s", k, l.NamespaceLabels[k])
	}
	return b.String()
}

// Reserved lists the reserved identities every node knows.
var Reserved = []policy.Identity{
	{ID: policy.IdentityHost, Reserved: "host"},
	{ID: policy.IdentityWorld, Reserved: "world"},
	{ID: policy.IdentityRemoteNode, Reserved: "remote-node"},
	{ID: policy.IdentityKubeAPIServer, Reserved: "kube-apiserver"},
}

type record struct {
	ID      uint32        `json:"id"`
	Labels  *Labels       `json:"labels,omitempty"`
	CIDR    *netip.Prefix `json:"cidr,omitempty"`
	Service string        `json:"service,omitempty"`
}

// Allocator maps label sets and prefixes to identities.
type Allocator struct {
	mu          sync.Mutex
	path        string
	byKey       map[string]record
	nextPod     uint32
	nextCIDR    uint32
	nextService uint32
	// numbers and all are derived from byKey, rebuilt only on change.
	numbers map[string]uint32
	all     []policy.Identity
}

// NewAllocator loads the allocations persisted at path (if any).
func NewAllocator(path string) (*Allocator, error) {
	a := &Allocator{path: path, byKey: map[string]record{}, nextPod: policy.FirstPodIdentity, nextCIDR: policy.FirstCIDRIdentity, nextService: FirstServiceIdentity}
	var recs []record
	if _, err := state.ReadJSON(path, &recs); err != nil {
		return nil, fmt.Errorf("load identities: %w", err)
	}
	for _, r := range recs {
		switch {
		case r.Labels != nil:
			a.byKey[r.Labels.Key()] = r
			a.nextPod = max(a.nextPod, r.ID+1)
		case r.CIDR != nil:
			a.byKey[cidrKey(*r.CIDR)] = r
			a.nextCIDR = max(a.nextCIDR, r.ID+1)
		case r.Service != "":
			a.byKey[ServiceKey(r.Service)] = r
			a.nextService = max(a.nextService, r.ID+1)
		}
	}
	return a, nil
}

func cidrKey(p netip.Prefix) string { return "cidr=" + p.Masked().String() }

// FirstServiceIdentity is the first number handed to a ClusterIP service.
// Service identities are not policy peers (no selector selects them); the
// ipcache maps a ClusterIP to one so the datapath can judge traffic to it
// by the pods behind it.
const FirstServiceIdentity uint32 = 1 << 23

// ServiceKey is the key Sync's result uses for a service "namespace/name".
func ServiceKey(nsName string) string { return "service=" + nsName }

// Sync makes the allocator hold exactly the given label sets and prefixes:
// known ones keep their numbers, new ones get fresh numbers, the rest are
// released. It returns the number of every key, and every identity held
// (reserved ones included, ordered by number) for the compiler; both are
// persisted when anything changed.
func (a *Allocator) Sync(pods []Labels, cidrs []netip.Prefix, services []string) (map[string]uint32, []policy.Identity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	want := make(map[string]record, len(pods)+len(cidrs)+len(services))
	changed := false
	// keep holds on to the number a key has, or hands out the next one of
	// its kind.
	keep := func(k string, next *uint32, fill func(*record)) {
		if _, ok := want[k]; ok {
			return
		}
		r, ok := a.byKey[k]
		if !ok {
			r = record{ID: *next}
			fill(&r)
			*next++
			changed = true
		}
		want[k] = r
	}
	for _, l := range pods {
		keep(l.Key(), &a.nextPod, func(r *record) { l := l; r.Labels = &l })
	}
	for _, p := range cidrs {
		keep(cidrKey(p), &a.nextCIDR, func(r *record) { p := p.Masked(); r.CIDR = &p })
	}
	for _, svc := range services {
		keep(ServiceKey(svc), &a.nextService, func(r *record) { r.Service = svc })
	}
	if len(want) != len(a.byKey) {
		changed = true
	}
	a.byKey = want
	if changed || a.all == nil {
		a.numbers = make(map[string]uint32, len(want))
		for k, r := range want {
			a.numbers[k] = r.ID
		}
		a.all = a.identities()
	}
	if changed {
		recs := slices.SortedFunc(maps.Values(want), func(x, y record) int { return cmp.Compare(x.ID, y.ID) })
		if err := state.WriteJSON(a.path, recs); err != nil {
			return a.numbers, a.all, fmt.Errorf("persist identities: %w", err)
		}
	}
	return a.numbers, a.all, nil
}

// CIDRKey is the key Sync's result uses for a prefix.
func CIDRKey(p netip.Prefix) string { return cidrKey(p) }

// identities lists every identity policy can name (reserved, pods,
// CIDRs); service identities are left out.
func (a *Allocator) identities() []policy.Identity {
	out := slices.Clone(Reserved)
	for _, r := range a.byKey {
		if r.Service != "" {
			continue
		}
		id := policy.Identity{ID: r.ID}
		if r.Labels != nil {
			id.Namespace = r.Labels.Namespace
			id.Labels = r.Labels.Pod
			id.NamespaceLabels = r.Labels.NamespaceLabels
		} else if r.CIDR != nil {
			id.CIDR = *r.CIDR
		}
		out = append(out, id)
	}
	slices.SortFunc(out, func(x, y policy.Identity) int { return cmp.Compare(x.ID, y.ID) })
	return out
}
