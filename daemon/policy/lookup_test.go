package policy

import "testing"

// TestLookupPrecedence pins the datapath's order of candidates: a deny in
// any of them wins, else the first found of (remote, proto/port), (remote,
// any), (any, proto/port), (any, any).
func TestLookupPrecedence(t *testing.T) {
	const l, r = 300, 400
	k := func(remote uint32, proto uint8, port uint16, plen uint8) Key {
		return Key{Local: l, Remote: remote, Dir: Egress, Proto: proto, Port: port, PortPrefixLen: plen}
	}
	allow := func(c uint32) Entry { return Entry{Action: ActionAllow, Cookie: c} }
	deny := func(c uint32) Entry { return Entry{Action: ActionDeny, Cookie: c} }

	for _, tc := range []struct {
		name    string
		entries map[Key]Entry
		want    Entry
	}{
		{"no entry is the default deny", nil, Entry{Action: ActionDeny, Cookie: CookieNone}},
		{"remote port beats remote any", map[Key]Entry{
			k(r, ProtoTCP, 80, 16): allow(10), k(r, ProtoAny, 0, 0): allow(11),
		}, allow(10)},
		{"longest prefix wins within a group", map[Key]Entry{
			k(r, ProtoTCP, 0, 0): allow(10), k(r, ProtoTCP, 0, 9): allow(11), k(r, ProtoTCP, 80, 16): allow(12),
		}, allow(12)},
		{"remote any beats any port", map[Key]Entry{
			k(r, ProtoAny, 0, 0): allow(11), k(IdentityAny, ProtoTCP, 80, 16): allow(12),
		}, allow(11)},
		{"any port beats any any", map[Key]Entry{
			k(IdentityAny, ProtoTCP, 0, 8): allow(12), k(IdentityAny, ProtoAny, 0, 0): allow(13),
		}, allow(12)},
		{"any any alone", map[Key]Entry{k(IdentityAny, ProtoAny, 0, 0): allow(13)}, allow(13)},
		{"deny in the last candidate beats allow in the first", map[Key]Entry{
			k(r, ProtoTCP, 80, 16): allow(10), k(IdentityAny, ProtoAny, 0, 0): deny(13),
		}, deny(13)},
		{"deny for the remote on any port beats a port allow", map[Key]Entry{
			k(r, ProtoTCP, 80, 16): allow(10), k(r, ProtoAny, 0, 0): deny(11),
		}, deny(11)},
		{"most specific deny names the verdict, as in the datapath", map[Key]Entry{
			k(r, ProtoTCP, 80, 16): deny(10), k(r, ProtoAny, 0, 0): deny(11), k(IdentityAny, ProtoTCP, 80, 16): deny(12),
		}, deny(10)},
		{"other protocol does not match", map[Key]Entry{k(r, ProtoUDP, 80, 16): allow(10)},
			Entry{Action: ActionDeny, Cookie: CookieNone}},
		{"other port does not match", map[Key]Entry{k(r, ProtoTCP, 81, 16): allow(10)},
			Entry{Action: ActionDeny, Cookie: CookieNone}},
		{"redirect counts as found", map[Key]Entry{
			k(r, ProtoTCP, 80, 16): {Action: ActionRedirectL7, ProxyPort: 15001, Cookie: 10}, k(IdentityAny, ProtoAny, 0, 0): allow(13),
		}, Entry{Action: ActionRedirectL7, ProxyPort: 15001, Cookie: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &Result{Identities: map[uint32]*IdentityPolicy{l: {EgressEnforced: true, Entries: tc.entries}}}
			got, enforced := res.Lookup(l, r, Egress, ProtoTCP, 80)
			if !enforced || got != tc.want {
				t.Errorf("Lookup = %+v, %v; want %+v, true", got, enforced, tc.want)
			}
		})
	}
}

func TestLookupNotEnforced(t *testing.T) {
	res := &Result{Identities: map[uint32]*IdentityPolicy{
		300: {IngressEnforced: true, Entries: map[Key]Entry{}},
	}}
	for _, tc := range []struct {
		local uint32
		dir   Direction
		want  bool
	}{{300, Ingress, true}, {300, Egress, false}, {301, Ingress, false}} {
		if _, enforced := res.Lookup(tc.local, 2, tc.dir, ProtoTCP, 80); enforced != tc.want {
			t.Errorf("Lookup(%d, %v): enforced = %v, want %v", tc.local, tc.dir, enforced, tc.want)
		}
	}
	var nilRes *Result
	if e, enforced := nilRes.Lookup(300, 2, Ingress, ProtoTCP, 80); enforced || e != (Entry{}) {
		t.Errorf("nil Result: Lookup = %+v, %v", e, enforced)
	}
}
