package cnp

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func parseYAML(t testing.TB, y string) (*Policy, error) {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("yaml: %v", err)
	}
	return Parse(js)
}

const head = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: pets}\n"

// TestParseRejects: every invalid policy is refused with an error that
// names the field at fault.
func TestParseRejects(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", head + "spec: {endpointSelector: {}}\nspecz: {}", "specz: unknown field"},
		{"unknown field deep inside", head + "spec: {endpointSelector: {}, ingress: [{fromEndpoints: [{matchLabel: {a: b}}]}]}", "spec.ingress[0].fromEndpoints[0].matchLabel: unknown field"},
		{"misspelt section", head + "spec: {endpointSelector: {}, ingres: [{}]}", "spec.ingres: unknown field"},
		{"wrong type: port as number", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: 80}]}]}]}", "wrong type"},
		{"wrong type: ingress as object", head + "spec: {endpointSelector: {}, ingress: {fromEndpoints: []}}", "spec.ingress: wrong type"},
		{"wrong apiVersion", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}", "apiVersion"},
		{"wrong kind", "apiVersion: cilium.io/v2\nkind: CiliumPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}", "kind"},
		{"missing name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: pets}\nspec: {endpointSelector: {}}", "metadata.name: required"},
		{"invalid name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {endpointSelector: {}}", "metadata.name"},
		{"no spec", head, "spec: a policy needs spec or specs"},
		{"no endpointSelector", head + "spec: {ingress: [{}]}", "spec.endpointSelector: required"},
		{"nodeSelector in a namespaced policy", head + "spec: {nodeSelector: {}}", "spec.nodeSelector: only a CiliumClusterwideNetworkPolicy"},
		{"host policy", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec: {nodeSelector: {}, ingress: [{}]}", "host policies"},
		{"bad operator", head + "spec: {endpointSelector: {matchExpressions: [{key: app, operator: Equals, values: [x]}]}}", "spec.endpointSelector.matchExpressions[0].operator"},
		{"In without values", head + "spec: {endpointSelector: {}, ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]}]}", "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values"},
		{"Exists with values", head + "spec: {endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}}", "takes no values"},
		{"invalid label key", head + "spec: {endpointSelector: {matchLabels: {\"bad key!\": x}}}", "invalid label key"},
		{"invalid label value", head + "spec: {endpointSelector: {matchLabels: {app: \"no spaces\"}}}", "invalid value"},
		{"unknown label source", head + "spec: {endpointSelector: {matchLabels: {\"container:app\": x}}}", "label source \"container\""},
		{"invalid CIDR", head + "spec: {endpointSelector: {}, egress: [{toCIDR: [10.0.0.0/33]}]}", "spec.egress[0].toCIDR[0]: invalid CIDR"},
		{"CIDR not an address", head + "spec: {endpointSelector: {}, egress: [{toCIDR: [example.com]}]}", "invalid CIDR"},
		{"except outside its CIDR", head + "spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}]}", "spec.egress[0].toCIDRSet[0].except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8"},
		{"except wider than its CIDR", head + "spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.1.0.0/16, except: [10.0.0.0/8]}]}]}", "is not inside"},
		{"invalid except", head + "spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [nope]}]}]}", "except[0]: invalid CIDR"},
		{"unknown entity", head + "spec: {endpointSelector: {}, ingress: [{fromEntities: [internet]}]}", "spec.ingress[0].fromEntities[0]: unknown entity \"internet\""},
		{"endpoints and CIDR in one rule", head + "spec: {endpointSelector: {}, egress: [{toEndpoints: [{}], toCIDR: [10.0.0.0/8]}]}", "combining toEndpoints and toCIDR"},
		{"entities and CIDR set in one rule", head + "spec: {endpointSelector: {}, ingress: [{fromEntities: [world], fromCIDRSet: [{cidr: 10.0.0.0/8}]}]}", "combining fromCIDRSet and fromEntities"},
		{"port out of range", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"65536\"}]}]}]}", "spec.ingress[0].toPorts[0].ports[0].port: \"65536\" is not a port number"},
		{"bad port name", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"Not_A_Name\"}]}]}]}", "neither a port number nor a valid port name"},
		{"bad protocol", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: tcp}]}]}]}", "protocol: \"tcp\" is not TCP, UDP, SCTP or ANY"},
		{"endPort below port", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 70}]}]}]}", "endPort: 70 is below port 80"},
		{"endPort with a named port", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: http, endPort: 90}]}]}]}", "named port"},
		{"endPort too large", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", endPort: 70000}]}]}]}", "not a port number"},
		{"fromRequires", head + "spec: {endpointSelector: {}, ingress: [{fromRequires: [{matchLabels: {env: prod}}]}]}", "spec.ingress[0].fromRequires: not supported"},
		{"deny with toServices", head + "spec: {endpointSelector: {}, egressDeny: [{toServices: [{k8sService: {serviceName: a}}]}]}", "spec.egressDeny[0].toServices"},
		{"deny with icmps", head + "spec: {endpointSelector: {}, ingressDeny: [{icmps: [{fields: [{type: 8}]}]}]}", "deny rule cannot be enforced in part"},
		{"DNS rules at ingress", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchName: a.com}]}}]}]}", "DNS rules apply to egress only"},
		{"two L7 kinds", head + "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}], dns: [{matchName: a.com}]}}]}]}", "only one of http, dns"},
		{"HTTP rules on UDP at ingress", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\", protocol: UDP}], rules: {http: [{}]}}]}]}", "spec.ingress[0].toPorts[0].rules.http: HTTP rules need TCP ports, not UDP"},
		{"HTTP rules on UDP at egress", head + "spec: {endpointSelector: {}, egress: [{toPorts: [{ports: [{port: \"80\", protocol: UDP}], rules: {http: [{}]}}]}]}", "spec.egress[0].toPorts[0].rules.http: HTTP rules need TCP ports, not UDP"},
		{"bad HTTP regexp", head + "spec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{path: \"/(\"}]}}]}]}", "spec.ingress[0].toPorts[0].rules.http[0].path: invalid regular expression"},
		{"FQDNs and endpoints in one rule", head + "spec: {endpointSelector: {}, egress: [{toEndpoints: [{}], toFQDNs: [{matchName: a.com}]}]}", "combining toFQDNs and toEndpoints"},
		{"FQDN with both", head + "spec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]}]}", "only one of matchName and matchPattern"},
		{"FQDN with neither", head + "spec: {endpointSelector: {}, egress: [{toFQDNs: [{}]}]}", "one of matchName and matchPattern is required"},
		{"FQDN name with a star", head + "spec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: \"*.a.com\"}]}]}", "matchName"},
		{"service account subject", head + "spec: {endpointSelector: {matchLabels: {io.cilium.k8s.policy.serviceaccount: sa}}}", "serviceaccount"},
		{"error in the second of specs", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspecs: [{endpointSelector: {}}, {endpointSelector: {}, egress: [{toCIDR: [bad]}]}]", "specs[1].egress[0].toCIDR[0]"},
		{"not JSON", "", "invalid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.yaml == "" {
				_, err = Parse([]byte("{not json"))
			} else {
				_, err = parseYAML(t, tc.yaml)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

// TestParseUnsupported: parts Aegis does not enforce yet are listed by
// path, and the policy is otherwise accepted.
func TestParseUnsupported(t *testing.T) {
	p, err := parseYAML(t, head+`spec:
  endpointSelector: {matchLabels: {app: cat}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: dog}}]
    toPorts: [{ports: [{port: "80"}], rules: {http: [{method: GET}]}}]
  - fromEndpoints: [{matchLabels: {app: dog}}]
    authentication: {mode: required}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
  - toServices: [{k8sService: {serviceName: web, namespace: shop}}]
  - toEntities: [world-ipv4]
  - toCIDRSet: [{cidrGroupRef: corp}]
  - toEndpoints: [{matchLabels: {io.cilium.k8s.policy.serviceaccount: sa}}]
`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"spec.ingress[1].authentication:",
		"spec.egress[1].toServices:",
		"spec.egress[2].toEntities[0]:",
		"spec.egress[3].toCIDRSet[0]:",
		"spec.egress[4].toEndpoints[0]:",
	}
	if len(p.Unsupported) != len(want) {
		t.Fatalf("unsupported: %q", p.Unsupported)
	}
	for i, w := range want {
		if !strings.HasPrefix(p.Unsupported[i], w) {
			t.Errorf("unsupported[%d] = %q, want prefix %q", i, p.Unsupported[i], w)
		}
	}
	if len(p.Compiled) != 1 || len(p.Compiled[0].Ingress) != 2 || len(p.Compiled[0].Egress) != 5 || len(p.Compiled[0].Egress[0].FQDNs) != 1 {
		t.Fatalf("compiled: %+v", p.Compiled)
	}
	if !p.Compiled[0].Ingress[1].None {
		t.Error("a rule requiring authentication must select nothing")
	}
	if in := p.Compiled[0].Ingress[0]; len(in.Ports) != 0 || in.AllPorts || len(in.HTTP) != 1 || in.HTTP[0].Rules[0].Method != "GET" {
		t.Errorf("ingress ports with HTTP rules must go to the HTTP proxy only: %+v", in)
	}
}

func TestParseDefaults(t *testing.T) {
	p, err := parseYAML(t, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: \"80\"}]}]}], egress: []}")
	if err != nil {
		t.Fatal(err)
	}
	if p.Namespace != "default" {
		t.Errorf("namespace %q, want default", p.Namespace)
	}
	cr := p.Compiled[0]
	if !cr.DefaultDenyIngress || cr.DefaultDenyEgress {
		t.Errorf("default deny: ingress %v egress %v, want true false", cr.DefaultDenyIngress, cr.DefaultDenyEgress)
	}
	if got := cr.Ingress[0].Ports; len(got) != 1 || got[0] != (Port{Protocol: "ANY", Port: 80}) {
		t.Errorf("ports %+v", got)
	}
	if !cr.Ingress[0].Wildcard {
		t.Error("a rule with ports and no peers applies to every peer")
	}
	c, err := parseYAML(t, "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p, namespace: ignored}\nspec: {endpointSelector: {}}")
	if err != nil {
		t.Fatal(err)
	}
	if c.Namespace != "" {
		t.Errorf("clusterwide namespace %q", c.Namespace)
	}
}

// TestParseLarge: a policy of 10,000 rules parses, and quickly enough to
// sit on the regeneration path.
func TestParseLarge(t *testing.T) {
	var b strings.Builder
	b.WriteString(head + "spec:\n  endpointSelector: {matchLabels: {app: cat}}\n  ingress:\n")
	for i := range 10000 {
		fmt.Fprintf(&b, "  - fromCIDR: [10.%d.%d.0/24]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]\n", i/256, i%256, 1+i%65535)
	}
	js, err := yaml.YAMLToJSON([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p, err := Parse(js)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Compiled[0].Ingress) != 10000 {
		t.Fatalf("%d rules", len(p.Compiled[0].Ingress))
	}
	t.Logf("parsed 10,000 rules (%d bytes of JSON) in %v", len(js), time.Since(start))
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p"},"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}]}]}}`))
	f.Add([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"p"},"specs":[{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"In","values":["b"]}]},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}],"toPorts":[{"ports":[{"port":"80","endPort":90,"protocol":"TCP"}]}]}],"egressDeny":[{"toEntities":["world"]}]}]}`))
	f.Add([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p"},"spec":{"endpointSelector":{},"egress":[{"toFQDNs":[{"matchPattern":"*.a.com"}],"toPorts":[{"ports":[{"port":"53"}],"rules":{"dns":[{"matchPattern":"*"}]}}]}]}}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		p, err := Parse(js)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		// An accepted policy is complete: a compiled rule per rule, every
		// rule with a subject.
		if len(p.Compiled) != len(p.Rules) || len(p.Compiled) == 0 {
			t.Fatalf("%d compiled for %d rules", len(p.Compiled), len(p.Rules))
		}
		for _, cr := range p.Compiled {
			if cr.Subject == nil {
				t.Fatal("rule without subject")
			}
			for _, sec := range [][]PeerRule{cr.Ingress, cr.IngressDeny, cr.Egress, cr.EgressDeny} {
				for _, pr := range sec {
					if pr.Wildcard && pr.None {
						t.Fatal("a rule both wildcard and none")
					}
					for _, port := range pr.Ports {
						if port.EndPort != 0 && port.EndPort < port.Port {
							t.Fatalf("range %d-%d", port.Port, port.EndPort)
						}
					}
					for _, c := range pr.CIDRs {
						for _, e := range c.Except {
							if !c.Prefix.Contains(e.Addr()) {
								t.Fatalf("except %s outside %s", e, c.Prefix)
							}
						}
					}
				}
			}
		}
	})
}
