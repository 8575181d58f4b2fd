package policy

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// cnpIn is a CiliumNetworkPolicy named name in namespace pets with the
// given spec (YAML flow style).
func cnpIn(name, spec string) string {
	return "kind: CiliumNetworkPolicy\nmetadata: {namespace: pets, name: " + name + "}\nspec: " + spec
}

// ccnp is a CiliumClusterwideNetworkPolicy.
func ccnp(name, spec string) string {
	return "kind: CiliumClusterwideNetworkPolicy\nmetadata: {name: " + name + "}\nspec: " + spec
}

const (
	selCat = `endpointSelector: {matchLabels: {app: cat}}`
	selDog = `endpointSelector: {matchLabels: {app: dog}}`
)

// TestCiliumConformance is the semantic contract of CiliumNetworkPolicy
// and CiliumClusterwideNetworkPolicy on Aegis, case by case as Cilium
// reads them. The probes are evaluated as the datapath evaluates a new
// connection (see testCluster.verdict).
func TestCiliumConformance(t *testing.T) {
	cases := ciliumCases()
	if len(cases) < 80 {
		t.Errorf("only %d Cilium conformance cases, want at least 80", len(cases))
	}
	seen := map[string]bool{}
	for _, tc := range cases {
		if seen[tc.name] {
			t.Errorf("duplicate case name %q", tc.name)
		}
		seen[tc.name] = true
		t.Run(tc.name, func(t *testing.T) {
			w := defaultWorld()
			if tc.world != nil {
				tc.world(&w)
			}
			c := newTestCluster(t, w, tc.policies)
			if len(tc.probes) == 0 {
				t.Fatal("case has no probes")
			}
			for _, s := range tc.probes {
				p, err := parseProbe(s)
				if err != nil {
					t.Fatal(err)
				}
				allow, why, err := c.verdict(p)
				if err != nil {
					t.Fatal(err)
				}
				if allow != p.allow {
					if why == "" {
						why = "allowed"
					}
					t.Errorf("%s: got %s", s, why)
				}
			}
		})
	}
}

func ciliumCases() []conformanceCase {
	var cases []conformanceCase
	cases = append(cases, ciliumSectionCases()...)
	cases = append(cases, ciliumSelectorCases()...)
	cases = append(cases, ciliumEntityCases()...)
	cases = append(cases, ciliumCIDRCases()...)
	cases = append(cases, ciliumPortCases()...)
	cases = append(cases, ciliumDenyCases()...)
	cases = append(cases, ciliumCombinationCases()...)
	cases = append(cases, ciliumUnsupportedCases()...)
	return cases
}

// ciliumSectionCases: what absent, [] and [{}] sections and peer lists
// mean for default deny.
func ciliumSectionCases() []conformanceCase {
	return []conformanceCase{{
		name:     "ingress absent leaves ingress open",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"default/client pets/cat tcp/80 allow", "pets/cat pets/dog tcp/80 allow", "pets/cat shop/web tcp/8000 deny"},
	}, {
		name:     "ingress [] leaves ingress open",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: []}`)},
		probes:   []string{"default/client pets/cat tcp/80 allow", "pets/cat shop/web tcp/8000 allow"},
	}, {
		name:     "ingress [{}] enters default deny and allows nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/80 deny", "pets/dog pets/cat tcp/8080 deny", "203.0.113.9 pets/cat tcp/8080 deny", "host pets/cat tcp/8080 allow", "pets/cat shop/web tcp/8000 allow"},
	}, {
		name:     "egress [] leaves egress open (the workshop's rabbitmq rule)",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}], egress: []}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 allow", "pets/cat 203.0.113.9 tcp/443 allow", "pets/dog pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 deny"},
	}, {
		name:     "egress [{}] denies all egress",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{}]}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 deny", "pets/cat 203.0.113.9 udp/53 deny", "pets/cat host tcp/10250 deny", "default/client pets/cat tcp/8080 allow"},
	}, {
		name:     "fromEndpoints [] selects nothing (the workshop's chaos rule)",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: []}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 deny", "203.0.113.9 pets/cat tcp/8080 deny"},
	}, {
		name:     "fromEndpoints [] with toPorts still selects nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "default/client pets/cat tcp/8080 deny"},
	}, {
		name:     "fromEndpoints [{}] is every pod of the policy's namespace",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "pets/bird pets/cat udp/53 allow", "default/client pets/cat tcp/8080 deny", "shop/web pets/cat tcp/8080 deny", "203.0.113.9 pets/cat tcp/8080 deny", "remote-node pets/cat tcp/8080 deny"},
	}, {
		name:     "toEndpoints [{}] is every pod of the policy's namespace",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "pets/cat shop/web tcp/8000 deny", "pets/cat 203.0.113.9 tcp/443 deny"},
	}, {
		name:     "toEndpoints [] with toPorts selects nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 deny", "pets/cat 203.0.113.9 tcp/80 deny"},
	}, {
		name:     "toPorts alone applies to every peer",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 allow", "shop/web pets/cat tcp/8080 allow", "default/client pets/cat tcp/80 deny", "default/client pets/cat udp/8080 deny"},
	}, {
		name:     "toPorts [] is no toPorts: the rule is [{}] and allows nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{toPorts: []}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 deny"},
	}, {
		name:     "a port rule listing no ports allows nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/80 deny"},
	}, {
		name:     "egress toPorts alone applies to every destination",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toPorts: [{ports: [{port: "53", protocol: UDP}]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 udp/53 allow", "pets/cat shop/web udp/53 allow", "pets/cat shop/web tcp/8000 deny"},
	}, {
		name:     "endpointSelector matching no pod changes nothing",
		policies: []string{cnpIn("p", `{endpointSelector: {matchLabels: {app: nobody}}, ingress: [{}], egress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 allow", "pets/cat shop/web tcp/8000 allow"},
	}, {
		name:     "endpointSelector {} selects every pod of the policy's namespace only",
		policies: []string{cnpIn("p", `{endpointSelector: {}, ingress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "default/client pets/dog tcp/80 deny", "default/client shop/web tcp/8000 allow", "default/client dev/cat tcp/8081 allow"},
	}, {
		name:     "a namespaced policy cannot select pods of another namespace",
		policies: []string{cnpIn("p", `{endpointSelector: {matchLabels: {k8s:io.kubernetes.pod.namespace: shop}}, ingress: [{}]}`)},
		probes:   []string{"default/client shop/web tcp/8000 allow", "default/client pets/cat tcp/8080 allow"},
	}, {
		name:     "enableDefaultDeny ingress false: allows add nothing, the rest passes",
		policies: []string{cnpIn("p", `{`+selCat+`, enableDefaultDeny: {ingress: false}, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 allow"},
	}, {
		name: "enableDefaultDeny false does not lift another policy's default deny",
		policies: []string{
			cnpIn("open", `{`+selCat+`, enableDefaultDeny: {ingress: false}, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`),
			cnpIn("strict", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: bird}}]}]}`),
		},
		probes: []string{"pets/dog pets/cat tcp/8080 allow", "pets/bird pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 deny"},
	}, {
		name:     "enableDefaultDeny egress false with a deny: only the deny bites",
		policies: []string{cnpIn("p", `{`+selCat+`, enableDefaultDeny: {egress: false}, egressDeny: [{toEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 deny", "pets/cat shop/web tcp/8000 allow", "pets/cat 203.0.113.9 tcp/443 allow"},
	}, {
		name:     "enableDefaultDeny true is the default",
		policies: []string{cnpIn("p", `{`+selCat+`, enableDefaultDeny: {ingress: true, egress: true}, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 deny", "pets/cat shop/web tcp/8000 allow"},
	}, {
		name:     "specs: every rule of the list applies",
		policies: []string{"kind: CiliumNetworkPolicy\nmetadata: {namespace: pets, name: p}\nspecs:\n- {" + selCat + ", ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}\n- {" + selDog + ", egress: [{toEndpoints: [{matchLabels: {app: cat}}]}]}"},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 deny", "pets/dog shop/web tcp/8000 deny", "default/client pets/dog tcp/80 allow"},
	}, {
		name:     "spec and specs together both apply",
		policies: []string{"kind: CiliumNetworkPolicy\nmetadata: {namespace: pets, name: p}\nspec: {" + selCat + ", ingress: [{}]}\nspecs:\n- {" + selDog + ", ingress: [{}]}"},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "default/client pets/dog tcp/80 deny", "default/client pets/bird tcp/80 allow"},
	}, {
		name:     "a policy with only ingressDeny enters ingress default deny",
		policies: []string{cnpIn("p", `{`+selCat+`, ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "pets/bird pets/cat tcp/8080 deny", "pets/cat pets/dog tcp/80 allow"},
	}}
}

func ciliumSelectorCases() []conformanceCase {
	return []conformanceCase{{
		name:     "peer matchLabels is scoped to the policy's namespace",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {app: cat}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "dev/cat pets/dog tcp/80 deny"},
	}, {
		name:     "k8s: prefix is the same as no prefix",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {k8s:app: cat}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "dev/cat pets/dog tcp/80 deny", "pets/bird pets/dog tcp/80 deny"},
	}, {
		name:     "any: prefix matches pod labels",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {any:app: cat}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "pets/bird pets/dog tcp/80 deny"},
	}, {
		name:     "k8s: prefix in endpointSelector",
		policies: []string{cnpIn("p", `{endpointSelector: {matchLabels: {k8s:app: cat}}, ingress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "default/client pets/dog tcp/80 allow"},
	}, {
		name:     "k8s:io.kubernetes.pod.namespace selects another namespace",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: dev, app: cat}}]}]}`)},
		probes:   []string{"dev/cat pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny", "dev/dog pets/dog tcp/80 deny"},
	}, {
		name:     "io.kubernetes.pod.namespace without prefix selects a whole namespace",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: shop}}]}]}`)},
		probes:   []string{"shop/web pets/dog tcp/80 allow", "shop/db pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "namespace Exists selects pods of every namespace",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]}]}`)},
		probes:   []string{"shop/web pets/dog tcp/80 allow", "default/client pets/dog tcp/80 allow", "203.0.113.9 pets/dog tcp/80 deny", "host pets/dog tcp/80 allow", "remote-node pets/dog tcp/80 deny"},
	}, {
		name:     "namespace labels select namespaces without the default scoping",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: b}}]}]}`)},
		probes:   []string{"shop/web pets/dog tcp/80 allow", "shop/db pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny", "dev/cat pets/dog tcp/80 deny"},
	}, {
		name:     "namespace labels and pod labels together",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: a, app: cat}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "dev/cat pets/dog tcp/80 allow", "dev/dog pets/dog tcp/80 deny", "shop/web pets/dog tcp/80 deny"},
	}, {
		name:     "kubernetes.io/metadata.name namespace label",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name: default}}]}]}`)},
		probes:   []string{"default/client pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "matchExpressions In",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [cat, bird]}]}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "pets/bird pets/dog tcp/80 allow", "default/client pets/dog tcp/80 deny"},
	}, {
		name:     "matchExpressions NotIn matches pods without the label",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchExpressions: [{key: tier, operator: NotIn, values: [backend]}]}]}]}`)},
		probes:   []string{"pets/bird pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "matchExpressions Exists",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchExpressions: [{key: tier, operator: Exists}]}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "pets/bird pets/dog tcp/80 deny"},
	}, {
		name:     "matchExpressions DoesNotExist",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchExpressions: [{key: tier, operator: DoesNotExist}]}]}]}`)},
		probes:   []string{"pets/bird pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "matchLabels and matchExpressions are ANDed",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {app: cat}, matchExpressions: [{key: io.kubernetes.pod.namespace, operator: In, values: [dev]}]}]}]}`)},
		probes:   []string{"dev/cat pets/dog tcp/80 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "several selectors in one list are ORed",
		policies: []string{cnpIn("p", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {app: cat}}, {matchLabels: {app: bird}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "pets/bird pets/dog tcp/80 allow", "default/client pets/dog tcp/80 deny"},
	}, {
		name:     "reserved:host selector selects the node",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {reserved:host: ""}}]}]}`)},
		probes:   []string{"pets/cat host tcp/10250 allow", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "reserved:world selector selects outside addresses",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {reserved:world: ""}}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat pets/dog tcp/80 deny", "pets/cat host tcp/10250 deny"},
	}, {
		name:     "endpointSelector matchExpressions",
		policies: []string{cnpIn("p", `{endpointSelector: {matchExpressions: [{key: app, operator: In, values: [cat, dog]}]}, ingress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "default/client pets/dog tcp/80 deny", "default/client pets/bird tcp/80 allow"},
	}, {
		name:     "clusterwide: peer without namespace selects pods of every namespace",
		policies: []string{ccnp("c", `{`+selDog+`, ingress: [{fromEndpoints: [{matchLabels: {app: cat}}]}]}`)},
		probes:   []string{"pets/cat pets/dog tcp/80 allow", "dev/cat pets/dog tcp/80 allow", "pets/bird pets/dog tcp/80 deny", "default/client dev/dog tcp/80 deny"},
	}, {
		name:     "clusterwide: endpointSelector {} selects every local pod",
		policies: []string{ccnp("c", `{endpointSelector: {}, ingress: [{}]}`)},
		probes:   []string{"default/client pets/cat tcp/8080 deny", "pets/cat shop/web tcp/8000 deny", "pets/cat default/client tcp/80 deny", "host shop/web tcp/8000 allow"},
	}, {
		name:     "clusterwide: fromEndpoints [{}] is every pod but not world or nodes",
		policies: []string{ccnp("c", `{`+selDog+`, ingress: [{fromEndpoints: [{}]}]}`)},
		probes:   []string{"default/client pets/dog tcp/80 allow", "shop/web pets/dog tcp/80 allow", "203.0.113.9 pets/dog tcp/80 deny", "remote-node pets/dog tcp/80 deny"},
	}, {
		name:     "clusterwide: a namespace in the peer selector narrows it",
		policies: []string{ccnp("c", `{endpointSelector: {matchLabels: {io.kubernetes.pod.namespace: shop}}, ingress: [{fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: pets}}]}]}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 allow", "default/client shop/web tcp/8000 deny", "default/client pets/cat tcp/8080 allow"},
	}}
}

func ciliumEntityCases() []conformanceCase {
	return []conformanceCase{{
		name:     "fromEntities world: outside addresses only (the workshop's store-front rule)",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: [world], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes:   []string{"203.0.113.9 pets/cat tcp/8080 allow", "198.51.100.1 pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/9090 deny", "pets/dog pets/cat tcp/8080 deny", "remote-node pets/cat tcp/8080 deny", "host pets/cat tcp/8080 allow"},
	}, {
		name: "world includes addresses with CIDR identities",
		policies: []string{
			cnpIn("p", `{`+selCat+`, egress: [{toEntities: [world]}]}`),
			cnpIn("cidr", `{`+selDog+`, egress: [{toCIDR: [203.0.113.0/24]}]}`),
		},
		probes: []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 192.0.2.1 tcp/443 allow", "pets/cat shop/web tcp/8000 deny"},
	}, {
		name:     "toEntities cluster: every pod and node, not world",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [cluster]}]}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 allow", "pets/cat default/client tcp/80 allow", "pets/cat host tcp/10250 allow", "pets/cat remote-node tcp/10250 allow", "pets/cat kube-apiserver tcp/443 allow", "pets/cat 203.0.113.9 tcp/443 deny"},
	}, {
		name:     "toEntities host",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [host]}]}`)},
		probes:   []string{"pets/cat host tcp/10250 allow", "pets/cat remote-node tcp/10250 deny", "pets/cat shop/web tcp/8000 deny"},
	}, {
		name:     "fromEntities remote-node",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: [remote-node]}]}`)},
		probes:   []string{"remote-node pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 deny"},
	}, {
		name:     "toEntities kube-apiserver",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [kube-apiserver], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat kube-apiserver tcp/443 allow", "pets/cat kube-apiserver tcp/80 deny", "pets/cat host tcp/443 deny"},
	}, {
		name:     "fromEntities all",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: [all], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes:   []string{"203.0.113.9 pets/cat tcp/8080 allow", "shop/web pets/cat tcp/8080 allow", "remote-node pets/cat tcp/8080 allow", "shop/web pets/cat tcp/9090 deny"},
	}, {
		name:     "fromEntities [] selects nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: []}]}`)},
		probes:   []string{"203.0.113.9 pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 deny"},
	}, {
		name:     "entities that name peers Aegis never has select nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: [health, init, unmanaged, ingress, none]}]}`)},
		probes:   []string{"203.0.113.9 pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 deny", "remote-node pets/cat tcp/8080 deny"},
	}, {
		name:     "several entities are ORed",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [host, world]}]}`)},
		probes:   []string{"pets/cat host tcp/10250 allow", "pets/cat 203.0.113.9 tcp/443 allow", "pets/cat pets/dog tcp/80 deny"},
	}}
}

func ciliumCIDRCases() []conformanceCase {
	return []conformanceCase{{
		name:     "toCIDR",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDR: [203.0.113.0/24]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 198.51.100.1 tcp/443 deny", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "toCIDR with a bare address",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDR: [203.0.113.9]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 203.0.113.10 tcp/443 deny"},
	}, {
		name:     "fromCIDR",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromCIDR: [198.51.100.0/24]}]}`)},
		probes:   []string{"198.51.100.7 pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 deny"},
	}, {
		name:     "toCIDRSet with except",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 203.0.113.200 tcp/443 deny", "pets/cat 198.51.100.1 tcp/443 deny"},
	}, {
		name:     "fromCIDRSet with several excepts",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromCIDRSet: [{cidr: 198.51.100.0/24, except: [198.51.100.0/28, 198.51.100.64/26]}]}]}`)},
		probes:   []string{"198.51.100.20 pets/cat tcp/8080 allow", "198.51.100.5 pets/cat tcp/8080 deny", "198.51.100.70 pets/cat tcp/8080 deny", "198.51.100.200 pets/cat tcp/8080 allow"},
	}, {
		name:     "an except applies only to its own CIDR rule",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.0/25]}, {cidr: 203.0.113.0/26}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 203.0.113.100 tcp/443 deny", "pets/cat 203.0.113.200 tcp/443 allow"},
	}, {
		name:     "toCIDR 0.0.0.0/0 is all outside addresses, not pods",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDR: [0.0.0.0/0]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 8.8.8.8 udp/53 allow", "pets/cat pets/dog tcp/80 deny", "pets/cat host tcp/10250 deny"},
	}, {
		name:     "CIDR set 0.0.0.0/0 except a block",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [192.0.2.0/24]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 192.0.2.1 tcp/443 deny"},
	}, {
		name:     "toCIDR [] selects nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDR: []}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 deny", "pets/cat pets/dog tcp/80 deny"},
	}, {
		name:     "toCIDRSet [] selects nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDRSet: [], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 deny"},
	}, {
		name:     "toCIDR with ports",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toCIDR: [203.0.113.0/24], toPorts: [{ports: [{port: "443", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 203.0.113.9 tcp/80 deny"},
	}, {
		name:     "a CIDR does not select pods whose addresses it contains",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromCIDR: [10.0.0.0/8]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "10.1.2.3 pets/cat tcp/8080 allow"},
	}}
}

func ciliumPortCases() []conformanceCase {
	dogTo := func(ports string) string {
		return cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: `+ports+`}]}]}`)
	}
	return []conformanceCase{{
		name:     "port and protocol TCP",
		policies: []string{dogTo(`[{port: "8080", protocol: TCP}]`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "pets/dog pets/cat udp/8080 deny", "pets/dog pets/cat tcp/8081 deny"},
	}, {
		name:     "protocol UDP",
		policies: []string{dogTo(`[{port: "53", protocol: UDP}]`)},
		probes:   []string{"pets/dog pets/cat udp/53 allow", "pets/dog pets/cat tcp/53 deny"},
	}, {
		name:     "protocol SCTP",
		policies: []string{dogTo(`[{port: "3868", protocol: SCTP}]`)},
		probes:   []string{"pets/dog pets/cat sctp/3868 allow", "pets/dog pets/cat tcp/3868 deny"},
	}, {
		name:     "protocol ANY covers TCP, UDP and SCTP",
		policies: []string{dogTo(`[{port: "5000", protocol: ANY}]`)},
		probes:   []string{"pets/dog pets/cat tcp/5000 allow", "pets/dog pets/cat udp/5000 allow", "pets/dog pets/cat sctp/5000 allow", "pets/dog pets/cat tcp/5001 deny", "pets/dog pets/cat icmp deny"},
	}, {
		name:     "protocol omitted is ANY",
		policies: []string{dogTo(`[{port: "5000"}]`)},
		probes:   []string{"pets/dog pets/cat tcp/5000 allow", "pets/dog pets/cat udp/5000 allow"},
	}, {
		name:     "port 0 is every port of the protocol",
		policies: []string{dogTo(`[{port: "0", protocol: TCP}]`)},
		probes:   []string{"pets/dog pets/cat tcp/1 allow", "pets/dog pets/cat tcp/65535 allow", "pets/dog pets/cat udp/53 deny"},
	}, {
		name:     "port 0 ANY is everything",
		policies: []string{dogTo(`[{port: "0", protocol: ANY}]`)},
		probes:   []string{"pets/dog pets/cat tcp/1 allow", "pets/dog pets/cat udp/53 allow", "pets/dog pets/cat icmp allow"},
	}, {
		name:     "endPort range",
		policies: []string{dogTo(`[{port: "8000", endPort: 8100, protocol: TCP}]`)},
		probes:   []string{"pets/dog pets/cat tcp/8000 allow", "pets/dog pets/cat tcp/8050 allow", "pets/dog pets/cat tcp/8100 allow", "pets/dog pets/cat tcp/7999 deny", "pets/dog pets/cat tcp/8101 deny"},
	}, {
		name:     "several ports in one rule",
		policies: []string{dogTo(`[{port: "5672", protocol: TCP}, {port: "15672", protocol: TCP}]`)},
		probes:   []string{"pets/dog pets/cat tcp/5672 allow", "pets/dog pets/cat tcp/15672 allow", "pets/dog pets/cat tcp/5673 deny"},
	}, {
		name: "several port rules in one rule",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [
			{ports: [{port: "80", protocol: TCP}]}, {ports: [{port: "53", protocol: UDP}]}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/80 allow", "pets/dog pets/cat udp/53 allow", "pets/dog pets/cat udp/80 deny"},
	}, {
		name:     "named port at ingress is the local pod's port",
		policies: []string{dogTo(`[{port: http, protocol: TCP}]`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "pets/dog pets/cat tcp/80 deny"},
	}, {
		name:     "named port at egress is each peer's own port",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: shop}}], toPorts: [{ports: [{port: http, protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 allow", "pets/cat shop/db tcp/8000 deny", "pets/cat shop/web tcp/80 deny"},
	}, {
		name:     "L3 only rule allows every port and protocol",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/1 allow", "pets/dog pets/cat udp/53 allow", "pets/dog pets/cat icmp allow"},
	}}
}

func ciliumDenyCases() []conformanceCase {
	return []conformanceCase{{
		name: "ingressDeny beats an ingress allow of the same policy",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{}]}],
			ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/8080 deny", "pets/bird pets/cat tcp/8080 allow"},
	}, {
		name: "a deny in one policy beats an allow in another",
		policies: []string{
			cnpIn("allow", `{`+selCat+`, ingress: [{fromEntities: [all]}]}`),
			cnpIn("deny", `{`+selCat+`, ingressDeny: [{fromEntities: [world]}]}`),
		},
		probes: []string{"203.0.113.9 pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8080 allow", "remote-node pets/cat tcp/8080 allow"},
	}, {
		name: "a Cilium deny beats a NetworkPolicy allow",
		policies: []string{`
			metadata: {namespace: pets, name: np}
			spec: {podSelector: {}, ingress: [{}]}`,
			cnpIn("deny", `{`+selCat+`, ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`),
		},
		probes: []string{"pets/dog pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/9090 allow", "default/client pets/cat tcp/8080 allow"},
	}, {
		name: "a port deny inside an allowed range",
		policies: []string{cnpIn("p", `{`+selCat+`,
			ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8000", endPort: 9000, protocol: TCP}]}]}],
			ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/8079 allow", "pets/dog pets/cat tcp/8080 deny", "pets/dog pets/cat tcp/8081 allow"},
	}, {
		name: "a range deny covering an allowed port",
		policies: []string{cnpIn("p", `{`+selCat+`,
			ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}],
			ingressDeny: [{toPorts: [{ports: [{port: "0", endPort: 0, protocol: TCP}]}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/8080 deny", "pets/dog pets/cat udp/53 deny"},
	}, {
		name:     "egressDeny toCIDRSet except",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [world]}], egressDeny: [{toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.8/29]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.100 tcp/443 deny", "pets/cat 203.0.113.9 tcp/443 allow", "pets/cat 198.51.100.1 tcp/443 allow"},
	}, {
		name:     "egressDeny toEntities world with egress to all",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [all]}], egressDeny: [{toEntities: [world]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/443 deny", "pets/cat shop/web tcp/8000 allow", "pets/cat host tcp/10250 allow"},
	}, {
		name:     "egressDeny on a port for every peer",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEntities: [all]}], egressDeny: [{toPorts: [{ports: [{port: "25", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/cat 203.0.113.9 tcp/25 deny", "pets/cat shop/web tcp/25 deny", "pets/cat 203.0.113.9 tcp/587 allow"},
	}, {
		name:     "ingressDeny fromEndpoints [] denies nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{}]}], ingressDeny: [{fromEndpoints: []}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow"},
	}, {
		name:     "ingressDeny [{}] denies nothing but enters default deny",
		policies: []string{cnpIn("p", `{`+selCat+`, ingressDeny: [{}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "host pets/cat tcp/8080 allow"},
	}, {
		name:     "a deny on the host overrides the host's ingress allowance",
		policies: []string{cnpIn("p", `{`+selCat+`, ingressDeny: [{fromEntities: [host]}]}`)},
		probes:   []string{"host pets/cat tcp/8080 deny"},
	}, {
		name:     "a deny with enableDefaultDeny false leaves the rest open",
		policies: []string{cnpIn("p", `{`+selCat+`, enableDefaultDeny: {ingress: false}, ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "pets/bird pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 allow"},
	}, {
		name:     "clusterwide deny applies in every namespace",
		policies: []string{ccnp("c", `{endpointSelector: {matchLabels: {app: cat}}, enableDefaultDeny: {egress: false}, egressDeny: [{toCIDR: [192.0.2.0/24]}]}`)},
		probes:   []string{"pets/cat 192.0.2.1 tcp/443 deny", "dev/cat 192.0.2.1 tcp/443 deny", "pets/dog 192.0.2.1 tcp/443 allow", "pets/cat 203.0.113.9 tcp/443 allow"},
	}}
}

func ciliumCombinationCases() []conformanceCase {
	return []conformanceCase{{
		name: "two policies on one pod are a union",
		policies: []string{
			cnpIn("a", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`),
			cnpIn("b", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: bird}}]}]}`),
		},
		probes: []string{"pets/dog pets/cat tcp/8080 allow", "pets/bird pets/cat tcp/8080 allow", "default/client pets/cat tcp/8080 deny"},
	}, {
		name: "a Cilium policy and a NetworkPolicy on one pod are a union",
		policies: []string{`
			metadata: {namespace: pets, name: np}
			spec: {podSelector: {matchLabels: {app: cat}}, ingress: [{from: [{namespaceSelector: {}}]}]}`,
			cnpIn("c", `{`+selCat+`, ingress: [{fromEntities: [world]}]}`),
		},
		probes: []string{"default/client pets/cat tcp/8080 allow", "203.0.113.9 pets/cat tcp/8080 allow", "remote-node pets/cat tcp/8080 deny"},
	}, {
		name: "ingress-only Cilium policy and egress-only NetworkPolicy",
		policies: []string{`
			metadata: {namespace: pets, name: np}
			spec: {podSelector: {matchLabels: {app: cat}}, policyTypes: [Egress]}`,
			cnpIn("c", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`),
		},
		probes: []string{"pets/cat pets/dog tcp/80 deny", "pets/dog pets/cat tcp/8080 allow", "pets/bird pets/cat tcp/8080 deny"},
	}, {
		name: "clusterwide and namespaced policies combine",
		policies: []string{
			ccnp("dns", `{endpointSelector: {}, egress: [{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: default}}], toPorts: [{ports: [{port: "53", protocol: UDP}]}]}]}`),
			cnpIn("web", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: shop, app: web}}]}]}`),
		},
		probes: []string{"pets/cat default/client udp/53 allow", "pets/cat shop/web tcp/8000 allow", "pets/dog default/client udp/53 allow", "pets/dog shop/web tcp/8000 deny", "pets/cat shop/db tcp/5432 deny"},
	}, {
		name:     "policies in other namespaces do not select",
		policies: []string{"kind: CiliumNetworkPolicy\nmetadata: {namespace: shop, name: p}\nspec: {endpointSelector: {matchLabels: {app: cat}}, ingress: [{}]}"},
		probes:   []string{"default/client pets/cat tcp/8080 allow", "default/client dev/cat tcp/8081 allow"},
	}, {
		name:     "one rule with several peer kinds of one type and ports",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}, {matchLabels: {io.kubernetes.pod.namespace: shop}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 allow", "shop/db pets/cat tcp/8080 allow", "shop/db pets/cat tcp/9090 deny", "pets/bird pets/cat tcp/8080 deny"},
	}, {
		name: "the workshop's pet-store policies",
		world: func(w *testWorld) {
			w.namespaces["pets"] = map[string]string{}
			w.pods = []testPod{
				{ns: "pets", name: "store-front", labels: map[string]string{"app": "store-front"}},
				{ns: "pets", name: "order-service", labels: map[string]string{"app": "order-service"}},
				{ns: "pets", name: "product-service", labels: map[string]string{"app": "product-service"}},
				{ns: "pets", name: "rabbitmq", labels: map[string]string{"app": "rabbitmq"}},
			}
		},
		policies: workshopPolicies,
		probes: []string{
			"pets/store-front pets/order-service tcp/3000 allow",
			"pets/store-front pets/product-service tcp/3002 allow",
			"pets/order-service pets/rabbitmq tcp/5672 allow",
			"pets/order-service pets/rabbitmq tcp/15672 deny", // order-service's own egress allows 5672 only
			"pets/order-service pets/product-service tcp/3002 deny",
			"pets/order-service 203.0.113.10 tcp/443 deny",
			"203.0.113.10 pets/store-front tcp/8080 allow",
			"203.0.113.10 pets/order-service tcp/3000 deny",
			"pets/product-service pets/order-service tcp/3000 deny",
			"pets/rabbitmq 203.0.113.10 tcp/443 allow", // egress: [] enforces nothing
			"pets/store-front 203.0.113.10 tcp/443 deny",
		},
	}, {
		name: "the workshop's chaos policy drops all ingress to store-front",
		world: func(w *testWorld) {
			w.pods = []testPod{{ns: "pets", name: "store-front", labels: map[string]string{"app": "store-front"}}, {ns: "pets", name: "order-service", labels: map[string]string{"app": "order-service"}}}
		},
		policies: []string{cnpIn("allow-store-front-traffic", `{endpointSelector: {matchLabels: {app: store-front}}, ingress: [{fromEndpoints: []}],
			egress: [{toEndpoints: [{matchLabels: {app: order-service}}], toPorts: [{ports: [{port: "3000", protocol: TCP}]}]}]}`)},
		probes: []string{"203.0.113.10 pets/store-front tcp/8080 deny", "pets/order-service pets/store-front tcp/8080 deny", "pets/store-front pets/order-service tcp/3000 allow"},
	}}
}

// ciliumUnsupportedCases: what Aegis does not enforce yet allows nothing,
// and the rest of the policy still applies.
func ciliumUnsupportedCases() []conformanceCase {
	return []conformanceCase{{
		name: "toFQDNs allows no address before the DNS proxy learns one",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toFQDNs: [{matchName: www.example.com}]},
			{toEndpoints: [{matchLabels: {app: dog}}]}]}`)},
		probes: []string{"pets/cat 203.0.113.9 tcp/443 deny", "pets/cat pets/dog tcp/80 allow"},
	}, {
		name: "HTTP rules at ingress go to the HTTP proxy for their peers only",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [
			{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: /}]}},
			{ports: [{port: "9090", protocol: TCP}]}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/8080 allow", "pets/dog pets/cat tcp/9090 allow", "pets/bird pets/cat tcp/8080 deny",
			"pets/dog pets/cat tcp/8081 deny", "203.0.113.10 pets/cat tcp/8080 deny"},
	}, {
		name: "an ingress deny beats ingress HTTP rules",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEntities: [all], toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{}]}}]}],
			ingressDeny: [{fromEndpoints: [{matchLabels: {app: bird}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)},
		probes: []string{"pets/dog pets/cat tcp/8080 allow", "203.0.113.10 pets/cat tcp/8080 allow", "pets/bird pets/cat tcp/8080 deny"},
	}, {
		name:     "ports with DNS rules go to the DNS proxy, other ports stay denied",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]}]}`)},
		probes:   []string{"pets/cat pets/dog udp/53 allow", "pets/cat pets/dog tcp/53 allow", "pets/cat pets/dog tcp/80 deny", "pets/cat pets/bird udp/53 deny"},
	}, {
		name:     "a rule requiring authentication allows nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], authentication: {mode: required}}, {fromEndpoints: [{matchLabels: {app: bird}}]}]}`)},
		probes:   []string{"pets/dog pets/cat tcp/8080 deny", "pets/bird pets/cat tcp/8080 allow"},
	}, {
		name:     "icmps rules allow nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{matchLabels: {app: dog}}], icmps: [{fields: [{type: 8}]}]}]}`)},
		probes:   []string{"pets/dog pets/cat icmp deny", "pets/dog pets/cat tcp/8080 deny"},
	}, {
		name:     "toServices allows nothing",
		policies: []string{cnpIn("p", `{`+selCat+`, egress: [{toServices: [{k8sService: {serviceName: web, namespace: shop}}]}]}`)},
		probes:   []string{"pets/cat shop/web tcp/8000 deny"},
	}}
}

// workshopPolicies are the workshop's acns-network-policy.yaml, as
// written there.
var workshopPolicies = []string{
	cnpIn("allow-rabbitmq-traffic", `{endpointSelector: {matchLabels: {app: rabbitmq}},
		ingress: [{fromEndpoints: [{matchLabels: {app: order-service}}], toPorts: [{ports: [{port: "5672", protocol: TCP}, {port: "15672", protocol: TCP}]}]}],
		egress: []}`),
	cnpIn("allow-order-service-traffic", `{endpointSelector: {matchLabels: {app: order-service}},
		ingress: [{fromEndpoints: [{matchLabels: {app: store-front}}], toPorts: [{ports: [{port: "3000", protocol: TCP}]}]}],
		egress: [{toEndpoints: [{matchLabels: {app: rabbitmq}}], toPorts: [{ports: [{port: "5672", protocol: TCP}]}]}]}`),
	cnpIn("allow-product-service-traffic", `{endpointSelector: {matchLabels: {app: product-service}},
		ingress: [{fromEndpoints: [{matchLabels: {app: store-front}}], toPorts: [{ports: [{port: "3002", protocol: TCP}]}]}],
		egress: [{toEndpoints: [{matchLabels: {app: ai-service}}], toPorts: [{ports: [{port: "5001", protocol: TCP}]}]}]}`),
	cnpIn("allow-store-front-traffic", `{endpointSelector: {matchLabels: {app: store-front}},
		ingress: [{fromEntities: [world], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}],
		egress: [{toEndpoints: [{matchLabels: {app: order-service}}], toPorts: [{ports: [{port: "3000", protocol: TCP}]}]},
		         {toEndpoints: [{matchLabels: {app: product-service}}], toPorts: [{ports: [{port: "3002", protocol: TCP}]}]}]}`),
}

// TestCiliumRulesNamed: every verdict names the Cilium rule behind it, by
// kind, namespace, name and field path, so flows and traces can say which
// rule decided.
func TestCiliumRulesNamed(t *testing.T) {
	c := newTestCluster(t, defaultWorld(), []string{
		cnpIn("p", `{`+selCat+`, ingress: [{fromEndpoints: [{}]}], ingressDeny: [{fromEndpoints: [{matchLabels: {app: dog}}]}]}`),
		ccnp("c", `{`+selCat+`, egress: [{toEntities: [world]}]}`),
	})
	cat, dog, bird := c.pods["pets/cat"], c.pods["pets/dog"], c.pods["pets/bird"]
	check := func(e Entry, want string) {
		t.Helper()
		ref, ok := c.res.Rules[e.Cookie]
		if !ok {
			t.Fatalf("cookie %d names no rule", e.Cookie)
		}
		got := ref.Kind + " " + ref.Namespace + "/" + ref.Name + " " + ref.Path
		if got != want {
			t.Errorf("rule %q, want %q", got, want)
		}
	}
	e, _ := c.res.Lookup(cat, dog, Ingress, ProtoTCP, 8080)
	if e.Action != ActionDeny {
		t.Fatalf("dog to cat: %v", e.Action)
	}
	check(e, "CiliumNetworkPolicy pets/p spec.ingressDeny[0]")
	e, _ = c.res.Lookup(cat, bird, Ingress, ProtoTCP, 8080)
	check(e, "CiliumNetworkPolicy pets/p spec.ingress[0]")
	e, _ = c.res.Lookup(cat, IdentityWorld, Egress, ProtoTCP, 443)
	check(e, "CiliumClusterwideNetworkPolicy /c spec.egress[0]")
	// A drop no rule decides names the policy whose default deny it is.
	e, _ = c.res.Lookup(cat, c.pods["default/client"], Ingress, ProtoTCP, 8080)
	check(e, "CiliumNetworkPolicy pets/p spec")
	if !c.res.Rules[e.Cookie].Default {
		t.Error("default deny not marked as such")
	}
	e, _ = c.res.Lookup(cat, c.pods["shop/web"], Egress, ProtoTCP, 8000)
	check(e, "CiliumClusterwideNetworkPolicy /c spec")
}

// TestWorkshopFiles compiles the workshop's own files (kept in
// e2e/testdata/workshop, applied in namespace pets as `kubectl apply -n
// pets` does) and checks the verdicts the workshop expects, so the quote
// in workshopPolicies cannot drift from the files.
func TestWorkshopFiles(t *testing.T) {
	read := func(file string) []string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("..", "..", "e2e", "testdata", "workshop", file))
		if err != nil {
			t.Fatal(err)
		}
		var docs []string
		for _, d := range strings.Split(string(b), "\n---") {
			if strings.TrimSpace(d) != "" {
				docs = append(docs, strings.Replace(d, "metadata:\n", "metadata:\n  namespace: pets\n", 1))
			}
		}
		return docs
	}
	world := func(w *testWorld) {
		w.pods = []testPod{
			{ns: "pets", name: "store-front", labels: map[string]string{"app": "store-front"}},
			{ns: "pets", name: "order-service", labels: map[string]string{"app": "order-service"}},
			{ns: "pets", name: "product-service", labels: map[string]string{"app": "product-service"}},
			{ns: "pets", name: "rabbitmq", labels: map[string]string{"app": "rabbitmq"}},
		}
	}
	w := defaultWorld()
	world(&w)
	base := read("acns-network-policy.yaml")
	if len(base) != 4 {
		t.Fatalf("acns-network-policy.yaml: %d documents, want 4", len(base))
	}
	quoted := newTestCluster(t, w, workshopPolicies)
	files := newTestCluster(t, w, base)
	for _, s := range []string{
		"pets/store-front pets/order-service tcp/3000 allow",
		"pets/order-service pets/rabbitmq tcp/5672 allow",
		"pets/order-service pets/product-service tcp/3002 deny",
		"pets/order-service 203.0.113.10 tcp/443 deny",
		"203.0.113.10 pets/store-front tcp/8080 allow",
		"203.0.113.10 pets/rabbitmq tcp/5672 deny",
	} {
		p, err := parseProbe(s)
		if err != nil {
			t.Fatal(err)
		}
		for name, c := range map[string]*testCluster{"quoted": quoted, "files": files} {
			allow, why, err := c.verdict(p)
			if err != nil {
				t.Fatal(err)
			}
			if allow != p.allow {
				t.Errorf("%s: %s: got %s", name, s, why)
			}
		}
	}

	// The chaos file replaces allow-store-front-traffic (same name).
	chaos := read("acns-network-policy-chaos.yaml")
	var replaced []string
	for _, d := range base {
		if !strings.Contains(d, "name: allow-store-front-traffic") {
			replaced = append(replaced, d)
		}
	}
	c := newTestCluster(t, w, append(replaced, chaos...))
	for _, s := range []string{"203.0.113.10 pets/store-front tcp/8080 deny", "pets/order-service pets/store-front tcp/8080 deny", "pets/store-front pets/order-service tcp/3000 allow"} {
		p, _ := parseProbe(s)
		if allow, why, _ := c.verdict(p); allow != p.allow {
			t.Errorf("chaos: %s: got %s", s, why)
		}
	}
}

// TestDNSAndFQDNRules: DNS rules become redirects to the DNS proxy plus
// the patterns the proxy enforces per server and port; toFQDNs rules
// become the selectors the proxy learns addresses for.
func TestDNSAndFQDNRules(t *testing.T) {
	c := newTestCluster(t, defaultWorld(), []string{cnpIn("p", `{`+selCat+`, egress: [
		{toEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchPattern: "*.microsoft.com"}, {matchName: rabbitmq.pets.svc.cluster.local}]}}]},
		{toFQDNs: [{matchPattern: "*.microsoft.com"}], toPorts: [{ports: [{port: "443", protocol: TCP}, {port: "80", protocol: TCP}]}]},
		{toFQDNs: [{matchName: api.github.com}]}]}`)})
	cat, dog, bird := c.pods["pets/cat"], c.pods["pets/dog"], c.pods["pets/bird"]
	e, _ := c.res.Lookup(cat, dog, Egress, ProtoUDP, 53)
	if e.Action != ActionRedirectDNS {
		t.Fatalf("udp/53 to dog: %v, want redirect-dns", e.Action)
	}
	if e, _ := c.res.Lookup(cat, dog, Egress, ProtoTCP, 53); e.Action != ActionDeny {
		t.Errorf("tcp/53 to dog: %v (the rule says UDP)", e.Action)
	}
	rules := c.res.DNSPatterns(cat, dog, ProtoUDP, 53)
	if len(rules) != 1 || len(rules[0].Patterns) != 2 || rules[0].Cookie != e.Cookie {
		t.Fatalf("DNS rules for cat -> dog udp/53: %+v", rules)
	}
	if got := c.res.DNSPatterns(cat, bird, ProtoUDP, 53); len(got) != 0 {
		t.Errorf("DNS rules for a server the rule does not name: %+v", got)
	}
	if got := c.res.DNSPatterns(cat, dog, ProtoUDP, 5353); len(got) != 0 {
		t.Errorf("DNS rules for another port: %+v", got)
	}
	fq := c.res.FQDN[cat]
	if len(fq) != 2 {
		t.Fatalf("toFQDNs rules: %+v", fq)
	}
	if want := []ProtoPort{{ProtoTCP, 443}, {ProtoTCP, 80}}; !slices.Equal(fq[0].Ports, want) || fq[0].Selectors[0].MatchPattern != "*.microsoft.com" {
		t.Errorf("first toFQDNs rule: %+v", fq[0])
	}
	if want := []ProtoPort{{Proto: ProtoAny}}; !slices.Equal(fq[1].Ports, want) {
		t.Errorf("toFQDNs without ports: %+v", fq[1].Ports)
	}
	if ref := c.res.Rules[fq[0].Cookie]; ref.Path != "spec.egress[1]" {
		t.Errorf("toFQDNs cookie names %+v", ref)
	}
}

// TestHTTPRules: egress HTTP rules become redirects to the HTTP proxy and
// the rule sets it enforces per peer and port.
func TestHTTPRules(t *testing.T) {
	c := newTestCluster(t, defaultWorld(), []string{cnpIn("p", `{`+selCat+`, egress: [
		{toEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: "/"}]}}]},
		{toEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]}`)})
	cat, dog := c.pods["pets/cat"], c.pods["pets/dog"]
	if e, _ := c.res.Lookup(cat, dog, Egress, ProtoTCP, 80); e.Action != ActionRedirectL7 {
		t.Errorf("tcp/80 to dog: %v, want redirect-l7", e.Action)
	}
	if e, _ := c.res.Lookup(cat, dog, Egress, ProtoTCP, 8080); e.Action != ActionAllow {
		t.Errorf("tcp/8080 to dog: %v, want allow (L3/L4 only)", e.Action)
	}
	if e, _ := c.res.Lookup(cat, dog, Egress, ProtoTCP, 81); e.Action != ActionDeny {
		t.Errorf("tcp/81 to dog: %v, want deny", e.Action)
	}
	sets := c.res.HTTPRules(cat, dog, Egress, 80)
	if len(sets) != 1 || len(sets[0].Rules) != 1 || sets[0].Rules[0].Method != "GET" {
		t.Fatalf("HTTP rules cat -> dog:80: %+v", sets)
	}
	if got := c.res.HTTPRules(cat, c.pods["pets/bird"], Egress, 80); len(got) != 0 {
		t.Errorf("HTTP rules for another peer: %+v", got)
	}
	if got := c.res.HTTPRules(dog, cat, Ingress, 80); len(got) != 0 {
		t.Errorf("egress HTTP rules of cat show as ingress rules of dog: %+v", got)
	}
}

// TestIngressHTTPRules: ingress HTTP rules redirect their peers' connections
// on their ports to the HTTP proxy, keyed by the destination's identity
// and kept apart from egress rules; other peers and ports stay under
// L3/L4, a deny still wins, and the node's own connections pass as they do
// under every ingress policy.
func TestIngressHTTPRules(t *testing.T) {
	c := newTestCluster(t, defaultWorld(), []string{cnpIn("p", `{`+selCat+`, ingress: [
		{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "80", protocol: ANY}], rules: {http: [{method: GET, path: "/"}, {method: POST, path: "/api/.*"}]}}]},
		{fromEntities: [world, host], toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]},
		{fromEndpoints: [{matchLabels: {app: dog}}], toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}],
		ingressDeny: [{fromEndpoints: [{matchLabels: {app: bird}}]}]}`)})
	cat, dog, bird := c.pods["pets/cat"], c.pods["pets/dog"], c.pods["pets/bird"]
	for _, tc := range []struct {
		remote uint32
		port   uint16
		want   Action
	}{
		{dog, 80, ActionRedirectL7},
		{IdentityWorld, 80, ActionRedirectL7},
		{dog, 8080, ActionAllow},
		{IdentityHost, 80, ActionAllow},
		{dog, 81, ActionDeny},
		{bird, 80, ActionDeny},
	} {
		if e, _ := c.res.Lookup(cat, tc.remote, Ingress, ProtoTCP, tc.port); e.Action != tc.want {
			t.Errorf("ingress of cat from %d on tcp/%d: %v, want %v", tc.remote, tc.port, e.Action, tc.want)
		}
	}
	// ANY is TCP for HTTP: UDP/80 gets no redirect.
	if e, _ := c.res.Lookup(cat, dog, Ingress, ProtoUDP, 80); e.Action != ActionDeny {
		t.Errorf("udp/80 from dog: %v, want deny", e.Action)
	}
	sets := c.res.HTTPRules(cat, dog, Ingress, 80)
	if len(sets) != 1 || len(sets[0].Rules) != 2 || sets[0].Rules[1].Path != "/api/.*" {
		t.Fatalf("ingress HTTP rules of cat from dog:80: %+v", sets)
	}
	if ref := c.res.Rules[sets[0].Cookie]; ref.Name != "p" || ref.Dir != Ingress || ref.Path != "spec.ingress[0]" {
		t.Errorf("ingress HTTP rule set names %+v", ref)
	}
	if w := c.res.HTTPRules(cat, IdentityWorld, Ingress, 80); len(w) != 1 || w[0].Rules[0].Method != "GET" || w[0].Cookie == sets[0].Cookie {
		t.Errorf("ingress HTTP rules of cat from world:80: %+v", w)
	}
	for _, miss := range []struct {
		local, remote uint32
		dir           Direction
		port          uint16
	}{{cat, dog, Ingress, 8080}, {cat, bird, Ingress, 80}, {cat, dog, Egress, 80}, {dog, cat, Egress, 80}, {cat, IdentityHost, Ingress, 80}} {
		if got := c.res.HTTPRules(miss.local, miss.remote, miss.dir, miss.port); len(got) != 0 {
			t.Errorf("HTTP rules %+v: %+v, want none", miss, got)
		}
	}
}
