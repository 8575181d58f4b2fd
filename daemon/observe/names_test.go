package observe

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
)

func dnsAnswer(pod, query string, ttl uint32, verdict flow.Verdict, cnames []string, ips ...string) *flow.Flow {
	return &flow.Flow{
		Verdict: verdict, IP: &flow.IP{Source: "10.244.1.6", Destination: pod},
		L7: &flow.Layer7{Type: flow.L7FlowType_RESPONSE, Record: &flow.Layer7_Dns{Dns: &flow.DNS{Query: query, Ips: ips, Ttl: ttl, Cnames: cnames}}},
	}
}

func TestDNSNames(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	pod, other := netip.MustParseAddr("10.244.1.3"), netip.MustParseAddr("10.244.1.4")
	ms := netip.MustParseAddr("203.0.113.20")
	n := newDNSNames()

	egress := func(src, dst netip.Addr, at time.Time) *flow.Flow {
		f := &flow.Flow{Source: &flow.Endpoint{PodName: "order-service"}, Destination: &flow.Endpoint{}}
		n.annotate(f, src, dst, at)
		return f
	}
	if f := egress(pod, ms, now); f.DestinationNames != nil {
		t.Fatalf("names before any answer: %v", f.DestinationNames)
	}
	// Refused or empty answers teach nothing.
	n.learn(dnsAnswer(pod.String(), "www.bing.com.", 300, flow.Verdict_DROPPED, nil, "203.0.113.30"), now)
	n.learn(dnsAnswer(pod.String(), "empty.microsoft.com.", 300, flow.Verdict_FORWARDED, nil), now)
	if !n.empty.Load() {
		t.Fatal("a refused or empty answer was learned")
	}
	n.learn(dnsAnswer(pod.String(), "WWW.Microsoft.com.", 5, flow.Verdict_FORWARDED, []string{"edge.microsoft.com."}, "203.0.113.20"), now)
	if got := egress(pod, ms, now).DestinationNames; !slices.Equal(got, []string{"www.microsoft.com", "edge.microsoft.com"}) {
		t.Errorf("destination names %v", got)
	}
	// Names are the asking pod's: another pod's flow to the same address
	// is not named.
	if got := egress(other, ms, now).DestinationNames; got != nil {
		t.Errorf("another pod's flow named %v", got)
	}
	// An ingress flow to the pod from that address names its source.
	in := &flow.Flow{Source: &flow.Endpoint{}, Destination: &flow.Endpoint{PodName: "order-service"}}
	n.annotate(in, ms, pod, now)
	if !slices.Contains(in.SourceNames, "www.microsoft.com") {
		t.Errorf("source names %v", in.SourceNames)
	}
	// A short TTL is kept for namesMinTTL, then forgotten.
	if got := egress(pod, ms, now.Add(namesMinTTL-time.Second)).DestinationNames; got == nil {
		t.Error("forgotten before the minimum TTL")
	}
	if got := egress(pod, ms, now.Add(namesMinTTL+time.Second)).DestinationNames; got != nil {
		t.Errorf("still named after the TTL: %v", got)
	}
	// A second name for the same address is added, not replacing the first.
	n.learn(dnsAnswer(pod.String(), "alias.microsoft.com", 300, flow.Verdict_FORWARDED, nil, "203.0.113.20"), now.Add(time.Second))
	if got := egress(pod, ms, now.Add(2*time.Second)).DestinationNames; !slices.Contains(got, "alias.microsoft.com") || !slices.Contains(got, "www.microsoft.com") {
		t.Errorf("names after a second answer %v", got)
	}
	// The same answer again keeps the names and their order, and moves
	// the expiry.
	later := now.Add(namesMinTTL / 2)
	n.learn(dnsAnswer(pod.String(), "alias.microsoft.com", 5, flow.Verdict_FORWARDED, nil, "203.0.113.20"), later)
	want := egress(pod, ms, now.Add(2*time.Second)).DestinationNames
	if got := egress(pod, ms, later.Add(namesMinTTL-time.Second)).DestinationNames; len(want) == 0 || !slices.Equal(got, want) {
		t.Errorf("names after the same answer again %v, want %v", got, want)
	}
	if got := egress(pod, ms, later.Add(namesMinTTL+time.Second)).DestinationNames; got != nil {
		t.Errorf("the repeated answer's expiry did not apply: %v", got)
	}
}

func TestDNSNamesBounded(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	n := newDNSNames()
	ips := make([]string, 0, 1000)
	for i := range 1000 {
		ips = append(ips, netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(i % 250)}).String())
	}
	for p := range namesMax/1000 + 5 {
		pod := netip.AddrFrom4([4]byte{10, 244, byte(p / 250), byte(p % 250)}).String()
		n.learn(dnsAnswer(pod, "many.example.", 30, flow.Verdict_FORWARDED, nil, ips...), now)
	}
	if n.size > namesMax {
		t.Errorf("%d entries kept, bound %d", n.size, namesMax)
	}
	// Once they expire, room comes back.
	later := now.Add(2 * namesMinTTL)
	n.learn(dnsAnswer("10.9.9.9", "fresh.example.", 30, flow.Verdict_FORWARDED, nil, "192.0.2.1"), later)
	if got := n.lookup(netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("192.0.2.1"), later); !slices.Equal(got, []string{"fresh.example"}) {
		t.Errorf("after expiry: %v", got)
	}
}
