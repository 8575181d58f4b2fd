package dnsproxy

import (
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/daemon/observe"
)

// dnsEvent is one decision of the proxy: a query (resp nil) or an answer.
type dnsEvent struct {
	src, dst      netip.AddrPort
	local, remote uint32
	proto         uint8
	q, resp       *dns.Msg
	verdict       flow.Verdict
	cookie        uint32
	// The answer's chain (see chain), when it parsed.
	names []string
	ips   []netip.Addr
	ttl   time.Duration
}

func (p *Proxy) emitDNS(e *dnsEvent, start time.Time) {
	now := time.Now()
	ev := observe.DNSEvent{
		Time: now, Src: e.src, Dst: e.dst, SrcIdentity: e.local, DstIdentity: e.remote,
		Proto: e.proto, Verdict: e.verdict, Cookie: e.cookie,
	}
	if len(e.q.Question) > 0 {
		ev.Query = e.q.Question[0].Name
		ev.Qtypes = make([]string, 0, len(e.q.Question))
		for _, q := range e.q.Question {
			ev.Qtypes = append(ev.Qtypes, dns.TypeToString[q.Qtype])
		}
	}
	if e.resp != nil {
		ev.Response = true
		ev.Latency = now.Sub(start)
		ev.Rcode = uint32(e.resp.Rcode)
		ev.Verdict = flow.Verdict_FORWARDED
		if len(e.ips) > 0 {
			ev.IPs = make([]string, 0, len(e.ips))
		}
		for _, ip := range e.ips {
			ev.IPs = append(ev.IPs, ip.String())
		}
		if len(e.resp.Answer) > 0 {
			ev.Rrtypes = make([]string, 0, len(e.resp.Answer))
		}
		for _, rr := range e.resp.Answer {
			ev.Rrtypes = append(ev.Rrtypes, dns.TypeToString[rr.Header().Rrtype])
			if a, ok := rr.(*dns.AAAA); ok {
				ev.IPs = append(ev.IPs, a.AAAA.String())
			}
		}
		if len(e.names) > 1 {
			ev.CNAMEs = e.names[1:]
		}
		ev.TTL = uint32(e.ttl / time.Second)
	}
	p.emit(ev)
}
