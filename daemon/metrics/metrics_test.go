package metrics

import (
	"strings"
	"testing"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/wrapperspb"
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
