package policy

import (
	"net/netip"
	"slices"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"

	networkingv1 "k8s.io/api/networking/v1"
)

// CIDRs returns the prefixes the policies need CIDR identities for: every
// ipBlock cidr and except, every Cilium CIDR and except, masked, without duplicates, sorted (IPv4 first).
// The excepts matter as much as the cidrs: the ipcache resolves an address
// to its longest known prefix, and only an identity of its own keeps an
// address in an except range from resolving to the enclosing cidr's
// identity. 0.0.0.0/0 and ::/0 are left out: they mean world plus every
// CIDR identity. Invalid prefixes are skipped; Validate reports them.
func CIDRs(nps []*networkingv1.NetworkPolicy, cps []*cnp.Policy) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	addPrefix := func(p netip.Prefix) {
		if p.IsValid() && p.Bits() != 0 && !p.Addr().Is4In6() {
			seen[p.Masked()] = true
		}
	}
	add := func(s string) {
		p, err := netip.ParsePrefix(s)
		if err == nil {
			addPrefix(p)
		}
	}
	addPeers := func(peers []networkingv1.NetworkPolicyPeer) {
		for _, peer := range peers {
			if peer.IPBlock == nil {
				continue
			}
			add(peer.IPBlock.CIDR)
			for _, e := range peer.IPBlock.Except {
				add(e)
			}
		}
	}
	for _, np := range nps {
		if np == nil {
			continue
		}
		for _, r := range np.Spec.Ingress {
			addPeers(r.From)
		}
		for _, r := range np.Spec.Egress {
			addPeers(r.To)
		}
	}
	for _, cp := range cps {
		if cp == nil {
			continue
		}
		for _, cr := range cp.Compiled {
			for _, sec := range [][]cnp.PeerRule{cr.Ingress, cr.IngressDeny, cr.Egress, cr.EgressDeny} {
				for _, pr := range sec {
					for _, cs := range pr.CIDRs {
						addPrefix(cs.Prefix)
						for _, e := range cs.Except {
							addPrefix(e)
						}
					}
				}
			}
		}
	}
	out := make([]netip.Prefix, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// comparePrefix orders by address (IPv4 before IPv6), then shorter prefix
// first.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
