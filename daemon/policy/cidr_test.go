package policy

import (
	"net/netip"
	"slices"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func TestCIDRs(t *testing.T) {
	pols := []string{`
		metadata: {namespace: pets, name: a}
		spec:
		  podSelector: {}
		  ingress:
		  - from:
		    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 192.168.1.7/24]}
		    - ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}
		    - podSelector: {}
		  egress:
		  - to:
		    - ipBlock: {cidr: 203.0.113.0/24}
		    - ipBlock: {cidr: 10.0.0.0/8}
		    - ipBlock: {cidr: "::/0"}`, `
		metadata: {namespace: shop, name: b}
		spec:
		  podSelector: {}
		  egress:
		  - to:
		    - ipBlock: {cidr: 203.0.113.9/24}
		    - ipBlock: {cidr: 198.51.100.1/32}
		    - ipBlock: {cidr: not-a-cidr}`,
	}
	nps := []*networkingv1.NetworkPolicy{nil}
	for _, y := range pols {
		np, err := decodePolicy(y)
		if err != nil {
			t.Fatal(err)
		}
		nps = append(nps, np)
	}
	var want []netip.Prefix
	for _, s := range []string{
		"10.0.0.0/8", "192.168.1.0/24", "198.51.100.1/32", "203.0.113.0/24",
		"2001:db8::/32", "2001:db8:1::/48",
	} {
		want = append(want, netip.MustParsePrefix(s))
	}
	if got := CIDRs(nps, nil); !slices.Equal(got, want) {
		t.Errorf("CIDRs = %v, want %v", got, want)
	}
	if got := CIDRs(nil, nil); len(got) != 0 {
		t.Errorf("CIDRs(nil, nil) = %v", got)
	}
}
