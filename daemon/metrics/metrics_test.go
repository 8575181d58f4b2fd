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
