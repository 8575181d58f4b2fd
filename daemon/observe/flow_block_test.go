package observe

import (
	"net/netip"
	"testing"

	"github.com/aegis-cni/aegis/daemon/policy"
)

// tableResolver answers from tables built once, as the agent's does.
type tableResolver map[netip.Addr]Peer

func (r tableResolver) Peer(ip netip.Addr, id uint32) Peer {
	if p, ok := r[ip]; ok {
		return p
	}
	return Peer{Identity: id, Labels: []string{"reserved:world"}}
}

func (tableResolver) Rule(c uint32) (policy.RuleRef, bool) { return fakeResolver{}.Rule(c) }
func (tableResolver) NodeName() string                     { return "node-1" }

// BenchmarkToFlow is the enrichment of one drop event, the reader's
// per-event work besides the ring read.
func BenchmarkToFlow(b *testing.B) {
	ip := netip.MustParseAddr("10.244.1.2")
	r := tableResolver{ip: fakeResolver{}.Peer(ip, 300)}
	ev := drop()
	names := addrNames{}
	b.ReportAllocs()
	for b.Loop() {
		_ = toFlowNamed(ev, r, names)
	}
}

func TestAddrNames(t *testing.T) {
	names := addrNames{}
	for i := range addrNamesMax + 10 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if got := names.name(a); got != a.String() {
			t.Fatalf("name of %v: %q", a, got)
		}
		if len(names) > addrNamesMax {
			t.Fatalf("%d names kept, more than %d", len(names), addrNamesMax)
		}
	}
	if got := addrNames(nil).name(netip.MustParseAddr("192.0.2.1")); got != "192.0.2.1" {
		t.Fatalf("without names: %q", got)
	}
}
