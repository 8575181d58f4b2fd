package policy

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// FuzzCompile feeds arbitrary manifests through Validate and Compile: they
// must never panic, must agree on what is valid, and a valid policy must
// compile into entries the datapath can store.
func FuzzCompile(f *testing.F) {
	for _, tc := range conformanceCases() {
		for _, y := range tc.policies {
			f.Add(dedent(y))
		}
	}
	f.Add("metadata: {namespace: a, name: b}\nspec: {podSelector: {matchExpressions: [{key: x, operator: In}]}}")
	f.Add("spec: {ingress: [{from: [{}], ports: [{port: 0, endPort: -5}]}]}")

	w := defaultWorld()
	f.Fuzz(func(t *testing.T, manifest string) {
		var np networkingv1.NetworkPolicy
		if err := yaml.Unmarshal([]byte(manifest), &np); err != nil {
			return
		}
		verr := Validate(&np)
		in, c := w.input([]*networkingv1.NetworkPolicy{&np})
		res, cerr := Compile(in, nil)
		if (verr == nil) != (cerr == nil) {
			t.Fatalf("Validate: %v, but Compile: %v", verr, cerr)
		}
		if cerr != nil {
			return
		}
		for local, ip := range res.Identities {
			for k, e := range ip.Entries {
				if k.Local != local || k.PortPrefixLen > 16 || k.Port&^portMask(k.PortPrefixLen) != 0 ||
					(k.Proto == ProtoAny && k.PortPrefixLen != 0) {
					t.Fatalf("malformed key %+v", k)
				}
				if _, ok := res.Rules[e.Cookie]; !ok || e.Action != ActionAllow {
					t.Fatalf("entry %+v at %+v names no rule", e, k)
				}
			}
			for _, remote := range c.pods {
				res.Lookup(local, remote, Ingress, ProtoTCP, 80)
				res.Lookup(local, remote, Egress, ProtoUDP, 53)
			}
		}
	})
}

// FuzzCompileCilium feeds arbitrary Cilium policies through the cnp
// parser and Compile: an accepted policy must compile, into well-formed
// keys whose cookies name a rule, and lookups must not panic.
func FuzzCompileCilium(f *testing.F) {
	for _, tc := range ciliumCases() {
		for _, y := range tc.policies {
			if strings.Contains(y, "kind: Cilium") {
				f.Add(dedent(y))
			}
		}
	}
	w := defaultWorld()
	f.Fuzz(func(t *testing.T, manifest string) {
		cp, err := decodeCilium(manifest)
		if err != nil {
			return
		}
		in, c := w.input(nil, cp)
		res, err := Compile(in, nil)
		if err != nil {
			t.Fatalf("accepted policy does not compile: %v", err)
		}
		for local, ip := range res.Identities {
			for k, e := range ip.Entries {
				if k.Local != local || k.PortPrefixLen > 16 || k.Port&^portMask(k.PortPrefixLen) != 0 ||
					(k.Proto == ProtoAny && k.PortPrefixLen != 0) {
					t.Fatalf("malformed key %+v", k)
				}
				if _, ok := res.Rules[e.Cookie]; !ok {
					t.Fatalf("entry %+v at %+v names no rule", e, k)
				}
			}
			for _, remote := range c.pods {
				res.Lookup(local, remote, Ingress, ProtoTCP, 80)
				res.Lookup(local, remote, Egress, ProtoUDP, 53)
			}
			res.Lookup(local, IdentityWorld, Egress, ProtoTCP, 443)
		}
	})
}
