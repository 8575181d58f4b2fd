package metrics

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

func TestCount(t *testing.T) {
	m := New(nil, nil)
	drop := &flow.Flow{
		Verdict: flow.Verdict_DROPPED, DropReasonDesc: flow.DropReason_POLICY_DENIED, TrafficDirection: flow.TrafficDirection_INGRESS,
		Source:      &flow.Endpoint{},
		Destination: &flow.Endpoint{Namespace: "pets", PodName: "store-front"},
		L4:          &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{Flags: &flow.TCPFlags{SYN: true}}}},
		IsReply:     wrapperspb.Bool(false),
	}
	for range 3 {
		m.Count(drop)
	}
	want := `
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination_namespace="pets",destination_pod="store-front",protocol="TCP",reason="POLICY_DENIED",source_namespace="",source_pod="",traffic_direction="ingress"} 3
`
	if err := testutil.CollectAndCompare(m.drops, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.verdicts); n != 1 {
		t.Errorf("%d policy verdict series", n)
	}
	if v := testutil.ToFloat64(m.tcpFlags.WithLabelValues("SYN", "IPv4", "", "", "pets", "store-front")); v != 3 {
		t.Errorf("SYN count %v", v)
	}
}

// TestCountSeries: flows that differ in any label count in their own
// series, flows that share them in the same.
func TestCountSeries(t *testing.T) {
	m := New(nil, nil)
	mk := func(pod string, v flow.Verdict, syn, reply bool) *flow.Flow {
		return &flow.Flow{Verdict: v, DropReasonDesc: flow.DropReason_POLICY_DENIED, TrafficDirection: flow.TrafficDirection_EGRESS,
			Source: &flow.Endpoint{Namespace: "pets", PodName: pod}, Destination: &flow.Endpoint{},
			L4:      &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{Flags: &flow.TCPFlags{SYN: syn}}}},
			IsReply: wrapperspb.Bool(reply)}
	}
	for _, f := range []*flow.Flow{mk("a", flow.Verdict_DROPPED, true, false), mk("a", flow.Verdict_DROPPED, true, false),
		mk("b", flow.Verdict_DROPPED, true, false), mk("a", flow.Verdict_FORWARDED, true, false), mk("a", flow.Verdict_FORWARDED, false, true)} {
		m.Count(f)
	}
	if v := testutil.ToFloat64(m.drops.WithLabelValues("POLICY_DENIED", "TCP", "egress", "pets", "a", "", "")); v != 2 {
		t.Errorf("drops of a: %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.flows.WithLabelValues("L3_L4", "to-endpoint", "FORWARDED", "pets", "a", "", "")); v != 2 {
		t.Errorf("forwarded flows of a: %v, want 2", v)
	}
	if v := testutil.ToFloat64(m.verdicts.WithLabelValues("egress", "none", "forwarded", "pets", "a", "", "")); v != 1 {
		t.Errorf("forwarded verdicts of a: %v, want 1 (the reply without SYN is none)", v)
	}
	if v := testutil.ToFloat64(m.tcpFlags.WithLabelValues("SYN", "IPv4", "pets", "b", "", "")); v != 1 {
		t.Errorf("SYN of b: %v, want 1", v)
	}
}

type podResolver struct{}

func (podResolver) Peer(ip netip.Addr, id uint32) observe.Peer {
	if ip == netip.MustParseAddr("10.244.1.2") {
		return observe.Peer{Identity: id, Namespace: "pets", PodName: "store-front"}
	}
	return observe.Peer{Identity: id, Labels: []string{"reserved:world"}}
}

func (podResolver) Rule(c uint32) (policy.RuleRef, bool) {
	return policy.RuleRef{Kind: "NetworkPolicy", Namespace: "pets", Name: "allow"}, c == 9
}
func (podResolver) NodeName() string { return "node-1" }

// TestCountEntries: the observer's entries, counted from their keys in
// batches, give exactly the series and values of their flows counted one
// by one.
func TestCountEntries(t *testing.T) {
	obs := observe.New(nil, podResolver{}, 64, slog.New(slog.DiscardHandler))
	fast, slow := New(nil, obs), New(nil, nil)
	remove := obs.AddTap(fast.CountEntries)
	defer remove()
	pod, world := netip.MustParseAddrPort("10.244.1.2:8080"), netip.MustParseAddrPort("192.0.2.10:40000")
	ev := func(dropped bool, dir uint8, flags uint8, ct uint8, cookie uint32, src, dst netip.AddrPort, proto uint8) bpf.FlowEvent {
		e := bpf.FlowEvent{Time: time.Now(), Dropped: dropped, Dir: dir, TCPFlags: flags, CTState: ct, Cookie: cookie, Src: src, Dst: dst, Proto: proto, SrcIdentity: 2, DstIdentity: 300}
		if dropped {
			e.Reason = 133
		}
		return e
	}
	var evs []bpf.FlowEvent
	for range 3 {
		evs = append(evs, ev(true, 0, 0x02, bpf.CTNew, 0, world, pod, policy.ProtoTCP))
	}
	evs = append(evs,
		ev(false, 0, 0x02, bpf.CTNew, 9, world, pod, policy.ProtoTCP),
		ev(false, 0, 0x12, bpf.CTReply, 9, pod, world, policy.ProtoTCP),
		ev(false, 1, 0x11, bpf.CTEstablished, 0, pod, world, policy.ProtoTCP),
		ev(false, 1, 0x04, bpf.CTEstablished, 0, pod, world, policy.ProtoTCP),
		ev(true, 1, 0, bpf.CTNew, 0, pod, world, policy.ProtoUDP),
		ev(true, 1, 0, bpf.CTNew, 0, pod, world, policy.ProtoUDP),
		ev(false, 1, 0, bpf.CTNew, 0, pod, world, policy.ProtoICMP),
		ev(true, 0, 0x02, bpf.CTNew, 0, world, pod, policy.ProtoTCP))
	obs.AddEvents(evs[:5]...)
	obs.Add(&flow.Flow{Verdict: flow.Verdict_FORWARDED, Source: &flow.Endpoint{Namespace: "pets", PodName: "store-front"}, Destination: &flow.Endpoint{},
		L7: &flow.Layer7{Type: flow.L7FlowType_REQUEST, Record: &flow.Layer7_Dns{Dns: &flow.DNS{Query: "a.example.", Qtypes: []string{"A"}}}}})
	// HTTP entries count from their keys too, their flows built only for
	// a new series.
	server := netip.MustParseAddrPort("10.244.1.3:3002")
	for i, h := range []observe.HTTPEvent{
		{Verdict: flow.Verdict_DROPPED, Direction: flow.TrafficDirection_EGRESS, Method: "POST", URL: "http://x/", Protocol: "HTTP/1.1"},
		{Verdict: flow.Verdict_DROPPED, Direction: flow.TrafficDirection_EGRESS, Method: "POST", URL: "http://x/", Protocol: "HTTP/1.1", Response: true, Code: 403},
		{Verdict: flow.Verdict_FORWARDED, Direction: flow.TrafficDirection_EGRESS, Method: "GET", URL: "http://x/", Protocol: "HTTP/1.1", Response: true, Code: 200, Latency: 3 * time.Millisecond},
		{Verdict: flow.Verdict_FORWARDED, Direction: flow.TrafficDirection_EGRESS, Method: "GET", URL: "http://x/a", Protocol: "HTTP/1.1", Response: true, Code: 200, Latency: 40 * time.Millisecond},
		{Verdict: flow.Verdict_FORWARDED, Direction: flow.TrafficDirection_INGRESS, Method: "GET", URL: "http://x/", Protocol: "HTTP/1.0", Response: true, Code: 404, Latency: time.Millisecond, Cookie: 9},
	} {
		h.Time, h.Src, h.Dst, h.SrcIdentity, h.DstIdentity = time.Now(), pod, server, 300, 301
		if i == 4 {
			h.Src = world
		}
		obs.AddHTTP(&h)
	}
	obs.AddEvents(evs[5:]...)
	for _, f := range obs.Last(64, nil) {
		slow.Count(f)
	}
	for _, c := range []struct {
		name       string
		fast, slow prometheus.Collector
	}{{"hubble_flows_processed_total", fast.flows, slow.flows}, {"hubble_drop_total", fast.drops, slow.drops},
		{"hubble_tcp_flags_total", fast.tcpFlags, slow.tcpFlags}, {"hubble_policy_verdicts_total", fast.verdicts, slow.verdicts},
		{"hubble_dns_queries_total", fast.dnsQ, slow.dnsQ}, {"hubble_http_requests_total", fast.httpReq, slow.httpReq},
		{"hubble_http_request_duration_seconds", fast.httpDur, slow.httpDur}} {
		got, err := testutil.CollectAndFormat(c.fast, expfmt.TypeTextPlain, c.name)
		if err != nil {
			t.Fatal(err)
		}
		want, err := testutil.CollectAndFormat(c.slow, expfmt.TypeTextPlain, c.name)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) || len(want) == 0 {
			t.Errorf("%s from entries:\n%s\nfrom flows:\n%s", c.name, got, want)
		}
	}
	if v := testutil.ToFloat64(fast.drops.WithLabelValues("POLICY_DENIED", "TCP", "ingress", "", "", "pets", "store-front")); v != 4 {
		t.Errorf("drops to store-front: %v, want 4", v)
	}
}

// TestCountL7: HTTP and DNS flows count in Hubble's series, once per flow,
// the same whether their series were made by this flow or an earlier one
// with the same labels.
func TestCountL7(t *testing.T) {
	m := New(nil, nil)
	client := &flow.Endpoint{Namespace: "pets", PodName: "order-service"}
	server := &flow.Endpoint{Namespace: "pets", PodName: "product-service"}
	httpResp := func(code uint32, dir flow.TrafficDirection) *flow.Flow {
		return &flow.Flow{Verdict: flow.Verdict_FORWARDED, TrafficDirection: dir, Source: server, Destination: client,
			L7: &flow.Layer7{Type: flow.L7FlowType_RESPONSE, LatencyNs: 2_000_000,
				Record: &flow.Layer7_Http{Http: &flow.HTTP{Method: "GET", Protocol: "HTTP/1.1", Code: code}}}}
	}
	for range 3 {
		m.Count(httpResp(200, flow.TrafficDirection_EGRESS))
	}
	m.Count(httpResp(403, flow.TrafficDirection_EGRESS))
	m.Count(httpResp(200, flow.TrafficDirection_INGRESS))
	dnsAnswer := &flow.Flow{Verdict: flow.Verdict_FORWARDED, Source: server, Destination: client,
		L7: &flow.Layer7{Type: flow.L7FlowType_RESPONSE, Record: &flow.Layer7_Dns{Dns: &flow.DNS{Query: "a.example.",
			Qtypes: []string{"A"}, Rrtypes: []string{"CNAME", "A", "A"}, Ips: []string{"192.0.2.1", "192.0.2.2"}}}}}
	m.Count(dnsAnswer)
	m.Count(dnsAnswer)
	for _, c := range []struct {
		what string
		got  float64
		want float64
	}{
		{"GET 200 client", testutil.ToFloat64(m.httpReq.WithLabelValues("GET", "HTTP/1.1", "200", "client", "pets", "order-service", "pets", "product-service")), 3},
		{"GET 403 client", testutil.ToFloat64(m.httpReq.WithLabelValues("GET", "HTTP/1.1", "403", "client", "pets", "order-service", "pets", "product-service")), 1},
		{"GET 200 server", testutil.ToFloat64(m.httpReq.WithLabelValues("GET", "HTTP/1.1", "200", "server", "pets", "order-service", "pets", "product-service")), 1},
		{"http flows", testutil.ToFloat64(m.flows.WithLabelValues("L7", "http", "FORWARDED", "pets", "product-service", "pets", "order-service")), 5},
		{"dns flows", testutil.ToFloat64(m.flows.WithLabelValues("L7", "dns", "FORWARDED", "pets", "product-service", "pets", "order-service")), 2},
		{"dns queries", testutil.ToFloat64(m.dnsQ.WithLabelValues("", "A", "0", "pets", "order-service", "pets", "product-service")), 2},
		{"dns responses", testutil.ToFloat64(m.dnsR.WithLabelValues("No Error", "A", "2", "pets", "product-service", "pets", "order-service")), 2},
		{"A records", testutil.ToFloat64(m.dnsTypes.WithLabelValues("A", "A", "pets", "product-service", "pets", "order-service")), 4},
		{"CNAME records", testutil.ToFloat64(m.dnsTypes.WithLabelValues("CNAME", "A", "pets", "product-service", "pets", "order-service")), 2},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// Four egress GETs observed in one duration series.
	want := `
# HELP hubble_http_request_duration_seconds Quantiles of HTTP request duration in seconds
# TYPE hubble_http_request_duration_seconds histogram
`
	got, err := testutil.CollectAndFormat(m.httpDur, expfmt.TypeTextPlain, "hubble_http_request_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{`hubble_http_request_duration_seconds_count{destination_namespace="pets",destination_pod="product-service",method="GET",reporter="client",source_namespace="pets",source_pod="order-service"} 4`,
		`hubble_http_request_duration_seconds_count{destination_namespace="pets",destination_pod="product-service",method="GET",reporter="server",source_namespace="pets",source_pod="order-service"} 1`} {
		if !strings.Contains(string(got), line) {
			t.Errorf("duration histogram lacks %s:\n%s%s", line, want, got)
		}
	}
}
