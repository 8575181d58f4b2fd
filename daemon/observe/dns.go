package observe

import (
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
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

// dnsFlow turns a proxy event into Hubble's L7 DNS flow: a REQUEST for
// the query (DROPPED when refused), a RESPONSE for the answer.
func (b *l7Builder) dnsFlow(ev *DNSEvent) *flow.Flow {
	k := b.start(ev.Time, ev.Verdict, ev.Response, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity, ev.Proto, ev.Cookie)
	k.dns.Query, k.dns.Qtypes, k.dns.ObservationSource = ev.Query, ev.Qtypes, "proxy"
	k.l7.Type = flow.L7FlowType_REQUEST
	if ev.Response {
		k.l7.Type = flow.L7FlowType_RESPONSE
		k.l7.LatencyNs = uint64(ev.Latency)
		k.dns.Rcode, k.dns.Ips, k.dns.Ttl, k.dns.Cnames, k.dns.Rrtypes = ev.Rcode, ev.IPs, ev.TTL, ev.CNAMEs, ev.Rrtypes
	}
	k.dnsOf.Dns = &k.dns
	k.l7.Record = &k.dnsOf
	k.decide(false, ev.Verdict == flow.Verdict_DROPPED)
	k.f.Summary = "DNS REQUEST"
	if ev.Response {
		k.f.Summary = "DNS RESPONSE"
	}
	return &k.f
}
