package observe

import (
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"

	"github.com/aegis-cni/aegis/daemon/policy"
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

// httpFlow turns a proxy event into Hubble's L7 HTTP flow.
func (b *l7Builder) httpFlow(ev *HTTPEvent) *flow.Flow {
	ingress := ev.Direction == flow.TrafficDirection_INGRESS
	k := b.start(ev.Time, ev.Verdict, ev.Response, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity, policy.ProtoTCP, ev.Cookie)
	f := &k.f
	if ingress {
		f.TrafficDirection = flow.TrafficDirection_INGRESS
	}
	k.http.Method, k.http.Url, k.http.Protocol = ev.Method, ev.URL, ev.Protocol
	k.l7.Type = flow.L7FlowType_REQUEST
	if ev.Response {
		k.l7.Type = flow.L7FlowType_RESPONSE
		k.l7.LatencyNs = uint64(ev.Latency)
		k.http.Code = ev.Code
	}
	k.httpOf.Http = &k.http
	k.l7.Record = &k.httpOf
	k.decide(ingress, ev.Verdict == flow.Verdict_DROPPED)
	f.Summary = "HTTP " + k.l7.Type.String() + " " + ev.Method + " " + ev.URL
	return f
}
