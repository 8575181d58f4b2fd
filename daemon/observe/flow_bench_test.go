package observe

import (
	"log/slog"
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
func (tableResolver) NamesVersion() uint64                 { return 1 }

// BenchmarkTake is the reader's work per event besides the ring read:
// resolving it and taking it into the ring in batches, with a tap as the
// metrics' counting.
func BenchmarkTake(b *testing.B) {
	ip := netip.MustParseAddr("10.244.1.2")
	o := New(nil, tableResolver{ip: fakeResolver{}.Peer(ip, 300)}, 4096, slog.Default())
	var n int
	o.AddTap(func(batch []Entry) { n += len(batch) })
	batch := make([]Entry, 0, readBatch)
	ev := drop()
	b.ReportAllocs()
	for b.Loop() {
		batch = o.collect(batch, ev)
	}
}

// BenchmarkBuild is building the flow of one entry, which only the APIs
// and the flow log do.
func BenchmarkBuild(b *testing.B) {
	ip := netip.MustParseAddr("10.244.1.2")
	r := tableResolver{ip: fakeResolver{}.Peer(ip, 300)}
	e := Entry{ev: drop()}
	newResolver(r).resolve(&e)
	b.ReportAllocs()
	for b.Loop() {
		_ = build(&e, "node-1")
	}
}
