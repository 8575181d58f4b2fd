package main

import (
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestFlowRendering(t *testing.T) {
	ts := timestamppb.New(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC))
	drop := &flow.Flow{
		Time: ts, Verdict: flow.Verdict_DROPPED, DropReasonDesc: flow.DropReason_POLICY_DENIED,
		TrafficDirection: flow.TrafficDirection_INGRESS,
		IP:               &flow.IP{Source: "192.0.2.10", Destination: "10.241.0.5"},
		Source:           &flow.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
		Destination:      &flow.Endpoint{Identity: 300, Namespace: "pets", PodName: "store-front"},
		L4:               &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: 40000, DestinationPort: 8080, Flags: &flow.TCPFlags{SYN: true}}}},
		IngressDeniedBy:  []*flow.Policy{{Name: "chaos", Namespace: "pets"}},
	}
	httpResp := &flow.Flow{
		Time: ts, Verdict: flow.Verdict_FORWARDED, TrafficDirection: flow.TrafficDirection_EGRESS,
		IP:     &flow.IP{Source: "10.241.0.6", Destination: "10.241.0.7"},
		Source: &flow.Endpoint{Namespace: "pets", PodName: "store-front"}, Destination: &flow.Endpoint{Namespace: "pets", PodName: "product-service"},
		L7: &flow.Layer7{Type: flow.L7FlowType_RESPONSE, LatencyNs: 3e6, Record: &flow.Layer7_Http{Http: &flow.HTTP{Code: 200, Method: "GET", Url: "http://product-service:3002/", Protocol: "HTTP/1.1"}}},
	}
	named := &flow.Flow{
		Time: ts, Verdict: flow.Verdict_FORWARDED, TrafficDirection: flow.TrafficDirection_EGRESS,
		IP:               &flow.IP{Source: "10.244.1.3", Destination: "203.0.113.20"},
		Source:           &flow.Endpoint{Identity: 257, Namespace: "pets", PodName: "order-service"},
		Destination:      &flow.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
		DestinationNames: []string{"www.microsoft.com"},
		L4:               &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: 40000, DestinationPort: 443}}},
	}
	for _, tc := range []struct {
		name string
		got  string
		want []string
	}{
		{"compact drop", compact(drop), []string{"192.0.2.10:40000 (world) -> pets/store-front:8080 (ID:300) to-endpoint TCP Policy denied DROPPED (TCP Flags: SYN) [policy pets/chaos]"}},
		{"table drop", tableRow(drop), []string{"192.0.2.10:40000 (world)\tpets/store-front:8080 (ID:300)\tto-endpoint\tPolicy denied DROPPED\tTCP (TCP Flags: SYN) [policy pets/chaos]"}},
		{"compact http", compact(httpResp), []string{"pets/store-front (ID:0) -> pets/product-service (ID:0) http-response FORWARDED (HTTP/1.1 200 3ms (GET http://product-service:3002/))"}},
		{"compact named", compact(named), []string{"pets/order-service:40000 (ID:257) -> www.microsoft.com:443 (world) from-endpoint TCP FORWARDED"}},
		{"table http", tableRow(httpResp), []string{"\thttp-response\tFORWARDED\t(HTTP/1.1 200 3ms (GET http://product-service:3002/))"}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(tc.got, w) {
				t.Errorf("%s:\n got %q\nwant it to contain %q", tc.name, tc.got, w)
			}
		}
		if strings.Count(tc.got, "\t") != 0 && strings.Count(tc.got, "\t") != 5 {
			t.Errorf("%s: %d columns, want 6: %q", tc.name, strings.Count(tc.got, "\t")+1, tc.got)
		}
	}
}
