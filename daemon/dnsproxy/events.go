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
	latency       time.Duration
}

func (p *Proxy) emitDNS(e dnsEvent) {
	ev := observe.DNSEvent{
		Time: time.Now(), Src: e.src, Dst: e.dst, SrcIdentity: e.local, DstIdentity: e.remote,
		Proto: e.proto, Verdict: e.verdict, Cookie: e.cookie, Latency: e.latency,
	}
	if len(e.q.Question) > 0 {
		ev.Query = e.q.Question[0].Name
		for _, q := range e.q.Question {
			ev.Qtypes = append(ev.Qtypes, dns.TypeToString[q.Qtype])
		}
	}
	if e.resp != nil {
		ev.Response = true
		ev.Rcode = uint32(e.resp.Rcode)
		ev.Verdict = flow.Verdict_FORWARDED
		names, ips, ttl := chain(e.resp)
		for _, ip := range ips {
			ev.IPs = append(ev.IPs, ip.String())
		}
		for _, rr := range e.resp.Answer {
			ev.Rrtypes = append(ev.Rrtypes, dns.TypeToString[rr.Header().Rrtype])
			if a, ok := rr.(*dns.AAAA); ok {
				ev.IPs = append(ev.IPs, a.AAAA.String())
			}
		}
		if len(names) > 1 {
			ev.CNAMEs = names[1:]
		}
		ev.TTL = uint32(ttl / time.Second)
	}
	p.emit(ev)
}
