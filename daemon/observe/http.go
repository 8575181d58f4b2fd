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

// An HTTP event is kept as an entry whose flow is built only when an API
// or the flow log asks for it, as a datapath event's is: at the rates of
// a busy service most requests' flows are never asked for, and building
// each one (a 1.3 KB block, and the garbage it leaves) cost aegisd more
// than the rest of its work on the event. Its ends, rule and names are
// resolved when it arrives, so that the flow built later names them as
// they were then.

// httpEntry is the entry of a proxy event, its ends and rule resolved.
func (b *l7Builder) httpEntry(ev *HTTPEvent) Entry {
	from, to, rule := b.resolve(ev.Response, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity, ev.Cookie)
	return Entry{http: ev, src: from, dst: to, policy: rule}
}

// flowAddrs are the addresses of an HTTP entry's source and destination.
func (ev *HTTPEvent) flowAddrs() (src, dst netip.AddrPort) {
	if ev.Response {
		return ev.Dst, ev.Src
	}
	return ev.Src, ev.Dst
}

// httpFlow builds Hubble's L7 HTTP flow of an entry of httpEntry.
func httpFlow(e *Entry, node string) *flow.Flow {
	ev := e.http
	ingress := ev.Direction == flow.TrafficDirection_INGRESS
	src, dst := ev.flowAddrs()
	k := fill(ev.Time, ev.Verdict, ev.Response, e.src, e.dst, src.Port(), dst.Port(), policy.ProtoTCP, e.policy, node)
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
	f.SourceNames, f.DestinationNames = e.srcNames, e.dstNames
	return f
}

// HTTPKey is everything an HTTP entry's metric series depend on.
type HTTPKey struct {
	SrcNamespace, SrcPod, DstNamespace, DstPod string // the flow's ends
	Verdict                                    flow.Verdict
	Response, Ingress                          bool
	Method, Protocol                           string
	Code                                       uint32
}

// HTTP returns an HTTP entry's metric key and latency, false for other
// entries.
func (e *Entry) HTTP() (HTTPKey, time.Duration, bool) {
	ev := e.http
	if ev == nil {
		return HTTPKey{}, 0, false
	}
	return HTTPKey{SrcNamespace: e.src.ep.GetNamespace(), SrcPod: e.src.ep.GetPodName(), DstNamespace: e.dst.ep.GetNamespace(), DstPod: e.dst.ep.GetPodName(),
		Verdict: ev.Verdict, Response: ev.Response, Ingress: ev.Direction == flow.TrafficDirection_INGRESS,
		Method: ev.Method, Protocol: ev.Protocol, Code: ev.Code}, ev.Latency, true
}
