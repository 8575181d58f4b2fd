package observe

import (
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
)

type fakeResolver struct{}

func (fakeResolver) Peer(ip netip.Addr, id uint32) Peer {
	if ip == netip.MustParseAddr("10.244.1.2") {
		return Peer{Identity: id, EndpointID: 3, Namespace: "pets", PodName: "store-front", Labels: LabelsOf("pets", map[string]string{"app": "store-front"})}
	}
	return Peer{Identity: id, Labels: []string{"reserved:world"}}
}

func (fakeResolver) Rule(c uint32) (policy.RuleRef, bool) {
	if c == 9 {
		return policy.RuleRef{Kind: "CiliumNetworkPolicy", Namespace: "pets", Name: "allow-store-front-traffic", Dir: policy.Ingress}, true
	}
	return policy.RuleRef{}, false
}

func (fakeResolver) NodeName() string { return "node-1" }

func drop() bpf.FlowEvent {
	return bpf.FlowEvent{
		Time: time.Unix(1700000000, 0), Type: bpf.EventDrop, Dropped: true, Reason: 133, Dir: uint8(policy.Ingress),
		SrcIdentity: 2, DstIdentity: 300, Src: netip.MustParseAddrPort("192.0.2.10:40000"), Dst: netip.MustParseAddrPort("10.244.1.2:8080"),
		Proto: policy.ProtoTCP, TCPFlags: 0x02, CTState: bpf.CTNew,
	}
}

func TestToFlow(t *testing.T) {
	f := toFlow(drop(), fakeResolver{})
	if f.GetVerdict() != flow.Verdict_DROPPED || f.GetDropReasonDesc() != flow.DropReason_POLICY_DENIED ||
		f.GetTrafficDirection() != flow.TrafficDirection_INGRESS || f.GetEventType().GetType() != 1 {
		t.Errorf("verdict fields: %v", f)
	}
	if f.GetDestination().GetPodName() != "store-front" || f.GetDestination().GetNamespace() != "pets" || f.GetSource().GetLabels()[0] != "reserved:world" {
		t.Errorf("endpoints: %v %v", f.GetSource(), f.GetDestination())
	}
	if !f.GetL4().GetTCP().GetFlags().GetSYN() || f.GetL4().GetTCP().GetDestinationPort() != 8080 || f.GetIsReply().GetValue() {
		t.Errorf("l4: %v", f.GetL4())
	}
	ev := drop()
	ev.Dropped, ev.Reason, ev.Cookie, ev.Type = false, 0, 9, bpf.EventNew
	f = toFlow(ev, fakeResolver{})
	if f.GetVerdict() != flow.Verdict_FORWARDED || len(f.GetIngressAllowedBy()) != 1 || f.GetIngressAllowedBy()[0].GetName() != "allow-store-front-traffic" {
		t.Errorf("forwarded: %v", f)
	}
}

func TestRingAndFilter(t *testing.T) {
	o := New(nil, fakeResolver{}, 3, slog.Default())
	for i := range 5 {
		ev := drop()
		ev.Src = netip.AddrPortFrom(ev.Src.Addr(), uint16(40000+i))
		if i%2 == 1 {
			ev.Dropped = false
		}
		o.AddEvents(ev)
	}
	all := o.Last(10, nil)
	if len(all) != 3 || all[0].GetL4().GetTCP().GetSourcePort() != 40002 || all[2].GetL4().GetTCP().GetSourcePort() != 40004 {
		t.Fatalf("ring keeps the last 3 oldest first: %v", all)
	}
	dropped := o.Last(10, func(f *flow.Flow) bool { return f.GetVerdict() == flow.Verdict_DROPPED })
	if len(dropped) != 2 || dropped[1].GetL4().GetTCP().GetSourcePort() != 40004 {
		t.Errorf("keep: %v", dropped)
	}
	if got := o.Last(1, nil); len(got) != 1 || got[0].GetL4().GetTCP().GetSourcePort() != 40004 {
		t.Errorf("last 1: %v", got)
	}
	if st := o.Stats(); st.Seen != 5 || st.Stored != 3 || st.Capacity != 3 {
		t.Errorf("stats: %+v", st)
	}
}

// renamer is a resolver whose tables change: a pod replaced by another at
// the same address.
type renamer struct {
	pod     string
	version uint64
}

func (r *renamer) Peer(ip netip.Addr, id uint32) Peer {
	return Peer{Identity: id, Namespace: "pets", PodName: r.pod}
}
func (*renamer) Rule(c uint32) (policy.RuleRef, bool) { return fakeResolver{}.Rule(c) }
func (*renamer) NodeName() string                     { return "node-1" }
func (r *renamer) NamesVersion() uint64               { return r.version }

// TestNamesAsRead: a flow built later names the pod that was there when
// the event was read, and a new version of the tables is seen at once.
func TestNamesAsRead(t *testing.T) {
	r := &renamer{pod: "old", version: 1}
	o := New(nil, r, 8, slog.Default())
	o.AddEvents(drop())
	r.pod = "stale" // without a new version, the remembered answer stands
	o.AddEvents(drop())
	r.pod, r.version = "new", 2
	o.AddEvents(drop())
	var pods []string
	for _, f := range o.Last(10, nil) {
		pods = append(pods, f.GetDestination().GetPodName())
	}
	if strings.Join(pods, ",") != "old,old,new" {
		t.Errorf("pods %v, want old,old,new", pods)
	}
}

// TestFollow: history and follow meet with nothing twice or missed, a
// follower too slow loses the oldest and they are counted, and the taps
// see every entry.
func TestFollow(t *testing.T) {
	o := New(nil, fakeResolver{}, 4, slog.Default())
	var tapped int
	remove := o.AddTap(func(b []Entry) { tapped += len(b) })
	port := func(i int) bpf.FlowEvent {
		ev := drop()
		ev.Src = netip.AddrPortFrom(ev.Src.Addr(), uint16(i))
		return ev
	}
	for i := range 3 {
		o.AddEvents(port(i))
	}
	c := o.Follow()
	o.AddEvents(port(3), port(4))
	hist := c.History(10, nil)
	if len(hist) != 3 || hist[2].GetL4().GetTCP().GetSourcePort() != 2 {
		t.Fatalf("history %v", hist)
	}
	select {
	case <-c.Ready():
	default:
		t.Fatal("not ready with entries waiting")
	}
	got := c.Take(nil)
	if len(got) != 2 || c.Flow(&got[0]).GetL4().GetTCP().GetSourcePort() != 3 || c.Flow(&got[1]).GetL4().GetTCP().GetSourcePort() != 4 {
		t.Fatalf("followed %d entries", len(got))
	}
	ready := c.Ready()
	select {
	case <-ready:
		t.Fatal("ready with nothing new")
	default:
	}
	o.Add(&flow.Flow{Type: flow.FlowType_L7})
	select {
	case <-ready:
	default:
		t.Fatal("an L7 flow did not wake the follower")
	}
	if got = c.Take(got[:0]); len(got) != 1 || got[0].L7() == nil {
		t.Fatalf("L7 entry: %v", got)
	}
	evs := make([]bpf.FlowEvent, len(o.ring)+10)
	for i := range evs {
		evs[i] = port(100 + i)
	}
	o.AddEvents(evs...)
	got = c.Take(make([]Entry, 0, len(o.ring)))
	if lag := o.Stats().SubscriberLag; lag != 10 || len(got) != len(o.ring) {
		t.Errorf("lag %d, took %d: want 10 lost and the ring's %d", lag, len(got), len(o.ring))
	}
	if p := c.Flow(&got[0]).GetL4().GetTCP().GetSourcePort(); p != 110 {
		t.Errorf("first after the loss: port %d, want 110", p)
	}
	remove()
	o.AddEvents(port(1))
	if want := 6 + len(evs); tapped != want {
		t.Errorf("tap saw %d, want %d", tapped, want)
	}
}

// TestEventNamedByDNS: a datapath flow carries the names the pod's DNS
// answers gave for the address it went to; one read before the answer
// reached aegisd (the proxy's events travel apart from the datapath's) is
// named once the answer is in.
func TestEventNamedByDNS(t *testing.T) {
	o := New(nil, fakeResolver{}, 8, slog.Default())
	ev := drop()
	ev.Dir = uint8(policy.Egress)
	ev.Src, ev.Dst = netip.MustParseAddrPort("10.244.1.2:40000"), netip.MustParseAddrPort("203.0.113.20:443")
	o.AddEvents(ev)
	if fs := o.Last(10, nil); len(fs) != 1 || fs[0].GetDestinationNames() != nil {
		t.Fatalf("named before any answer: %v", fs)
	}
	o.Add(dnsAnswer("10.244.1.2", "www.microsoft.com.", 300, flow.Verdict_FORWARDED, nil, "203.0.113.20"))
	o.AddEvents(ev)
	fs := o.Last(10, nil)
	if len(fs) != 3 || !slices.Equal(fs[0].GetDestinationNames(), []string{"www.microsoft.com"}) || !slices.Equal(fs[2].GetDestinationNames(), []string{"www.microsoft.com"}) {
		t.Errorf("names of the flows read before and after the answer: %v, %v", fs[0].GetDestinationNames(), fs[len(fs)-1].GetDestinationNames())
	}
	other := ev
	other.Dst = netip.MustParseAddrPort("203.0.113.99:443")
	o.AddEvents(other)
	if fs := o.Last(1, nil); fs[0].GetDestinationNames() != nil {
		t.Errorf("an address no answer gave is named %v", fs[0].GetDestinationNames())
	}
}
