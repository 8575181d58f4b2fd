package policy

import (
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// add adds e (an allow or a deny) to local's entries for traffic in dir
// with the remotes, on the rule's ports. Ports were validated, so numbers
// fit in 16 bits.
func (c *compiler) add(local uint32, dir Direction, rs remotes, ports []networkingv1.NetworkPolicyPort, e Entry) {
	entries := c.res.Identities[local].Entries
	put := func(remote uint32, proto uint8, pp PortPrefix) {
		k := Key{Local: local, Remote: remote, Dir: dir, Proto: proto, Port: pp.Port, PortPrefixLen: pp.PrefixLen}
		putEntry(entries, k, e)
	}
	eachRemote := func(f func(remote uint32)) {
		if rs.any {
			f(IdentityAny)
			return
		}
		for _, r := range rs.ids {
			f(r)
		}
	}

	if len(ports) == 0 {
		eachRemote(func(r uint32) { put(r, ProtoAny, PortPrefix{}) })
		return
	}
	for _, p := range ports {
		proto := protoNumber(p.Protocol)
		switch {
		case p.Port == nil:
			eachRemote(func(r uint32) { put(r, proto, PortPrefix{}) })
		case p.Port.Type == intstr.Int:
			last := p.Port.IntVal
			if p.EndPort != nil {
				last = *p.EndPort
			}
			pps := PortPrefixes(uint16(p.Port.IntVal), uint16(last))
			eachRemote(func(r uint32) {
				for _, pp := range pps {
					put(r, proto, pp)
				}
			})
		case dir == Ingress:
			// The destination is local: the name means the local pods'
			// port.
			for _, port := range resolveNamedPort(c.namedPorts[local], p.Port.StrVal, proto) {
				eachRemote(func(r uint32) { put(r, proto, PortPrefix{Port: port, PrefixLen: 16}) })
			}
		default:
			// The destination is remote: the name means each remote's own
			// port, so entries are per remote even when the rule has no
			// peers.
			c.allowNamedEgress(rs, p.Port.StrVal, proto, put)
		}
	}
}

func (c *compiler) allowNamedEgress(rs remotes, name string, proto uint8, put func(uint32, uint8, PortPrefix)) {
	add := func(r uint32) {
		for _, port := range resolveNamedPort(c.namedPorts[r], name, proto) {
			put(r, proto, PortPrefix{Port: port, PrefixLen: 16})
		}
	}
	if !rs.any {
		for _, r := range rs.ids {
			add(r)
		}
		return
	}
	for r := range c.namedPorts {
		add(r)
	}
}
