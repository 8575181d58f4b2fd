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
	Labels     []string         // "k8s:app=web", "reserved:world"
	Workloads  []*flow.Workload // the pod's controller (shared: never modified)
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

// flowBlock is a flow and the messages it points to, allocated as one: at
// hundreds of thousands of events a second the reader's time goes mostly
// to allocation and garbage collection, and a dozen small objects per flow
// cost far more than one. Labels are shared with the resolver's tables,
// which are never changed in place.
type flowBlock struct {
	f        flow.Flow
	ts       timestamppb.Timestamp
	ip       flow.IP
	src, dst flow.Endpoint
	reply    wrapperspb.BoolValue
	et       flow.CiliumEventType
	l4       flow.Layer4
	tcp      flow.TCP
	tcpOf    flow.Layer4_TCP
	flags    flow.TCPFlags
	udp      flow.UDP
	udpOf    flow.Layer4_UDP
	policy   [1]*flow.Policy
	pol      flow.Policy
}

// addrNames remembers the text of recent addresses: a node's flows are
// among few addresses, and formatting each of them twice per event was a
// tenth of the reader's time. Only the reader's goroutine uses it.
type addrNames map[netip.Addr]string

// addrNamesMax bounds it: past that many addresses it starts again.
const addrNamesMax = 4096

func (n addrNames) name(a netip.Addr) string {
	if n == nil {
		return a.String()
	}
	if s, ok := n[a]; ok {
		return s
	}
	if len(n) >= addrNamesMax {
		clear(n)
	}
	s := a.String()
	n[a] = s
	return s
}

// toFlow enriches one datapath event into a Hubble flow.
func toFlow(ev bpf.FlowEvent, r Resolver) *flow.Flow { return toFlowNamed(ev, r, nil) }

// toFlowNamed is toFlow with the reader's address names.
func toFlowNamed(ev bpf.FlowEvent, r Resolver, names addrNames) *flow.Flow {
	b := &flowBlock{}
	f := &b.f
	b.ts.Seconds, b.ts.Nanos = ev.Time.Unix(), int32(ev.Time.Nanosecond())
	f.Time = &b.ts
	f.NodeName = r.NodeName()
	f.Type = flow.FlowType_L3_L4
	b.ip.Source, b.ip.Destination, b.ip.IpVersion = names.name(ev.Src.Addr()), names.name(ev.Dst.Addr()), flow.IPVersion_IPv4
	f.IP = &b.ip
	fillEndpoint(&b.src, r.Peer(ev.Src.Addr(), ev.SrcIdentity))
	fillEndpoint(&b.dst, r.Peer(ev.Dst.Addr(), ev.DstIdentity))
	f.Source, f.Destination = &b.src, &b.dst
	b.reply.Value = ev.CTState == bpf.CTReply
	f.IsReply = &b.reply
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
		b.et.Type, b.et.SubType = 1, int32(ev.Reason)
	} else {
		f.Verdict = flow.Verdict_FORWARDED
		b.et.Type = 4
	}
	f.EventType = &b.et
	sp, dp := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	switch ev.Proto {
	case policy.ProtoTCP:
		fl := ev.TCPFlags
		b.flags.FIN, b.flags.SYN, b.flags.RST = fl&0x01 != 0, fl&0x02 != 0, fl&0x04 != 0
		b.flags.PSH, b.flags.ACK, b.flags.URG = fl&0x08 != 0, fl&0x10 != 0, fl&0x20 != 0
		b.tcp.SourcePort, b.tcp.DestinationPort, b.tcp.Flags = sp, dp, &b.flags
		b.tcpOf.TCP = &b.tcp
		b.l4.Protocol = &b.tcpOf
		f.L4 = &b.l4
	case policy.ProtoUDP:
		b.udp.SourcePort, b.udp.DestinationPort = sp, dp
		b.udpOf.UDP = &b.udp
		b.l4.Protocol = &b.udpOf
		f.L4 = &b.l4
	default:
		f.L4 = l4(ev)
	}
	if ref, ok := r.Rule(ev.Cookie); ok && ref.Name != "" {
		b.pol.Name, b.pol.Namespace, b.pol.Kind = ref.Name, ref.Namespace, ref.Kind
		b.policy[0] = &b.pol
		p := b.policy[:]
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

func fillEndpoint(e *flow.Endpoint, p Peer) {
	e.ID, e.Identity, e.Namespace, e.PodName, e.Labels = p.EndpointID, p.Identity, p.Namespace, p.PodName, p.Labels
	e.Workloads = p.Workloads
}

func endpoint(p Peer) *flow.Endpoint {
	e := &flow.Endpoint{}
	fillEndpoint(e, p)
	e.Labels = slices.Clone(p.Labels)
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
