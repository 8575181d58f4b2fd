package observe

import (
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// L7Event is one event of the proxy process: a DNS query or answer, or an
// HTTP request or response.
type L7Event struct {
	DNS  *DNSEvent  `json:"dns,omitempty"`
	HTTP *HTTPEvent `json:"http,omitempty"`
}

// HTTPEvent is one request or response the HTTP proxy saw.
type HTTPEvent struct {
	Time                     time.Time
	Src, Dst                 netip.AddrPort // the pod, and the server it connected to
	SrcIdentity, DstIdentity uint32
	Verdict                  flow.Verdict
	// Direction is the side whose policy decided, relative to the
	// endpoint it selects (UNKNOWN from an older proxy: egress, the only
	// side it knew).
	Direction             flow.TrafficDirection
	Cookie                uint32 // the rule that allowed it, or the rules that did not
	Response              bool
	Method, URL, Protocol string
	Code                  uint32
	Latency               time.Duration
}

// HTTPFlow turns a proxy event into Hubble's L7 HTTP flow.
func HTTPFlow(r Resolver, ev HTTPEvent) *flow.Flow {
	ingress := ev.Direction == flow.TrafficDirection_INGRESS
	f := &flow.Flow{
		Time:             timestamppb.New(ev.Time),
		Verdict:          ev.Verdict,
		Type:             flow.FlowType_L7,
		NodeName:         r.NodeName(),
		IP:               &flow.IP{Source: ev.Src.Addr().String(), Destination: ev.Dst.Addr().String(), IpVersion: flow.IPVersion_IPv4},
		EventType:        &flow.CiliumEventType{Type: 129},
		TrafficDirection: flow.TrafficDirection_EGRESS,
		IsReply:          wrapperspb.Bool(ev.Response),
	}
	if ingress {
		f.TrafficDirection = flow.TrafficDirection_INGRESS
	}
	src := endpoint(r.Peer(ev.Src.Addr(), ev.SrcIdentity))
	dst := endpoint(r.Peer(ev.Dst.Addr(), ev.DstIdentity))
	sport, dport := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	l7 := &flow.Layer7{Type: flow.L7FlowType_REQUEST, Record: &flow.Layer7_Http{Http: &flow.HTTP{
		Method: ev.Method, Url: ev.URL, Protocol: ev.Protocol,
	}}}
	if ev.Response {
		src, dst = dst, src
		sport, dport = dport, sport
		f.IP.Source, f.IP.Destination = f.IP.Destination, f.IP.Source
		l7.Type = flow.L7FlowType_RESPONSE
		l7.LatencyNs = uint64(ev.Latency)
		l7.GetHttp().Code = ev.Code
	}
	f.Source, f.Destination = src, dst
	f.L4 = &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: sport, DestinationPort: dport}}}
	f.L7 = l7
	if ref, ok := r.Rule(ev.Cookie); ok && ref.Name != "" {
		p := []*flow.Policy{{Name: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind}}
		switch {
		case ingress && ev.Verdict == flow.Verdict_DROPPED:
			f.IngressDeniedBy = p
		case ingress:
			f.IngressAllowedBy = p
		case ev.Verdict == flow.Verdict_DROPPED:
			f.EgressDeniedBy = p
		default:
			f.EgressAllowedBy = p
		}
	}
	if ev.Verdict == flow.Verdict_DROPPED {
		f.DropReasonDesc = flow.DropReason_POLICY_DENIED
	}
	f.Summary = "HTTP " + l7.Type.String() + " " + ev.Method + " " + ev.URL
	return f
}
