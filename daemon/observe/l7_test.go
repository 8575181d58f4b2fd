package observe

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
)

var (
	l7Pod    = netip.MustParseAddrPort("10.244.1.2:40000")
	l7Server = netip.MustParseAddrPort("192.0.2.53:53")
)

// TestDNSFlow: a refused query is a DROPPED REQUEST from the pod, denied
// by the rule of its cookie; an answer is a RESPONSE from the server with
// its records.
func TestDNSFlow(t *testing.T) {
	b := newL7Builder(fakeResolver{})
	q := b.dnsFlow(&DNSEvent{Time: time.Unix(1700000000, 5), Src: l7Pod, Dst: l7Server, SrcIdentity: 300, DstIdentity: 2,
		Proto: 17, Verdict: flow.Verdict_DROPPED, Cookie: 9, Query: "bing.com.", Qtypes: []string{"A"}})
	if q.GetType() != flow.FlowType_L7 || q.GetL7().GetType() != flow.L7FlowType_REQUEST || q.GetVerdict() != flow.Verdict_DROPPED ||
		q.GetDropReasonDesc() != flow.DropReason_POLICY_DENIED || q.GetIsReply().GetValue() || q.GetEventType().GetType() != 129 {
		t.Errorf("query: %v", q)
	}
	if q.GetSource().GetPodName() != "store-front" || q.GetIP().GetSource() != "10.244.1.2" || q.GetL4().GetUDP().GetDestinationPort() != 53 ||
		q.GetL7().GetDns().GetQuery() != "bing.com." || q.GetSummary() != "DNS REQUEST" || q.GetNodeName() != "node-1" {
		t.Errorf("query ends: %v", q)
	}
	if len(q.GetEgressDeniedBy()) != 1 || q.GetEgressDeniedBy()[0].GetName() != "allow-store-front-traffic" || q.GetEgressAllowedBy() != nil {
		t.Errorf("query's rule: %v", q)
	}
	if !q.GetTime().AsTime().Equal(time.Unix(1700000000, 5)) {
		t.Errorf("time %v", q.GetTime().AsTime())
	}
	a := b.dnsFlow(&DNSEvent{Time: time.Unix(1700000001, 0), Src: l7Pod, Dst: l7Server, SrcIdentity: 300, DstIdentity: 2, Proto: 6,
		Verdict: flow.Verdict_FORWARDED, Cookie: 1, Response: true, Query: "bing.com.", Rcode: 0, IPs: []string{"203.0.113.1"}, TTL: 60,
		CNAMEs: []string{"www.bing.com."}, Rrtypes: []string{"CNAME", "A"}, Latency: time.Millisecond})
	d := a.GetL7().GetDns()
	if a.GetL7().GetType() != flow.L7FlowType_RESPONSE || !a.GetIsReply().GetValue() || a.GetL7().GetLatencyNs() != 1e6 ||
		d.GetIps()[0] != "203.0.113.1" || d.GetTtl() != 60 || d.GetCnames()[0] != "www.bing.com." || len(d.GetRrtypes()) != 2 {
		t.Errorf("answer: %v", a)
	}
	if a.GetIP().GetSource() != "192.0.2.53" || a.GetDestination().GetPodName() != "store-front" || a.GetL4().GetTCP().GetSourcePort() != 53 ||
		a.GetL4().GetTCP().GetDestinationPort() != 40000 || a.GetEgressAllowedBy() != nil || a.GetDropReasonDesc() != 0 {
		t.Errorf("answer travels from the server: %v", a)
	}
}

// builtHTTP is the flow of an HTTP event's entry.
func builtHTTP(b *l7Builder, ev *HTTPEvent) *flow.Flow {
	e := b.httpEntry(ev)
	return httpFlow(&e, b.node)
}

// TestHTTPFlow: the side whose policy decided picks the list the rule is
// in, and a response carries its code and latency.
func TestHTTPFlow(t *testing.T) {
	b := newL7Builder(fakeResolver{})
	for _, c := range []struct {
		dir     flow.TrafficDirection
		verdict flow.Verdict
		list    func(*flow.Flow) []*flow.Policy
	}{
		{flow.TrafficDirection_INGRESS, flow.Verdict_DROPPED, (*flow.Flow).GetIngressDeniedBy},
		{flow.TrafficDirection_INGRESS, flow.Verdict_FORWARDED, (*flow.Flow).GetIngressAllowedBy},
		{flow.TrafficDirection_EGRESS, flow.Verdict_DROPPED, (*flow.Flow).GetEgressDeniedBy},
		{flow.TrafficDirection_TRAFFIC_DIRECTION_UNKNOWN, flow.Verdict_FORWARDED, (*flow.Flow).GetEgressAllowedBy},
	} {
		f := builtHTTP(b, &HTTPEvent{Time: time.Unix(5, 0), Src: l7Pod, Dst: netip.MustParseAddrPort("192.0.2.7:3002"), Verdict: c.verdict,
			Direction: c.dir, Cookie: 9, Method: "POST", URL: "http://product-service:3002/", Protocol: "HTTP/1.1"})
		if l := c.list(f); len(l) != 1 || l[0].GetName() != "allow-store-front-traffic" {
			t.Errorf("%v %v: rule not in its list: %v", c.dir, c.verdict, f)
		}
		wantDir := flow.TrafficDirection_EGRESS
		if c.dir == flow.TrafficDirection_INGRESS {
			wantDir = flow.TrafficDirection_INGRESS
		}
		if f.GetTrafficDirection() != wantDir || f.GetL7().GetHttp().GetMethod() != "POST" || f.GetL4().GetTCP().GetDestinationPort() != 3002 ||
			f.GetSummary() != "HTTP REQUEST POST http://product-service:3002/" {
			t.Errorf("%v %v: %v", c.dir, c.verdict, f)
		}
	}
	r := builtHTTP(b, &HTTPEvent{Time: time.Unix(6, 0), Src: l7Pod, Dst: netip.MustParseAddrPort("192.0.2.7:3002"), Verdict: flow.Verdict_FORWARDED,
		Response: true, Method: "GET", URL: "http://product-service:3002/", Code: 200, Latency: 3 * time.Millisecond})
	if r.GetL7().GetType() != flow.L7FlowType_RESPONSE || r.GetL7().GetHttp().GetCode() != 200 || r.GetL7().GetLatencyNs() != 3e6 ||
		r.GetDestination().GetPodName() != "store-front" || r.GetEgressAllowedBy() != nil {
		t.Errorf("response: %v", r)
	}
}

// TestL7NamesFollowVersion: the builder's memory of ends lasts as long as
// the resolver's tables, as the datapath reader's does, and flows share
// their ends' messages meanwhile.
func TestL7NamesFollowVersion(t *testing.T) {
	r := &renamer{pod: "old", version: 1}
	o := New(nil, r, 8, slog.Default())
	ev := &HTTPEvent{Time: time.Unix(5, 0), Src: l7Pod, Dst: l7Server, Method: "GET", URL: "http://x/"}
	o.AddHTTP(ev)
	r.pod = "stale"
	o.AddHTTP(ev)
	r.pod, r.version = "new", 2
	o.AddHTTP(ev)
	var pods []string
	flows := o.Last(10, nil)
	for _, f := range flows {
		pods = append(pods, f.GetSource().GetPodName())
	}
	if len(flows) == 3 && flows[0].GetSource() != flows[1].GetSource() {
		t.Error("one end built twice under one version")
	}
	if len(pods) != 3 || pods[0] != "old" || pods[1] != "old" || pods[2] != "new" {
		t.Errorf("pods %v, want old,old,new", pods)
	}
}

// BenchmarkL7Flow measures building one DNS answer's flow.
func BenchmarkL7Flow(b *testing.B) {
	l := newL7Builder(&renamer{pod: "store-front", version: 1})
	ev := &DNSEvent{Time: time.Unix(1700000001, 0), Src: l7Pod, Dst: l7Server, SrcIdentity: 300, DstIdentity: 2, Proto: 17,
		Verdict: flow.Verdict_FORWARDED, Cookie: 9, Response: true, Query: "bing.com.", IPs: []string{"203.0.113.1"}, TTL: 60}
	b.ReportAllocs()
	for b.Loop() {
		l.dnsFlow(ev)
	}
}
