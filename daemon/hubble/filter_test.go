package hubble

import (
	"testing"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func sample() *flow.Flow {
	return &flow.Flow{
		Verdict: flow.Verdict_DROPPED, DropReasonDesc: flow.DropReason_POLICY_DENIED, TrafficDirection: flow.TrafficDirection_INGRESS,
		IP:     &flow.IP{Source: "192.0.2.10", Destination: "10.244.1.2", IpVersion: flow.IPVersion_IPv4},
		Source: &flow.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
		Destination: &flow.Endpoint{Identity: 300, Namespace: "pets", PodName: "store-front-7d9", Labels: []string{"k8s:app=store-front", "k8s:io.kubernetes.pod.namespace=pets"},
			Workloads: []*flow.Workload{{Name: "store-front", Kind: "Deployment"}}},
		L4:      &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: 40000, DestinationPort: 8080, Flags: &flow.TCPFlags{SYN: true}}}},
		IsReply: wrapperspb.Bool(false), NodeName: "node-1", EventType: &flow.CiliumEventType{Type: 1, SubType: 133},
		SourceNames: []string{"www.microsoft.com", "edge.bing.com"},
	}
}

func TestFilters(t *testing.T) {
	for _, tc := range []struct {
		name string
		ff   *flow.FlowFilter
		want bool
	}{
		{"verdict", &flow.FlowFilter{Verdict: []flow.Verdict{flow.Verdict_DROPPED}}, true},
		{"other verdict", &flow.FlowFilter{Verdict: []flow.Verdict{flow.Verdict_FORWARDED}}, false},
		{"pod prefix with namespace", &flow.FlowFilter{DestinationPod: []string{"pets/store-front"}}, true},
		{"namespace only", &flow.FlowFilter{DestinationPod: []string{"pets/"}}, true},
		{"wrong namespace", &flow.FlowFilter{DestinationPod: []string{"default/store-front"}}, false},
		{"world has no pod", &flow.FlowFilter{SourcePod: []string{"pets/"}}, false},
		{"source CIDR", &flow.FlowFilter{SourceIp: []string{"192.0.2.0/24"}}, true},
		{"destination IP", &flow.FlowFilter{DestinationIp: []string{"10.244.1.3"}}, false},
		{"label with source prefix", &flow.FlowFilter{DestinationLabel: []string{"k8s:app=store-front"}}, true},
		{"bare label", &flow.FlowFilter{DestinationLabel: []string{"app in (store-front, web)"}}, true},
		{"reserved world", &flow.FlowFilter{SourceLabel: []string{"reserved:world"}}, true},
		{"drop reason", &flow.FlowFilter{DropReasonDesc: []flow.DropReason{flow.DropReason_POLICY_DENY}}, false},
		{"direction", &flow.FlowFilter{TrafficDirection: []flow.TrafficDirection{flow.TrafficDirection_INGRESS}}, true},
		{"protocol and port", &flow.FlowFilter{Protocol: []string{"TCP"}, DestinationPort: []string{"8080"}}, true},
		{"port mismatch in same filter", &flow.FlowFilter{Protocol: []string{"tcp"}, DestinationPort: []string{"80"}}, false},
		{"tcp flags", &flow.FlowFilter{TcpFlags: []*flow.TCPFlags{{SYN: true}}}, true},
		{"tcp flags absent", &flow.FlowFilter{TcpFlags: []*flow.TCPFlags{{FIN: true}}}, false},
		{"identity", &flow.FlowFilter{SourceIdentity: []uint32{2}}, true},
		{"reply", &flow.FlowFilter{Reply: []bool{true}}, false},
		{"event type", &flow.FlowFilter{EventType: []*flow.EventTypeFilter{{Type: 1}}}, true},
		{"dns query on an L4 flow", &flow.FlowFilter{DnsQuery: []string{".*"}}, false},
		{"node", &flow.FlowFilter{NodeName: []string{"node-*"}}, true},
		{"source fqdn", &flow.FlowFilter{SourceFqdn: []string{"www.microsoft.com."}}, true},
		{"source fqdn wildcard", &flow.FlowFilter{SourceFqdn: []string{"*.MICROSOFT.com"}}, true},
		{"source fqdn wildcard spans labels", &flow.FlowFilter{SourceFqdn: []string{"*.com"}}, true},
		{"source fqdn whole name", &flow.FlowFilter{SourceFqdn: []string{"microsoft.com"}}, false},
		{"source fqdn of a CNAME", &flow.FlowFilter{SourceFqdn: []string{"edge.bing.com"}}, true},
		{"destination fqdn, none known", &flow.FlowFilter{DestinationFqdn: []string{"*"}}, false},
		{"destination workload", &flow.FlowFilter{DestinationWorkload: []*flow.Workload{{Name: "store-front", Kind: "Deployment"}}}, true},
		{"destination workload by kind", &flow.FlowFilter{DestinationWorkload: []*flow.Workload{{Kind: "Deployment"}}}, true},
		{"destination workload other kind", &flow.FlowFilter{DestinationWorkload: []*flow.Workload{{Name: "store-front", Kind: "StatefulSet"}}}, false},
		{"source workload, world has none", &flow.FlowFilter{SourceWorkload: []*flow.Workload{{Name: "store-front"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, err := compileFilters([]*flow.FlowFilter{tc.ff})
			if err != nil {
				t.Fatal(err)
			}
			if got := fs.any(sample()); got != tc.want {
				t.Errorf("match = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestInvalidFilters(t *testing.T) {
	for _, ff := range []*flow.FlowFilter{
		{SourceIp: []string{"nope"}},
		{DestinationPort: []string{"http"}},
		{SourceLabel: []string{"a in ("}},
		{Protocol: []string{"gopher"}},
		{Uuid: []string{"x"}},
		{DestinationFqdn: []string{"www.micro$oft.com"}},
	} {
		if _, err := compileFilters([]*flow.FlowFilter{ff}); err == nil {
			t.Errorf("%v accepted", ff)
		}
	}
}
