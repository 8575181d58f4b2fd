package observe

import (
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// DNSEvent is one query or answer the DNS proxy saw.
type DNSEvent struct {
	Time                     time.Time
	Src, Dst                 netip.AddrPort // the pod, and the server it asked
	SrcIdentity, DstIdentity uint32
	Proto                    uint8
	Verdict                  flow.Verdict
	Cookie                   uint32 // the DNS rule that allowed it, or the policy that refused it
	Response                 bool
	Query                    string
	Qtypes                   []string
	Rcode                    uint32
	IPs                      []string
	TTL                      uint32
	CNAMEs                   []string
	Rrtypes                  []string
	Latency                  time.Duration
}

// DNSFlow turns a proxy event into Hubble's L7 DNS flow: a REQUEST for
// the query (DROPPED when refused), a RESPONSE for the answer.
func DNSFlow(r Resolver, ev DNSEvent) *flow.Flow {
	f := &flow.Flow{
		Time:             timestamppb.New(ev.Time),
		Verdict:          ev.Verdict,
		Type:             flow.FlowType_L7,
		NodeName:         r.NodeName(),
		IP:               &flow.IP{Source: ev.Src.Addr().String(), Destination: ev.Dst.Addr().String(), IpVersion: flow.IPVersion_IPv4},
		EventType:        &flow.CiliumEventType{Type: 129}, // Hubble's access-log (L7) event
		TrafficDirection: flow.TrafficDirection_EGRESS,
		IsReply:          wrapperspb.Bool(ev.Response),
	}
	src := endpoint(r.Peer(ev.Src.Addr(), ev.SrcIdentity))
	dst := endpoint(r.Peer(ev.Dst.Addr(), ev.DstIdentity))
	sport, dport := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	if ev.Response {
		// An answer travels from the server to the pod.
		src, dst = dst, src
		sport, dport = dport, sport
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
	}
	f.Source, f.Destination = src, dst
	if ev.Proto == 6 {
		f.L4 = &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: sport, DestinationPort: dport}}}
	} else {
		f.L4 = &flow.Layer4{Protocol: &flow.Layer4_UDP{UDP: &flow.UDP{SourcePort: sport, DestinationPort: dport}}}
	}
	l7 := &flow.Layer7{Type: flow.L7FlowType_REQUEST, Record: &flow.Layer7_Dns{Dns: &flow.DNS{
		Query: ev.Query, Qtypes: ev.Qtypes, ObservationSource: "proxy",
	}}}
	if ev.Response {
		l7.Type = flow.L7FlowType_RESPONSE
		l7.LatencyNs = uint64(ev.Latency)
		d := l7.GetDns()
		d.Rcode, d.Ips, d.Ttl, d.Cnames, d.Rrtypes = ev.Rcode, ev.IPs, ev.TTL, ev.CNAMEs, ev.Rrtypes
	}
	f.L7 = l7
	if ref, ok := r.Rule(ev.Cookie); ok && ref.Name != "" {
		p := []*flow.Policy{{Name: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind}}
		if ev.Verdict == flow.Verdict_DROPPED {
			f.EgressDeniedBy = p
		} else {
			f.EgressAllowedBy = p
		}
	}
	if ev.Verdict == flow.Verdict_DROPPED {
		f.DropReasonDesc = flow.DropReason_POLICY_DENIED
	}
	f.Summary = "DNS " + l7.Type.String()
	return f
}
