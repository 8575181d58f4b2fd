// Package observe turns datapath events into flows: it reads the flow-event
// ring, enriches each event with the endpoints, identities and rules
// behind it into Hubble's flow type, and keeps the recent ones in a
// bounded ring for the APIs. Loss is counted at every stage: in the kernel
// (ring full), in decoding, and per subscriber.
package observe

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Peer is what the resolver knows about one end of a flow.
type Peer struct {
	Identity   uint32
	EndpointID uint32 // local endpoints only
	Namespace  string
	PodName    string
	Labels     []string // "k8s:app=web", "reserved:world"
}

// Resolver answers who is behind addresses, identities and cookies.
type Resolver interface {
	// Peer describes the end with this address and identity.
	Peer(ip netip.Addr, identity uint32) Peer
	// Rule names the rule behind a cookie.
	Rule(cookie uint32) (policy.RuleRef, bool)
	// NodeName is this node's name.
	NodeName() string
}

// toFlow enriches one datapath event into a Hubble flow.
func toFlow(ev bpf.FlowEvent, r Resolver) *flow.Flow {
	f := &flow.Flow{
		Time:     timestamppb.New(ev.Time),
		NodeName: r.NodeName(),
		Type:     flow.FlowType_L3_L4,
		IP: &flow.IP{
			Source:      ev.Src.Addr().String(),
			Destination: ev.Dst.Addr().String(),
			IpVersion:   flow.IPVersion_IPv4,
		},
		Source:      endpoint(r.Peer(ev.Src.Addr(), ev.SrcIdentity)),
		Destination: endpoint(r.Peer(ev.Dst.Addr(), ev.DstIdentity)),
		IsReply:     wrapperspb.Bool(ev.CTState == bpf.CTReply),
	}
	if ev.Dir == uint8(policy.Egress) {
		f.TrafficDirection = flow.TrafficDirection_EGRESS
		f.TraceObservationPoint = flow.TraceObservationPoint_FROM_ENDPOINT
	} else {
		f.TrafficDirection = flow.TrafficDirection_INGRESS
		f.TraceObservationPoint = flow.TraceObservationPoint_TO_ENDPOINT
	}
	// Hubble's monitor event types: 1 drop, 4 trace.
	if ev.Dropped {
		f.Verdict = flow.Verdict_DROPPED
		f.DropReasonDesc = flow.DropReason(ev.Reason)
		f.DropReason = uint32(ev.Reason)
		f.EventType = &flow.CiliumEventType{Type: 1, SubType: int32(ev.Reason)}
	} else {
		f.Verdict = flow.Verdict_FORWARDED
		f.EventType = &flow.CiliumEventType{Type: 4}
	}
	f.L4 = l4(ev)
	if ref, ok := r.Rule(ev.Cookie); ok && ref.Name != "" {
		p := []*flow.Policy{{Name: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind}}
		switch {
		case ev.Dropped && f.TrafficDirection == flow.TrafficDirection_EGRESS:
			f.EgressDeniedBy = p
		case ev.Dropped:
			f.IngressDeniedBy = p
		case f.TrafficDirection == flow.TrafficDirection_EGRESS:
			f.EgressAllowedBy = p
		default:
			f.IngressAllowedBy = p
		}
	}
	return f
}

func endpoint(p Peer) *flow.Endpoint {
	e := &flow.Endpoint{
		ID:        p.EndpointID,
		Identity:  p.Identity,
		Namespace: p.Namespace,
		PodName:   p.PodName,
		Labels:    slices.Clone(p.Labels),
	}
	return e
}

func l4(ev bpf.FlowEvent) *flow.Layer4 {
	sp, dp := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	switch ev.Proto {
	case policy.ProtoTCP:
		fl := ev.TCPFlags
		return &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: sp, DestinationPort: dp, Flags: &flow.TCPFlags{
			FIN: fl&0x01 != 0, SYN: fl&0x02 != 0, RST: fl&0x04 != 0, PSH: fl&0x08 != 0, ACK: fl&0x10 != 0, URG: fl&0x20 != 0,
		}}}}
	case policy.ProtoUDP:
		return &flow.Layer4{Protocol: &flow.Layer4_UDP{UDP: &flow.UDP{SourcePort: sp, DestinationPort: dp}}}
	case policy.ProtoSCTP:
		return &flow.Layer4{Protocol: &flow.Layer4_SCTP{SCTP: &flow.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case policy.ProtoICMP:
		return &flow.Layer4{Protocol: &flow.Layer4_ICMPv4{ICMPv4: &flow.ICMPv4{}}}
	}
	return nil
}

// labelsOf is a small helper for resolvers: "k8s:key=value" labels sorted.
func LabelsOf(namespace string, labels map[string]string) []string {
	out := []string{"k8s:io.kubernetes.pod.namespace=" + namespace}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, "k8s:"+k+"="+labels[k])
	}
	return out
}
