package observe

import (
	"log/slog"
	"net/netip"
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
		o.add(toFlow(ev, fakeResolver{}))
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
}
