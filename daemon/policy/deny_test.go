package policy

import (
	"maps"
	"testing"
)

func TestNestDenies(t *testing.T) {
	const l, r, other = 300, 400, 401
	key := func(remote uint32, proto uint8, port uint16, plen uint8) Key {
		return Key{Local: l, Remote: remote, Dir: Ingress, Proto: proto, Port: port, PortPrefixLen: plen}
	}
	allow := func(c uint32) Entry { return Entry{Action: ActionAllow, Cookie: c} }
	deny := func(c uint32) Entry { return Entry{Action: ActionDeny, Cookie: c} }

	entries := map[Key]Entry{
		key(r, ProtoTCP, 0, 6):       deny(7),  // 0-1023
		key(r, ProtoTCP, 0, 8):       deny(9),  // 0-255, nested in the one above
		key(r, ProtoTCP, 80, 16):     allow(3), // inside both denies
		key(r, ProtoTCP, 512, 7):     allow(4), // 512-1023, inside 0-1023
		key(r, ProtoTCP, 1024, 6):    allow(5), // outside
		key(r, ProtoTCP, 0, 0):       allow(6), // wider than the deny: LPM sees the deny first
		key(r, ProtoUDP, 80, 16):     allow(3), // other protocol
		key(other, ProtoTCP, 80, 16): allow(3), // other remote
		key(r, ProtoTCP, 443, 16):    {Action: ActionRedirectL7, ProxyPort: 15001, Cookie: 2},
	}
	want := maps.Clone(entries)
	want[key(r, ProtoTCP, 80, 16)] = deny(7)
	want[key(r, ProtoTCP, 512, 7)] = deny(7)
	want[key(r, ProtoTCP, 443, 16)] = deny(7)

	nestDenies(entries)
	for k, w := range want {
		if got := entries[k]; got != w {
			t.Errorf("%+v: got %+v, want %+v", k, got, w)
		}
	}
	if len(entries) != len(want) {
		t.Errorf("got %d entries, want %d", len(entries), len(want))
	}

	// What the rewrite is for: the datapath's answer.
	res := &Result{Identities: map[uint32]*IdentityPolicy{l: {IngressEnforced: true, Entries: entries}}}
	for _, tc := range []struct {
		port uint16
		want Action
	}{{80, ActionDeny}, {443, ActionDeny}, {1000, ActionDeny}, {1024, ActionAllow}, {5000, ActionAllow}} {
		if e, _ := res.Lookup(l, r, Ingress, ProtoTCP, tc.port); e.Action != tc.want {
			t.Errorf("Lookup tcp/%d: got %v, want %v", tc.port, e.Action, tc.want)
		}
	}
}

func TestNestDeniesWithoutDenies(t *testing.T) {
	entries := map[Key]Entry{{Local: 1, Proto: ProtoTCP, Port: 80, PortPrefixLen: 16}: {Action: ActionAllow, Cookie: 4}}
	want := maps.Clone(entries)
	nestDenies(entries)
	if !maps.Equal(entries, want) {
		t.Errorf("entries changed: %v", entries)
	}
}

func TestMergeEntry(t *testing.T) {
	allow := func(c uint32) Entry { return Entry{Action: ActionAllow, Cookie: c} }
	deny := func(c uint32) Entry { return Entry{Action: ActionDeny, Cookie: c} }
	redirect := Entry{Action: ActionRedirectDNS, ProxyPort: 53, Cookie: 9}
	for _, tc := range []struct {
		old, new, want Entry
	}{
		{allow(5), allow(3), allow(3)},
		{allow(3), allow(5), allow(3)},
		{allow(2), deny(8), deny(8)},
		{deny(8), allow(2), deny(8)},
		{deny(8), deny(4), deny(4)},
		{allow(2), redirect, redirect},
		{redirect, deny(10), deny(10)},
	} {
		if got := mergeEntry(tc.old, tc.new); got != tc.want {
			t.Errorf("mergeEntry(%+v, %+v) = %+v, want %+v", tc.old, tc.new, got, tc.want)
		}
	}
}
