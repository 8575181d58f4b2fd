package policy

import (
	"maps"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// TestCompileEntries pins the exact entries of a small policy, the shape
// the datapath's maps receive.
func TestCompileEntries(t *testing.T) {
	np, err := decodePolicy(`
		metadata: {namespace: pets, name: p}
		spec:
		  podSelector: {matchLabels: {app: cat}}
		  ingress:
		  - from: [{podSelector: {matchLabels: {app: dog}}}]
		    ports: [{port: 80}, {protocol: UDP, port: 1000, endPort: 1023}, {port: http}]
		  egress:
		  - {}`)
	if err != nil {
		t.Fatal(err)
	}
	const cat, dog = 300, 301
	in := Input{
		Identities: []Identity{
			{ID: IdentityHost, Reserved: "host"},
			{ID: cat, Namespace: "pets", Labels: map[string]string{"app": "cat"}},
			{ID: dog, Namespace: "pets", Labels: map[string]string{"app": "dog"}},
		},
		Local:           []uint32{cat},
		NamedPorts:      map[uint32][]NamedPort{cat: {tcp("http", 8080)}, dog: {tcp("http", 80)}},
		NetworkPolicies: []*networkingv1.NetworkPolicy{np},
	}
	res, err := Compile(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Cookies 3 and 4 name the policy's default denies.
	in0 := Entry{Action: ActionAllow, Cookie: 5}
	eg0 := Entry{Action: ActionAllow, Cookie: 6}
	want := map[Key]Entry{
		{Local: cat, Remote: dog, Dir: Ingress, Proto: ProtoTCP, Port: 80, PortPrefixLen: 16}:   in0,
		{Local: cat, Remote: dog, Dir: Ingress, Proto: ProtoUDP, Port: 1000, PortPrefixLen: 13}: in0,
		{Local: cat, Remote: dog, Dir: Ingress, Proto: ProtoUDP, Port: 1008, PortPrefixLen: 12}: in0,
		{Local: cat, Remote: dog, Dir: Ingress, Proto: ProtoTCP, Port: 8080, PortPrefixLen: 16}: in0,
		{Local: cat, Remote: IdentityAny, Dir: Egress, Proto: ProtoAny}:                         eg0,
		{Local: cat, Remote: IdentityHost, Dir: Ingress, Proto: ProtoAny}:                       {Action: ActionAllow, Cookie: CookieHostIngress},
	}
	ip := res.Identities[cat]
	if ip == nil || !ip.IngressEnforced || !ip.EgressEnforced {
		t.Fatalf("identity policy: %+v", ip)
	}
	if !maps.Equal(ip.Entries, want) {
		t.Errorf("entries:\n got %v\nwant %v", ip.Entries, want)
	}
	if len(res.Rules) != 6 {
		t.Errorf("rules: %v", res.Rules)
	}
}

func TestCompileUnselectedLocalIsPresent(t *testing.T) {
	in := Input{
		Identities: []Identity{{ID: 300, Namespace: "pets", Labels: map[string]string{"app": "cat"}}},
		Local:      []uint32{300, 300},
	}
	res, err := Compile(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	ip := res.Identities[300]
	if ip == nil || ip.IngressEnforced || ip.EgressEnforced || ip.Entries == nil || len(ip.Entries) != 0 {
		t.Errorf("identity policy: %+v", ip)
	}
	if res.Rules[CookieHostIngress] != HostIngressRule {
		t.Errorf("rules: %v", res.Rules)
	}
}

func TestCompileErrors(t *testing.T) {
	pod := Identity{ID: 300, Namespace: "pets"}
	for _, tc := range []struct {
		name string
		in   Input
		want string
	}{
		{"unknown local", Input{Local: []uint32{300}}, "local identity 300 is not a known pod identity"},
		{"reserved local", Input{Identities: []Identity{{ID: 1, Reserved: "host"}}, Local: []uint32{1}},
			"local identity 1 is not a known pod identity"},
		{"nil policy", Input{Identities: []Identity{pod}, NetworkPolicies: []*networkingv1.NetworkPolicy{nil}},
			"compile networkpolicy at index 0: nil"},
		{"invalid policy", Input{Identities: []Identity{pod}, NetworkPolicies: []*networkingv1.NetworkPolicy{{}}},
			"compile networkpolicy at index 0: metadata.name: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Compile(tc.in, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || res != nil {
				t.Errorf("Compile = %v, %v; want error %q", res, err, tc.want)
			}
		})
	}
}

func TestCompileEmptyInput(t *testing.T) {
	res, err := Compile(Input{}, nil)
	if err != nil || res == nil || len(res.Identities) != 0 {
		t.Fatalf("Compile(Input{}) = %+v, %v", res, err)
	}
	if _, enforced := res.Lookup(300, 2, Ingress, ProtoTCP, 80); enforced {
		t.Error("unknown local enforced")
	}
}
