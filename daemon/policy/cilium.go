package policy

import (
	"cmp"
	"slices"
	"strconv"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	corev1 "k8s.io/api/core/v1"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// sortedCilium returns the Cilium policies by kind, namespace and name, so
// a fresh jar hands out the same cookies for the same policies.
func sortedCilium(in []*cnp.Policy) []*cnp.Policy {
	out := make([]*cnp.Policy, 0, len(in))
	for _, p := range in {
		if p != nil {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b *cnp.Policy) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// ciliumPolicy adds the entries of one CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy. Semantics that differ from
// NetworkPolicy, all following Cilium:
//   - a rule enforces a direction only if it has rules for it: `egress: []`
//     leaves egress alone, `egress: [{}]` enters default deny and allows
//     nothing (see cnp.CompiledRule and cnp.PeerRule);
//   - enableDefaultDeny false lets a rule add allows (and denies) without
//     putting its subjects in default deny;
//   - deny rules beat allow rules, whichever policies they come from.
func (c *compiler) ciliumPolicy(p *cnp.Policy) {
	kind := KindCiliumPolicy
	if p.Kind == cnp.KindCCNP {
		kind = KindClusterwide
	}
	for _, cr := range p.Compiled {
		var selected []*Identity
		for _, id := range c.locals {
			if cr.Subject.Matches(c.ids.labels(id)) {
				selected = append(selected, id)
			}
		}
		sections := []struct {
			name  string
			dir   Direction
			rules []cnp.PeerRule
			act   Action
		}{
			{"ingress", Ingress, cr.Ingress, ActionAllow},
			{"ingressDeny", Ingress, cr.IngressDeny, ActionDeny},
			{"egress", Egress, cr.Egress, ActionAllow},
			{"egressDeny", Egress, cr.EgressDeny, ActionDeny},
		}
		for _, s := range sections {
			for i := range s.rules {
				pr := &s.rules[i]
				ref := RuleRef{Kind: kind, Namespace: p.Namespace, Name: p.Name, Dir: s.dir, Index: pr.Index,
					Path: cr.Path + "." + s.name + "[" + strconv.Itoa(pr.Index) + "]"}
				// Take the cookie even with no subject here, so a rule keeps
				// it while pods come and go.
				cookie := c.jar.cookie(ref)
				if len(selected) == 0 {
					continue
				}
				rs := c.ciliumRemotes(p.Namespace, pr)
				if s.act == ActionAllow && s.dir == Egress && (len(pr.FQDNs) > 0 || len(pr.DNS) > 0) {
					c.addL7(selected, rs, pr, cookie)
				}
				if s.act == ActionAllow && len(pr.HTTP) > 0 {
					c.addHTTP(selected, s.dir, rs, pr, cookie)
				}
				if !rs.any && len(rs.ids) == 0 {
					continue
				}
				ports, all := npPorts(pr)
				if !all && len(ports) == 0 {
					continue
				}
				e := Entry{Action: s.act, Cookie: cookie}
				for _, local := range selected {
					c.add(local.ID, s.dir, rs, ports, e)
				}
			}
		}
		var inCookie, egCookie uint32
		if cr.DefaultDenyIngress {
			inCookie = c.jar.cookie(RuleRef{Kind: kind, Namespace: p.Namespace, Name: p.Name, Dir: Ingress, Path: cr.Path, Default: true})
		}
		if cr.DefaultDenyEgress {
			egCookie = c.jar.cookie(RuleRef{Kind: kind, Namespace: p.Namespace, Name: p.Name, Dir: Egress, Path: cr.Path, Default: true})
		}
		for _, id := range selected {
			ip := c.res.Identities[id.ID]
			if len(cr.Ingress) > 0 || len(cr.IngressDeny) > 0 {
				ip.IngressEnforced = true
				c.defaultDeny(id.ID, Ingress, cr.DefaultDenyIngress, inCookie)
			}
			if len(cr.Egress) > 0 || len(cr.EgressDeny) > 0 {
				ip.EgressEnforced = true
				c.defaultDeny(id.ID, Egress, cr.DefaultDenyEgress, egCookie)
			}
		}
	}
}

// defaultDeny records whether a policy selecting id for dir asks for
// default deny; any one asking is enough. cookie names that policy's
// default deny; the lowest cookie names the direction's.
func (c *compiler) defaultDeny(id uint32, dir Direction, on bool, cookie uint32) {
	if c.dd == nil {
		c.dd = map[uint32]*[2]bool{}
	}
	d := c.dd[id]
	if d == nil {
		d = &[2]bool{}
		c.dd[id] = d
	}
	d[dir] = d[dir] || on
	if !on {
		return
	}
	ip := c.res.Identities[id]
	cur := &ip.IngressDefault
	if dir == Egress {
		cur = &ip.EgressDefault
	}
	if *cur == CookieNone || cookie < *cur {
		*cur = cookie
	}
}

// defaultAllows gives every direction that is enforced but that no policy
// puts in default deny an allow-all entry: its deny rules still apply (a
// deny beats any allow), everything else passes.
func (c *compiler) defaultAllows() {
	for id, ip := range c.res.Identities {
		d := c.dd[id]
		for _, dir := range []Direction{Ingress, Egress} {
			if !ip.enforced(dir) || (d != nil && d[dir]) {
				continue
			}
			k := Key{Local: id, Remote: IdentityAny, Dir: dir, Proto: ProtoAny}
			putEntry(ip.Entries, k, Entry{Action: ActionAllow, Cookie: CookieDefaultAllow})
		}
	}
}

// ciliumRemotes resolves a rule's peers to identities.
func (c *compiler) ciliumRemotes(namespace string, pr *cnp.PeerRule) remotes {
	switch {
	case pr.None:
		return remotes{}
	case pr.Wildcard:
		return remotes{any: true}
	}
	x := c.ids
	var ids []uint32
	for _, m := range pr.Endpoints {
		for _, group := range [][]*Identity{x.pods, x.reserved, x.cidrs} {
			for _, id := range group {
				if m.Matches(x.labels(id)) {
					ids = append(ids, id.ID)
				}
			}
		}
	}
	for _, e := range pr.Entities {
		switch e {
		case "all":
			return remotes{any: true}
		case "world":
			// CIDR identities are outside the cluster: world, as in
			// Cilium where they carry the reserved:world label.
			ids = append(ids, IdentityWorld)
			for _, id := range x.cidrs {
				ids = append(ids, id.ID)
			}
		case "cluster":
			ids = append(ids, IdentityHost, IdentityRemoteNode, IdentityKubeAPIServer)
			for _, id := range x.pods {
				ids = append(ids, id.ID)
			}
		case "host":
			ids = append(ids, IdentityHost)
		case "remote-node":
			ids = append(ids, IdentityRemoteNode)
		case "kube-apiserver":
			ids = append(ids, IdentityKubeAPIServer)
		}
		// health, init, unmanaged, ingress and none name peers an Aegis
		// node does not have.
	}
	for _, cs := range pr.CIDRs {
		ids = append(ids, x.cidrBlock(cs.Prefix, cs.Except)...)
	}
	slices.Sort(ids)
	return remotes{ids: slices.Compact(ids)}
}

// npPorts turns a Cilium rule's ports into NetworkPolicy ports for add.
// all: every port of every protocol (no toPorts, or port 0 of ANY among
// them, which covers the rest).
func npPorts(pr *cnp.PeerRule) (ports []networkingv1.NetworkPolicyPort, all bool) {
	if pr.AllPorts {
		return nil, true
	}
	for _, p := range pr.Ports {
		protos := []corev1.Protocol{corev1.Protocol(p.Protocol)}
		if p.Protocol == "ANY" {
			if p.Port == 0 && p.Name == "" {
				return nil, true
			}
			// Cilium expands ANY to the protocols that have ports.
			protos = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
		}
		for _, proto := range protos {
			np := networkingv1.NetworkPolicyPort{Protocol: &proto}
			switch {
			case p.Name != "":
				v := intstr.FromString(p.Name)
				np.Port = &v
			case p.Port != 0:
				v := intstr.FromInt32(int32(p.Port))
				np.Port = &v
				if p.EndPort != 0 {
					end := int32(p.EndPort)
					np.EndPort = &end
				}
			}
			ports = append(ports, np)
		}
	}
	return ports, false
}
