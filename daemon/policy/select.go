package policy

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// isPod reports whether id is a pod identity: neither reserved nor CIDR.
func (id *Identity) isPod() bool {
	return id.Reserved == "" && !id.CIDR.IsValid()
}

// identityIndex sorts the known identities by kind once per compile, so
// peer selection scans only the kind it can select.
type identityIndex struct {
	byID     map[uint32]*Identity
	pods     []*Identity // by ID
	cidrs    []*Identity // by ID, CIDR masked
	reserved []*Identity // by ID
	// labelSets caches the Cilium label view of each identity, built on
	// first use by a Cilium selector.
	labelSets map[uint32]cnp.Labels
	// byAddr is cidrs ordered by address, then prefix length: the
	// identities inside one prefix are a contiguous run of it.
	byAddr []*Identity
}

func newIdentityIndex(ids []Identity) *identityIndex {
	x := &identityIndex{byID: make(map[uint32]*Identity, len(ids))}
	for i := range ids {
		id := &ids[i]
		if _, dup := x.byID[id.ID]; dup {
			continue
		}
		x.byID[id.ID] = id
		switch {
		case id.CIDR.IsValid():
			x.cidrs = append(x.cidrs, id)
		case id.isPod():
			x.pods = append(x.pods, id)
		default:
			x.reserved = append(x.reserved, id)
		}
	}
	byID := func(a, b *Identity) int { return cmp.Compare(a.ID, b.ID) }
	slices.SortFunc(x.pods, byID)
	slices.SortFunc(x.cidrs, byID)
	slices.SortFunc(x.reserved, byID)
	x.byAddr = slices.Clone(x.cidrs)
	slices.SortFunc(x.byAddr, func(a, b *Identity) int {
		if c := a.CIDR.Addr().Compare(b.CIDR.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.CIDR.Bits(), b.CIDR.Bits())
	})
	return x
}

// remotes is the set of remote identities a rule's peers select.
type remotes struct {
	any bool     // the rule has no peers: every remote, IdentityAny
	ids []uint32 // sorted, unique; empty with !any means nothing
}

// peers resolves a rule's from/to list. Each peer adds to the set: peers
// are ORed, and the selectors within one peer are ANDed.
func (x *identityIndex) peers(namespace string, list []networkingv1.NetworkPolicyPeer) (remotes, error) {
	if len(list) == 0 {
		return remotes{any: true}, nil
	}
	var ids []uint32
	for i := range list {
		sel, err := x.peer(namespace, &list[i])
		if err != nil {
			return remotes{}, err
		}
		ids = append(ids, sel...)
	}
	slices.Sort(ids)
	return remotes{ids: slices.Compact(ids)}, nil
}

func (x *identityIndex) peer(namespace string, p *networkingv1.NetworkPolicyPeer) ([]uint32, error) {
	if p.IPBlock != nil {
		return x.ipBlock(p.IPBlock)
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return nil, nil // Validate rejects an empty peer; it selects nothing
	}
	podSel, err := asSelector(p.PodSelector)
	if err != nil {
		return nil, err
	}
	nsSel, err := asSelector(p.NamespaceSelector)
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, id := range x.pods {
		// Without a namespaceSelector the peer means the policy's own
		// namespace.
		if p.NamespaceSelector == nil && id.Namespace != namespace {
			continue
		}
		if nsSel != nil && !nsSel.Matches(labels.Set(id.NamespaceLabels)) {
			continue
		}
		if podSel != nil && !podSel.Matches(labels.Set(id.Labels)) {
			continue
		}
		ids = append(ids, id.ID)
	}
	return ids, nil
}

// asSelector converts an optional selector; nil means "no constraint".
func asSelector(sel *metav1.LabelSelector) (labels.Selector, error) {
	if sel == nil {
		return nil, nil
	}
	return metav1.LabelSelectorAsSelector(sel)
}

// ipBlock selects the CIDR identities inside cidr and outside every except.
// Following Cilium, an ipBlock never selects pod, host or remote-node
// identities: traffic from a pod carries the pod's identity even when its
// address is inside the block. The ipcache maps an address to the longest
// prefix it knows, which is why CIDRs asks for an identity per except too:
// an address in an except range resolves to that except's identity, which is
// not selected here. Only a /0 reaches addresses outside every known
// prefix, which the ipcache maps to world.
func (x *identityIndex) ipBlock(b *networkingv1.IPBlock) ([]uint32, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return nil, err
	}
	excepts := make([]netip.Prefix, 0, len(b.Except))
	for _, s := range b.Except {
		e, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		excepts = append(excepts, e.Masked())
	}
	return x.cidrBlock(cidr, excepts), nil
}

// cidrBlock selects the CIDR identities inside cidr and outside every
// except, and world when cidr is a /0; see ipBlock.
func (x *identityIndex) cidrBlock(cidr netip.Prefix, excepts []netip.Prefix) []uint32 {
	cidr = cidr.Masked()
	var ids []uint32
	if cidr.Bits() == 0 {
		ids = append(ids, IdentityWorld)
	}
	// Binary search to the first prefix at or after cidr's address; every
	// prefix inside cidr follows in one run.
	start, _ := slices.BinarySearchFunc(x.byAddr, cidr.Addr(), func(id *Identity, a netip.Addr) int {
		return id.CIDR.Addr().Compare(a)
	})
	for _, id := range x.byAddr[start:] {
		if id.CIDR.Addr().BitLen() != cidr.Addr().BitLen() || !cidr.Contains(id.CIDR.Addr()) {
			break
		}
		if !prefixContains(cidr, id.CIDR) {
			continue
		}
		if slices.ContainsFunc(excepts, func(e netip.Prefix) bool { return prefixContains(e, id.CIDR) }) {
			continue
		}
		ids = append(ids, id.ID)
	}
	slices.Sort(ids)
	return ids
}

// labels is id's label set as Cilium selectors see it.
func (x *identityIndex) labels(id *Identity) cnp.Labels {
	if l, ok := x.labelSets[id.ID]; ok {
		return l
	}
	if x.labelSets == nil {
		x.labelSets = make(map[uint32]cnp.Labels, len(x.byID))
	}
	var l cnp.Labels
	switch {
	case id.isPod():
		l = cnp.PodLabels(id.Namespace, id.Labels, id.NamespaceLabels)
	case id.CIDR.IsValid():
		l = cnp.ReservedLabels("world")
	default:
		l = cnp.ReservedLabels(id.Reserved)
	}
	x.labelSets[id.ID] = l
	return l
}

// prefixContains reports whether inner lies entirely inside outer.
func prefixContains(outer, inner netip.Prefix) bool {
	return outer.Addr().BitLen() == inner.Addr().BitLen() &&
		inner.Bits() >= outer.Bits() &&
		outer.Masked().Contains(inner.Addr())
}
