package policy

// Lookup answers what the datapath answers for the first packet of a new
// connection between local and remote in dir, so tests and `aegis policy
// trace` can ask the compiled policy the datapath's question. enforced is
// false when no policy selects local in dir: the packet is allowed.
//
// Precedence, exactly as in the datapath (bpf/src/policy.h):
//
//  1. longest port-prefix match on (local, remote, dir, proto)
//  2. exact (local, remote, dir, any protocol, all ports)
//  3. longest port-prefix match on (local, any remote, dir, proto)
//  4. exact (local, any remote, dir, any protocol, all ports)
//
// A deny among the candidates wins: an explicit deny beats any allow, in
// whichever candidate either sits (nestDenies made sure the longest match
// of one group cannot hide a deny of the same group). Otherwise the first
// candidate found decides, in the order above, so the verdict names the
// most specific rule. No candidate at all is the default deny, with the
// cookie of the policy that put the direction in default deny. Only a non-deny entry can be "found" in the second pass:
// allows and proxy redirects alike.
func (r *Result) Lookup(local, remote uint32, dir Direction, proto uint8, port uint16) (e Entry, enforced bool) {
	if r == nil {
		return Entry{}, false
	}
	ip := r.Identities[local]
	if ip == nil || !ip.enforced(dir) {
		return Entry{}, false
	}
	var cands [4]Entry
	var found [4]bool
	cands[0], found[0] = ip.longestMatch(Key{Local: local, Remote: remote, Dir: dir, Proto: proto, Port: port})
	cands[1], found[1] = ip.Entries[Key{Local: local, Remote: remote, Dir: dir, Proto: ProtoAny}]
	cands[2], found[2] = ip.longestMatch(Key{Local: local, Remote: IdentityAny, Dir: dir, Proto: proto, Port: port})
	cands[3], found[3] = ip.Entries[Key{Local: local, Remote: IdentityAny, Dir: dir, Proto: ProtoAny}]
	// Among several denies the most specific names the verdict, as in the
	// datapath, so a trace and a flow name one rule.
	for i := range cands {
		if found[i] && cands[i].Action == ActionDeny {
			return cands[i], true
		}
	}
	for i := range cands {
		if found[i] {
			return cands[i], true
		}
	}
	return Entry{Action: ActionDeny, Cookie: ip.defaultCookie(dir)}, true
}

func (ip *IdentityPolicy) defaultCookie(dir Direction) uint32 {
	if dir == Egress {
		return ip.EgressDefault
	}
	return ip.IngressDefault
}

func (ip *IdentityPolicy) enforced(dir Direction) bool {
	if dir == Egress {
		return ip.EgressEnforced
	}
	return ip.IngressEnforced
}

// longestMatch is the LPM trie lookup: k's port, most specific prefix
// first.
func (ip *IdentityPolicy) longestMatch(k Key) (Entry, bool) {
	port := k.Port
	for plen := 16; plen >= 0; plen-- {
		k.PortPrefixLen = uint8(plen)
		k.Port = port & portMask(uint8(plen))
		if e, ok := ip.Entries[k]; ok {
			return e, true
		}
	}
	return Entry{}, false
}
