package policy

import (
	"errors"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func TestValidateAccepts(t *testing.T) {
	for _, y := range []string{`
		metadata: {namespace: pets, name: all-fields}
		spec:
		  podSelector:
		    matchLabels: {app: cat, example.com/tier: back-end}
		    matchExpressions:
		    - {key: env, operator: In, values: [prod]}
		    - {key: env, operator: NotIn, values: [dev]}
		    - {key: tier, operator: Exists}
		    - {key: legacy, operator: DoesNotExist}
		  policyTypes: [Ingress, Egress]
		  ingress:
		  - from:
		    - podSelector: {}
		    - namespaceSelector: {}
		    - namespaceSelector: {matchLabels: {team: a}}
		      podSelector: {matchLabels: {app: dog}}
		    - ipBlock: {cidr: 10.1.2.3/8, except: [10.1.0.0/16]}
		    ports:
		    - {}
		    - {protocol: UDP}
		    - {protocol: SCTP, port: 3868}
		    - {port: 1, endPort: 65535}
		    - {port: http-alt}
		  - {}
		  egress:
		  - to: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8::/64"]}}]
		    ports: [{port: 443, endPort: 443}]`, `
		metadata: {namespace: pets, name: minimal}
		spec: {podSelector: {}}`,
	} {
		np, err := decodePolicy(y)
		if err != nil {
			t.Fatal(err)
		}
		if err := Validate(np); err != nil {
			t.Errorf("Validate(%s): %v", np.Name, err)
		}
	}
}

// TestValidateRejects breaks a valid policy one field at a time: each
// error must name the field, so an operator can fix the manifest.
func TestValidateRejects(t *testing.T) {
	base := `
		metadata: {namespace: pets, name: foo}
		spec:
		  podSelector: {matchLabels: {app: cat}}
		  ingress:
		  - from:
		    - podSelector: {matchLabels: {app: dog}}
		    - ipBlock: {cidr: 203.0.113.0/24}
		    ports: [{port: 80}]
		  egress:
		  - to: [{namespaceSelector: {}}]`
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"bad cidr", "cidr: 203.0.113.0/24", "cidr: x",
			`spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "x"`},
		{"missing cidr", "cidr: 203.0.113.0/24", "except: [203.0.113.0/25]",
			"spec.ingress[0].from[1].ipBlock.cidr: required"},
		{"cidr with zone", "cidr: 203.0.113.0/24", `cidr: "fe80::%eth0/64"`,
			"spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR"},
		{"IPv4-mapped cidr", "cidr: 203.0.113.0/24", `cidr: "::ffff:203.0.113.0/120"`,
			"spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR"},
		{"bad except", "cidr: 203.0.113.0/24", "cidr: 203.0.113.0/24, except: [10.0.0.0/33]",
			`spec.ingress[0].from[1].ipBlock.except[0]: invalid CIDR "10.0.0.0/33"`},
		{"except outside cidr", "cidr: 203.0.113.0/24", "cidr: 203.0.113.0/24, except: [198.51.100.0/25]",
			"spec.ingress[0].from[1].ipBlock.except[0]: \"198.51.100.0/25\" must be a strict subset"},
		{"except equal to cidr", "cidr: 203.0.113.0/24", "cidr: 203.0.113.0/24, except: [203.0.113.0/24]",
			"spec.ingress[0].from[1].ipBlock.except[0]:"},
		{"except of other family", "cidr: 203.0.113.0/24", `cidr: 203.0.113.0/24, except: ["2001:db8::/64"]`,
			"spec.ingress[0].from[1].ipBlock.except[0]:"},
		{"ipBlock with a selector", "- ipBlock: {cidr: 203.0.113.0/24}", "- {ipBlock: {cidr: 203.0.113.0/24}, podSelector: {}}",
			"spec.ingress[0].from[1]: may not specify both ipBlock and another peer"},
		{"empty peer", "- ipBlock: {cidr: 203.0.113.0/24}", "- {}",
			"spec.ingress[0].from[1]: must specify a peer"},
		{"bad protocol", "ports: [{port: 80}]", "ports: [{protocol: ICMP, port: 80}]",
			`spec.ingress[0].ports[0].protocol: unsupported protocol "ICMP"`},
		{"lowercase protocol", "ports: [{port: 80}]", "ports: [{protocol: tcp, port: 80}]",
			`spec.ingress[0].ports[0].protocol: unsupported protocol "tcp"`},
		{"port zero", "ports: [{port: 80}]", "ports: [{port: 0}]",
			"spec.ingress[0].ports[0].port: invalid port 0"},
		{"port too big", "ports: [{port: 80}]", "ports: [{port: 65536}]",
			"spec.ingress[0].ports[0].port: invalid port 65536"},
		{"negative port", "ports: [{port: 80}]", "ports: [{port: -1}]",
			"spec.ingress[0].ports[0].port: invalid port -1"},
		{"bad port name", "ports: [{port: 80}]", "ports: [{port: Http}]",
			`spec.ingress[0].ports[0].port: invalid port name "Http"`},
		{"numeric string port", "ports: [{port: 80}]", `ports: [{port: "80"}]`,
			`spec.ingress[0].ports[0].port: invalid port name "80"`},
		{"long port name", "ports: [{port: 80}]", "ports: [{port: a-very-long-port-name}]",
			"spec.ingress[0].ports[0].port: invalid port name"},
		{"endPort below port", "ports: [{port: 80}]", "ports: [{port: 80, endPort: 79}]",
			"spec.ingress[0].ports[0].endPort: 79 must be greater than or equal to port 80"},
		{"endPort too big", "ports: [{port: 80}]", "ports: [{port: 80, endPort: 70000}]",
			"spec.ingress[0].ports[0].endPort: invalid port 70000"},
		{"endPort with named port", "ports: [{port: 80}]", "ports: [{port: http, endPort: 90}]",
			"spec.ingress[0].ports[0].endPort: may not be specified when port is a name"},
		{"endPort without port", "ports: [{port: 80}]", "ports: [{endPort: 90}]",
			"spec.ingress[0].ports[0].endPort: may not be specified when port is not specified"},
		{"bad operator", "podSelector: {matchLabels: {app: cat}}", "podSelector: {matchExpressions: [{key: app, operator: Equals, values: [cat]}]}",
			`spec.podSelector.matchExpressions[0].operator: unsupported operator "Equals"`},
		{"In without values", "podSelector: {matchLabels: {app: cat}}", "podSelector: {matchExpressions: [{key: app, operator: In}]}",
			"spec.podSelector.matchExpressions[0].values: required when operator is In"},
		{"Exists with values", "podSelector: {matchLabels: {app: cat}}", "podSelector: {matchExpressions: [{key: app, operator: Exists, values: [cat]}]}",
			"spec.podSelector.matchExpressions[0].values: must be empty when operator is Exists"},
		{"bad expression key", "podSelector: {matchLabels: {app: cat}}", `podSelector: {matchExpressions: [{key: "a b", operator: Exists}]}`,
			`spec.podSelector.matchExpressions[0].key: invalid label key "a b"`},
		{"bad expression value", "podSelector: {matchLabels: {app: cat}}", `podSelector: {matchExpressions: [{key: app, operator: In, values: ["-x"]}]}`,
			`spec.podSelector.matchExpressions[0].values[0]: invalid label value "-x"`},
		{"bad label key", "podSelector: {matchLabels: {app: cat}}", `podSelector: {matchLabels: {"a/b/c": cat}}`,
			`spec.podSelector.matchLabels: invalid label key "a/b/c"`},
		{"bad label value", "podSelector: {matchLabels: {app: cat}}", `podSelector: {matchLabels: {app: "c a t"}}`,
			`spec.podSelector.matchLabels[app]: invalid label value "c a t"`},
		{"bad peer podSelector", "- podSelector: {matchLabels: {app: dog}}", "- podSelector: {matchExpressions: [{key: app, operator: in, values: [dog]}]}",
			`spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: unsupported operator "in"`},
		{"bad egress namespaceSelector", "to: [{namespaceSelector: {}}]", "to: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn}]}}]",
			"spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values: required when operator is NotIn"},
		{"bad policy type", "podSelector: {matchLabels: {app: cat}}", "podSelector: {}\n  policyTypes: [Ingress, ingress]",
			`spec.policyTypes[1]: unsupported policy type "ingress"`},
		{"too many policy types", "podSelector: {matchLabels: {app: cat}}", "podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]",
			"spec.policyTypes: may not specify more than two policy types"},
		{"missing name", "name: foo", "labels: {}",
			"metadata.name: required"},
		{"bad name", "name: foo", "name: Foo",
			`metadata.name: invalid name "Foo"`},
		{"missing namespace", "namespace: pets, ", "",
			"metadata.namespace: required"},
		{"bad namespace", "namespace: pets", "namespace: pets.example",
			`metadata.namespace: invalid name "pets.example"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := dedent(base)
			if !strings.Contains(y, tc.old) {
				t.Fatalf("base has no %q", tc.old)
			}
			np, err := decodePolicy(strings.Replace(y, tc.old, tc.new, 1))
			if err != nil {
				t.Fatal(err)
			}
			err = Validate(np)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: got %v, want %q", err, tc.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.HasPrefix(tc.want, fe.Field) {
				t.Errorf("first FieldError %+v does not name %q", fe, tc.want)
			}
		})
	}
}

func TestValidateReportsEveryError(t *testing.T) {
	np, err := decodePolicy(`
		metadata: {namespace: pets, name: foo}
		spec:
		  podSelector: {}
		  ingress:
		  - from: [{ipBlock: {cidr: x}}]
		    ports: [{port: 0}]`)
	if err != nil {
		t.Fatal(err)
	}
	var errs FieldErrors
	if err := Validate(np); !errors.As(err, &errs) || len(errs) != 2 {
		t.Fatalf("Validate = %v, want 2 field errors", err)
	}
	if err := Validate(nil); err == nil {
		t.Error("Validate(nil) succeeded")
	}
}

func TestCompileNamesPolicyAndField(t *testing.T) {
	np, err := decodePolicy(`
		metadata: {namespace: pets, name: foo}
		spec:
		  podSelector: {}
		  ingress:
		  - from: [{podSelector: {}}, {ipBlock: {cidr: x}}]`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(Input{NetworkPolicies: []*networkingv1.NetworkPolicy{np}}, nil)
	want := `compile networkpolicy pets/foo: spec.ingress[0].from[1].ipBlock.cidr: invalid CIDR "x"`
	if err == nil || err.Error() != want {
		t.Errorf("Compile: got %v, want %s", err, want)
	}
}
