package policy

import (
	"testing"
)

// conformanceCase is one Kubernetes NetworkPolicy scenario: policies applied
// to a world (defaultWorld unless world changes it) and the verdicts the
// datapath must reach for connection attempts.
type conformanceCase struct {
	name     string
	world    func(*testWorld)
	policies []string // YAML, see decodePolicy
	probes   []string // see parseProbe
}

// TestNetworkPolicyConformance is the semantic contract of Kubernetes
// NetworkPolicy, with Cilium's conventions where Kubernetes leaves room
// (host ingress allowed, ipBlock never selecting pods, host or remote
// nodes).
func TestNetworkPolicyConformance(t *testing.T) {
	cases := conformanceCases()
	if len(cases) < 60 {
		t.Errorf("only %d conformance cases, want at least 60", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := defaultWorld()
			if tc.world != nil {
				tc.world(&w)
			}
			c := newTestCluster(t, w, tc.policies)
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

func conformanceCases() []conformanceCase {
	var cases []conformanceCase
	cases = append(cases, enforcementCases()...)
	cases = append(cases, podSelectorCases()...)
	cases = append(cases, peerCases()...)
	cases = append(cases, egressPeerCases()...)
	cases = append(cases, ipBlockCases()...)
	cases = append(cases, portCases()...)
	cases = append(cases, namedPortCases()...)
	cases = append(cases, combinationCases()...)
	return cases
}

func enforcementCases() []conformanceCase {
	return []conformanceCase{{
		name: "no policy allows everything",
		probes: []string{
			"default/client pets/cat tcp/80 allow",
			"203.0.113.9 pets/cat tcp/80 allow",
			"pets/cat 8.8.8.8 udp/53 allow",
			"pets/cat host icmp allow",
		},
	}, {
		name: "deny all ingress with policyTypes and ingress absent",
		policies: []string{`
			metadata: {namespace: pets, name: deny-ingress}
			spec: {podSelector: {}}`},
		probes: []string{
			"default/client pets/cat tcp/80 deny",
			"pets/dog pets/cat tcp/80 deny",
			"8.8.8.8 pets/cat tcp/80 deny",
			"pets/cat shop/web tcp/8000 allow",
			"pets/cat 8.8.8.8 tcp/443 allow",
			"default/client shop/web tcp/8000 allow",
		},
	}, {
		name: "deny all ingress with ingress: [] and policyTypes absent",
		policies: []string{`
			metadata: {namespace: pets, name: deny-ingress}
			spec: {podSelector: {}, ingress: []}`},
		probes: []string{
			"default/client pets/bird tcp/80 deny",
			"pets/bird default/client tcp/80 allow",
		},
	}, {
		name: "deny all ingress with policyTypes Ingress",
		policies: []string{`
			metadata: {namespace: pets, name: deny-ingress}
			spec: {podSelector: {}, policyTypes: [Ingress]}`},
		probes: []string{
			"default/client pets/dog udp/53 deny",
			"pets/cat pets/dog tcp/80 deny",
			"pets/dog 8.8.8.8 tcp/80 allow",
		},
	}, {
		name: "deny all egress",
		policies: []string{`
			metadata: {namespace: pets, name: deny-egress}
			spec: {podSelector: {}, policyTypes: [Egress]}`},
		probes: []string{
			"pets/cat shop/web tcp/8000 deny",
			"pets/cat 8.8.8.8 udp/53 deny",
			"pets/cat host tcp/10250 deny",
			"default/client pets/cat tcp/80 allow",
			"shop/web default/client tcp/80 allow",
		},
	}, {
		name: "deny all in both directions",
		policies: []string{`
			metadata: {namespace: pets, name: deny-all}
			spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
		probes: []string{
			"pets/cat pets/dog tcp/80 deny",
			"default/client pets/cat tcp/8080 deny",
			"host pets/cat tcp/8080 allow",
			"pets/cat host tcp/10250 deny",
		},
	}, {
		name: "egress: [] with policyTypes absent does not enforce egress",
		policies: []string{`
			metadata: {namespace: pets, name: no-egress-rules}
			spec: {podSelector: {}, egress: []}`},
		probes: []string{
			"pets/cat 8.8.8.8 tcp/443 allow",
			"default/client pets/cat tcp/80 deny",
		},
	}, {
		name: "allow all ingress beside deny all",
		policies: []string{`
			metadata: {namespace: pets, name: deny-ingress}
			spec: {podSelector: {}}`, `
			metadata: {namespace: pets, name: allow-cat}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress: [{}]`},
		probes: []string{
			"default/client pets/cat tcp/1 allow",
			"default/client pets/cat udp/9 allow",
			"default/client pets/cat icmp allow",
			"8.8.8.8 pets/cat tcp/443 allow",
			"default/client pets/dog tcp/80 deny",
		},
	}, {
		name: "allow all egress beside deny all",
		policies: []string{`
			metadata: {namespace: pets, name: deny-egress}
			spec: {podSelector: {}, policyTypes: [Egress]}`, `
			metadata: {namespace: pets, name: cat-out}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress: [{}]`},
		probes: []string{
			"pets/cat 8.8.8.8 tcp/443 allow",
			"pets/cat host icmp allow",
			"pets/cat kube-apiserver tcp/443 allow",
			"pets/cat shop/web tcp/8000 allow",
			"pets/dog shop/web tcp/8000 deny",
		},
	}, {
		name: "policyTypes absent with egress rules enforces both directions",
		policies: []string{`
			metadata: {namespace: pets, name: cat-to-dog}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  egress:
			  - to: [{podSelector: {matchLabels: {app: dog}}}]`},
		probes: []string{
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat pets/bird tcp/80 deny",
			"pets/cat 8.8.8.8 tcp/80 deny",
			"default/client pets/cat tcp/80 deny",
			"host pets/cat tcp/8080 allow",
		},
	}, {
		name: "policyTypes Ingress ignores egress rules",
		policies: []string{`
			metadata: {namespace: pets, name: ingress-only}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Ingress]
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: bird}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/80 allow",
			"pets/bird pets/cat tcp/80 deny",
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat 8.8.8.8 tcp/443 allow",
		},
	}, {
		name: "policyTypes Egress ignores ingress rules",
		policies: []string{`
			metadata: {namespace: pets, name: egress-only}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: bird}}}]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: dog}}}]`},
		probes: []string{
			"default/client pets/cat tcp/80 allow",
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat pets/bird tcp/80 deny",
		},
	}, {
		name: "ingress and egress both listed",
		policies: []string{`
			metadata: {namespace: pets, name: both}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Ingress, Egress]
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: dog}}}]`},
		probes: []string{
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat pets/bird tcp/80 deny",
			"pets/dog pets/cat tcp/8080 allow",
			"pets/bird pets/cat tcp/8080 deny",
		},
	}, {
		name: "host ingress allowed under deny all",
		policies: []string{`
			metadata: {namespace: pets, name: deny-all}
			spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
		probes: []string{
			"host pets/cat tcp/8080 allow",
			"host pets/cat udp/53 allow",
			"host pets/cat icmp allow",
			"remote-node pets/cat tcp/8080 deny",
			"kube-apiserver pets/cat tcp/8080 deny",
			"8.8.8.8 pets/cat tcp/8080 deny",
		},
	}, {
		name: "host and remote nodes are not exempt from egress policy",
		policies: []string{`
			metadata: {namespace: pets, name: deny-egress}
			spec: {podSelector: {}, policyTypes: [Egress]}`},
		probes: []string{
			"pets/cat host tcp/10250 deny",
			"pets/cat remote-node tcp/10250 deny",
			"pets/cat kube-apiserver tcp/443 deny",
		},
	}, {
		name: "policy in another namespace does not apply",
		policies: []string{`
			metadata: {namespace: dev, name: deny-cat}
			spec: {podSelector: {matchLabels: {app: cat}}}`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"default/client dev/cat tcp/8081 deny",
		},
	}, {
		name: "pods on other nodes are not enforced here",
		policies: []string{`
			metadata: {namespace: shop, name: deny-all}
			spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`},
		probes: []string{
			"default/client shop/far tcp/81 allow",
			"shop/far default/client tcp/80 allow",
			"default/client shop/web tcp/8000 deny",
		},
	}}
}

func podSelectorCases() []conformanceCase {
	return []conformanceCase{{
		name: "podSelector matchLabels selects only matching pods",
		policies: []string{`
			metadata: {namespace: pets, name: deny-cat}
			spec: {podSelector: {matchLabels: {app: cat}}, policyTypes: [Ingress]}`},
		probes: []string{
			"default/client pets/cat tcp/8080 deny",
			"default/client pets/dog tcp/80 allow",
			"default/client pets/bird tcp/80 allow",
		},
	}, {
		name: "podSelector matchExpressions In",
		policies: []string{`
			metadata: {namespace: pets, name: deny-backend}
			spec:
			  podSelector:
			    matchExpressions: [{key: tier, operator: In, values: [backend, db]}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 deny",
			"default/client pets/dog tcp/80 allow",
			"default/client pets/bird tcp/80 allow",
		},
	}, {
		name: "podSelector NotIn also selects pods without the key",
		policies: []string{`
			metadata: {namespace: pets, name: deny-not-frontend}
			spec:
			  podSelector:
			    matchExpressions: [{key: tier, operator: NotIn, values: [frontend]}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 deny",
			"default/client pets/bird tcp/80 deny",
			"default/client pets/dog tcp/80 allow",
		},
	}, {
		name: "podSelector Exists",
		policies: []string{`
			metadata: {namespace: pets, name: deny-tiered}
			spec:
			  podSelector:
			    matchExpressions: [{key: tier, operator: Exists}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 deny",
			"default/client pets/dog tcp/80 deny",
			"default/client pets/bird tcp/80 allow",
		},
	}, {
		name: "podSelector DoesNotExist",
		policies: []string{`
			metadata: {namespace: pets, name: deny-untiered}
			spec:
			  podSelector:
			    matchExpressions: [{key: tier, operator: DoesNotExist}]`},
		probes: []string{
			"default/client pets/bird tcp/80 deny",
			"default/client pets/cat tcp/8080 allow",
			"default/client pets/dog tcp/80 allow",
		},
	}, {
		name: "podSelector matchLabels and matchExpressions are ANDed",
		policies: []string{`
			metadata: {namespace: pets, name: deny-some}
			spec:
			  podSelector:
			    matchLabels: {tier: backend}
			    matchExpressions: [{key: app, operator: In, values: [cat, dog]}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 deny",
			"default/client pets/dog tcp/80 allow",
			"default/client pets/bird tcp/80 allow",
		},
	}, {
		name: "podSelector matching no pod enforces nothing",
		policies: []string{`
			metadata: {namespace: pets, name: deny-unicorn}
			spec: {podSelector: {matchLabels: {app: unicorn}}, policyTypes: [Ingress, Egress]}`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"pets/cat 8.8.8.8 tcp/443 allow",
		},
	}}
}

func peerCases() []conformanceCase {
	return []conformanceCase{{
		name: "from podSelector means pods of the policy namespace",
		policies: []string{`
			metadata: {namespace: pets, name: from-dog}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 deny",
			"pets/bird pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "from empty podSelector means every pod of the policy namespace",
		policies: []string{`
			metadata: {namespace: pets, name: from-pets}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"pets/bird pets/cat udp/53 allow",
			"dev/dog pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
			"8.8.8.8 pets/cat tcp/8080 deny",
			"host pets/cat tcp/8080 allow",
		},
	}, {
		name: "from namespaceSelector matchLabels",
		policies: []string{`
			metadata: {namespace: pets, name: from-team-a}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {team: a}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 allow",
			"dev/cat pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
			"8.8.8.8 pets/cat tcp/8080 deny",
		},
	}, {
		name: "from empty namespaceSelector means every pod",
		policies: []string{`
			metadata: {namespace: pets, name: from-pods}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {}}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 allow",
			"shop/far pets/cat tcp/8080 allow",
			"8.8.8.8 pets/cat tcp/8080 deny",
			"remote-node pets/cat tcp/8080 deny",
			"kube-apiserver pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector matchExpressions In",
		policies: []string{`
			metadata: {namespace: pets, name: from-dev}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from:
			    - namespaceSelector:
			        matchExpressions: [{key: env, operator: In, values: [dev, test]}]`},
		probes: []string{
			"dev/dog pets/cat tcp/8080 allow",
			"pets/dog pets/cat tcp/8080 deny",
			"shop/web pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector by kubernetes.io/metadata.name",
		policies: []string{`
			metadata: {namespace: pets, name: from-shop}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}}]`},
		probes: []string{
			"shop/web pets/cat tcp/8080 allow",
			"shop/db pets/cat tcp/8080 allow",
			"pets/dog pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector NotIn also selects namespaces without the key",
		policies: []string{`
			metadata: {namespace: pets, name: from-not-team-a}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from:
			    - namespaceSelector:
			        matchExpressions: [{key: team, operator: NotIn, values: [a]}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 deny",
			"pets/dog pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector DoesNotExist",
		policies: []string{`
			metadata: {namespace: pets, name: from-teamless}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from:
			    - namespaceSelector:
			        matchExpressions: [{key: team, operator: DoesNotExist}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector and podSelector in one peer are ANDed",
		policies: []string{`
			metadata: {namespace: pets, name: dogs-of-team-a}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from:
			    - namespaceSelector: {matchLabels: {team: a}}
			      podSelector: {matchLabels: {app: dog}}`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 allow",
			"pets/bird pets/cat tcp/8080 deny",
			"dev/cat pets/cat tcp/8080 deny",
			"shop/web pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector and podSelector as two peers are ORed",
		policies: []string{`
			metadata: {namespace: pets, name: team-b-or-dogs}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from:
			    - namespaceSelector: {matchLabels: {team: b}}
			    - podSelector: {matchLabels: {app: dog}}`},
		probes: []string{
			"shop/web pets/cat tcp/8080 allow",
			"shop/db pets/cat tcp/8080 allow",
			"pets/dog pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 deny",
			"pets/bird pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector with empty podSelector in one peer",
		policies: []string{`
			metadata: {namespace: pets, name: from-prod}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 allow",
			"dev/dog pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "peer matching no pod allows nothing",
		policies: []string{`
			metadata: {namespace: pets, name: from-unicorn}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: unicorn}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 deny",
			"8.8.8.8 pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "namespaceSelector matching no namespace allows nothing",
		policies: []string{`
			metadata: {namespace: pets, name: from-team-z}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {team: z}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 deny",
			"shop/web pets/cat tcp/8080 deny",
		},
	}, {
		name: "ingress from a pod on another node",
		policies: []string{`
			metadata: {namespace: pets, name: from-team-b}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {team: b}}}]`},
		probes: []string{
			"shop/far pets/cat tcp/8080 allow",
			"shop/web pets/cat tcp/8080 allow",
			"pets/dog pets/cat tcp/8080 deny",
		},
	}, {
		name: "empty from list means any source",
		policies: []string{`
			metadata: {namespace: pets, name: port-80-from-anywhere}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: []
			    ports: [{port: 80}]`},
		probes: []string{
			"8.8.8.8 pets/cat tcp/80 allow",
			"default/client pets/cat tcp/80 allow",
			"remote-node pets/cat tcp/80 allow",
			"default/client pets/cat tcp/81 deny",
		},
	}}
}

func egressPeerCases() []conformanceCase {
	return []conformanceCase{{
		name: "egress to podSelector",
		policies: []string{`
			metadata: {namespace: pets, name: cat-to-dog}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: dog}}}]`},
		probes: []string{
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat dev/dog tcp/80 deny",
			"pets/cat pets/bird tcp/80 deny",
			"pets/cat 8.8.8.8 tcp/80 deny",
		},
	}, {
		name: "egress to namespaceSelector includes pods on other nodes",
		policies: []string{`
			metadata: {namespace: pets, name: cat-to-shop}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}}]`},
		probes: []string{
			"pets/cat shop/web tcp/8000 allow",
			"pets/cat shop/far tcp/81 allow",
			"pets/cat default/client tcp/80 deny",
			"pets/cat dev/dog tcp/80 deny",
		},
	}, {
		name: "egress with empty to list and ports",
		policies: []string{`
			metadata: {namespace: pets, name: dns-anywhere}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: []
			    ports: [{protocol: UDP, port: 53}]`},
		probes: []string{
			"pets/cat 8.8.8.8 udp/53 allow",
			"pets/cat shop/web udp/53 allow",
			"pets/cat host udp/53 allow",
			"pets/cat 8.8.8.8 tcp/53 deny",
			"pets/cat 8.8.8.8 udp/54 deny",
		},
	}, {
		name: "egress DNS over UDP and TCP only",
		policies: []string{`
			metadata: {namespace: pets, name: dns-only}
			spec:
			  podSelector: {}
			  policyTypes: [Egress]
			  egress:
			  - ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]`},
		probes: []string{
			"pets/dog 8.8.8.8 udp/53 allow",
			"pets/dog 8.8.8.8 tcp/53 allow",
			"pets/dog 8.8.8.8 tcp/443 deny",
			"pets/dog pets/cat tcp/8080 deny",
		},
	}, {
		name: "egress both ends must allow",
		policies: []string{`
			metadata: {namespace: pets, name: cat-in}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}, {podSelector: {matchLabels: {app: bird}}}]`, `
			metadata: {namespace: pets, name: dog-out}
			spec:
			  podSelector: {matchLabels: {app: dog}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: bird}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 deny",
			"pets/bird pets/cat tcp/8080 allow",
			"pets/dog pets/bird tcp/80 allow",
			"default/client pets/cat tcp/8080 deny",
		},
	}}
}

func ipBlockCases() []conformanceCase {
	return []conformanceCase{{
		name: "ingress from ipBlock",
		policies: []string{`
			metadata: {namespace: pets, name: from-testnet}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]`},
		probes: []string{
			"203.0.113.9 pets/cat tcp/8080 allow",
			"198.51.100.1 pets/cat tcp/8080 deny",
			"default/client pets/cat tcp/8080 deny",
			"host pets/cat tcp/8080 allow",
		},
	}, {
		name: "ipBlock except",
		policies: []string{`
			metadata: {namespace: pets, name: from-lower-half}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]`},
		probes: []string{
			"203.0.113.0 pets/cat tcp/8080 allow",
			"203.0.113.127 pets/cat tcp/8080 allow",
			"203.0.113.128 pets/cat tcp/8080 deny",
			"203.0.113.255 pets/cat tcp/8080 deny",
			"8.8.8.8 pets/cat tcp/8080 deny",
		},
	}, {
		name: "ipBlock 0.0.0.0/0 selects world and every CIDR but no pod",
		policies: []string{`
			metadata: {namespace: pets, name: from-world}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]`, `
			metadata: {namespace: shop, name: makes-a-cidr-identity}
			spec:
			  podSelector: {}
			  ingress:
			  - from: [{ipBlock: {cidr: 203.0.113.0/24}}]`},
		probes: []string{
			"8.8.8.8 pets/cat tcp/8080 allow",
			"203.0.113.9 pets/cat tcp/8080 allow",
			"default/client pets/cat tcp/8080 deny",
			"remote-node pets/cat tcp/8080 deny",
			"kube-apiserver pets/cat tcp/8080 deny",
			"host pets/cat tcp/8080 allow",
		},
	}, {
		name: "ipBlock 0.0.0.0/0 with except",
		policies: []string{`
			metadata: {namespace: pets, name: from-internet}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 192.168.0.0/16]}}]`},
		probes: []string{
			"8.8.8.8 pets/cat tcp/8080 allow",
			"10.1.2.3 pets/cat tcp/8080 deny",
			"192.168.1.1 pets/cat tcp/8080 deny",
			"172.16.0.1 pets/cat tcp/8080 allow",
		},
	}, {
		name: "ipBlock never selects pods",
		policies: []string{`
			metadata: {namespace: pets, name: from-pod-cidr}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 10.0.0.0/8}}]`},
		probes: []string{
			"10.244.9.9 pets/cat tcp/8080 allow",
			"default/client pets/cat tcp/8080 deny",
			"pets/dog pets/cat tcp/8080 deny",
		},
	}, {
		name: "egress to ipBlock with port",
		policies: []string{`
			metadata: {namespace: pets, name: to-testnet-https}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
			    ports: [{protocol: TCP, port: 443}]`},
		probes: []string{
			"pets/cat 198.51.100.10 tcp/443 allow",
			"pets/cat 198.51.100.10 tcp/80 deny",
			"pets/cat 203.0.113.1 tcp/443 deny",
			"pets/cat shop/web tcp/443 deny",
		},
	}, {
		name: "ipBlock selects narrower CIDR identities of other policies",
		policies: []string{`
			metadata: {namespace: pets, name: from-ten}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 10.0.0.0/8}}]`, `
			metadata: {namespace: shop, name: from-ten-one}
			spec:
			  podSelector: {matchLabels: {app: web}}
			  ingress:
			  - from: [{ipBlock: {cidr: 10.1.0.0/16}}]`},
		probes: []string{
			"10.1.2.3 pets/cat tcp/8080 allow",
			"10.2.0.1 pets/cat tcp/8080 allow",
			"10.1.2.3 shop/web tcp/8000 allow",
			"10.2.0.1 shop/web tcp/8000 deny",
		},
	}, {
		name: "except range allowed by another policy",
		policies: []string{`
			metadata: {namespace: pets, name: upper}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/25]}}]`, `
			metadata: {namespace: pets, name: lowest-quarter}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: 203.0.113.0/26}}]`},
		probes: []string{
			"203.0.113.1 pets/cat tcp/8080 allow",
			"203.0.113.100 pets/cat tcp/8080 deny",
			"203.0.113.200 pets/cat tcp/8080 allow",
		},
	}, {
		name: "IPv6 ipBlock with except",
		policies: []string{`
			metadata: {namespace: pets, name: from-doc6}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}}]`},
		probes: []string{
			"2001:db8:2::1 pets/cat tcp/8080 allow",
			"2001:db8:1::1 pets/cat tcp/8080 deny",
			"2001:db9::1 pets/cat tcp/8080 deny",
			"203.0.113.9 pets/cat tcp/8080 deny",
		},
	}, {
		name: "ipBlock ::/0 selects world",
		policies: []string{`
			metadata: {namespace: pets, name: from-world6}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{ipBlock: {cidr: "::/0"}}]`},
		probes: []string{
			"2001:db8::1 pets/cat tcp/8080 allow",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "egress ipBlock 0.0.0.0/0 reaches neither host nor remote nodes",
		policies: []string{`
			metadata: {namespace: pets, name: to-world}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]`},
		probes: []string{
			"pets/cat 8.8.8.8 tcp/443 allow",
			"pets/cat host tcp/10250 deny",
			"pets/cat remote-node tcp/10250 deny",
			"pets/cat kube-apiserver tcp/443 deny",
			"pets/cat default/client tcp/80 deny",
		},
	}}
}

func portCases() []conformanceCase {
	ingressOnCat := func(name, ports string) string {
		return `
			metadata: {namespace: pets, name: ` + name + `}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - ports: ` + ports
	}
	return []conformanceCase{{
		name:     "numeric TCP port",
		policies: []string{ingressOnCat("tcp-80", `[{protocol: TCP, port: 80}]`)},
		probes: []string{
			"default/client pets/cat tcp/80 allow",
			"default/client pets/cat tcp/81 deny",
			"default/client pets/cat udp/80 deny",
			"default/client pets/cat icmp deny",
		},
	}, {
		name:     "port without protocol means TCP",
		policies: []string{ingressOnCat("port-8080", `[{port: 8080}]`)},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"default/client pets/cat udp/8080 deny",
			"default/client pets/cat sctp/8080 deny",
		},
	}, {
		name:     "UDP port",
		policies: []string{ingressOnCat("udp-53", `[{protocol: UDP, port: 53}]`)},
		probes: []string{
			"default/client pets/cat udp/53 allow",
			"default/client pets/cat tcp/53 deny",
			"default/client pets/cat udp/54 deny",
		},
	}, {
		name:     "SCTP port",
		policies: []string{ingressOnCat("sctp-3868", `[{protocol: SCTP, port: 3868}]`)},
		probes: []string{
			"default/client pets/cat sctp/3868 allow",
			"default/client pets/cat tcp/3868 deny",
			"default/client pets/cat sctp/3869 deny",
		},
	}, {
		name:     "protocol without port means every port of that protocol",
		policies: []string{ingressOnCat("all-udp", `[{protocol: UDP}]`)},
		probes: []string{
			"default/client pets/cat udp/1 allow",
			"default/client pets/cat udp/65535 allow",
			"default/client pets/cat tcp/53 deny",
			"default/client pets/cat icmp deny",
		},
	}, {
		name:     "empty port entry means every TCP port",
		policies: []string{ingressOnCat("all-tcp", `[{}]`)},
		probes: []string{
			"default/client pets/cat tcp/1 allow",
			"default/client pets/cat tcp/65535 allow",
			"default/client pets/cat udp/53 deny",
		},
	}, {
		name:     "several ports in one rule",
		policies: []string{ingressOnCat("web", `[{port: 80}, {port: 443}, {protocol: UDP, port: 443}]`)},
		probes: []string{
			"default/client pets/cat tcp/80 allow",
			"default/client pets/cat tcp/443 allow",
			"default/client pets/cat udp/443 allow",
			"default/client pets/cat udp/80 deny",
			"default/client pets/cat tcp/8443 deny",
		},
	}, {
		name:     "endPort range edges",
		policies: []string{ingressOnCat("range", `[{protocol: TCP, port: 32000, endPort: 32768}]`)},
		probes: []string{
			"default/client pets/cat tcp/31999 deny",
			"default/client pets/cat tcp/32000 allow",
			"default/client pets/cat tcp/32500 allow",
			"default/client pets/cat tcp/32767 allow",
			"default/client pets/cat tcp/32768 allow",
			"default/client pets/cat tcp/32769 deny",
			"default/client pets/cat udp/32000 deny",
		},
	}, {
		name:     "endPort equal to port",
		policies: []string{ingressOnCat("single", `[{port: 8080, endPort: 8080}]`)},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"default/client pets/cat tcp/8079 deny",
			"default/client pets/cat tcp/8081 deny",
		},
	}, {
		name:     "endPort over every port",
		policies: []string{ingressOnCat("every", `[{protocol: UDP, port: 1, endPort: 65535}]`)},
		probes: []string{
			"default/client pets/cat udp/1 allow",
			"default/client pets/cat udp/65535 allow",
			"default/client pets/cat tcp/1 deny",
		},
	}, {
		name:     "endPort unaligned range",
		policies: []string{ingressOnCat("odd", `[{protocol: UDP, port: 999, endPort: 1025}]`)},
		probes: []string{
			"default/client pets/cat udp/998 deny",
			"default/client pets/cat udp/999 allow",
			"default/client pets/cat udp/1000 allow",
			"default/client pets/cat udp/1024 allow",
			"default/client pets/cat udp/1025 allow",
			"default/client pets/cat udp/1026 deny",
		},
	}, {
		name: "endPort range in egress",
		policies: []string{`
			metadata: {namespace: pets, name: to-range}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{ipBlock: {cidr: 198.51.100.0/24}}]
			    ports: [{port: 8000, endPort: 8080}]`},
		probes: []string{
			"pets/cat 198.51.100.1 tcp/7999 deny",
			"pets/cat 198.51.100.1 tcp/8000 allow",
			"pets/cat 198.51.100.1 tcp/8080 allow",
			"pets/cat 198.51.100.1 tcp/8081 deny",
		},
	}, {
		name: "peers and ports in one rule are ANDed",
		policies: []string{`
			metadata: {namespace: pets, name: dog-on-80}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			    ports: [{port: 80}]`},
		probes: []string{
			"pets/dog pets/cat tcp/80 allow",
			"pets/dog pets/cat tcp/81 deny",
			"pets/bird pets/cat tcp/80 deny",
		},
	}, {
		name: "ICMP is allowed only by rules without ports",
		policies: []string{`
			metadata: {namespace: pets, name: icmp}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			  - ports: [{port: 80}]`},
		probes: []string{
			"pets/dog pets/cat icmp allow",
			"pets/bird pets/cat icmp deny",
			"pets/bird pets/cat tcp/80 allow",
		},
	}}
}

func namedPortCases() []conformanceCase {
	return []conformanceCase{{
		name: "named port ingress resolves per selected local pod",
		policies: []string{`
			metadata: {namespace: pets, name: http}
			spec:
			  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}
			  ingress:
			  - ports: [{port: http}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"default/client pets/cat tcp/80 deny",
			"default/client pets/dog tcp/80 allow",
			"default/client pets/dog tcp/8080 deny",
		},
	}, {
		name: "named UDP port",
		policies: []string{`
			metadata: {namespace: pets, name: dns}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - ports: [{protocol: UDP, port: dns}]`},
		probes: []string{
			"default/client pets/cat udp/53 allow",
			"default/client pets/cat tcp/53 deny",
		},
	}, {
		name: "named SCTP port",
		policies: []string{`
			metadata: {namespace: pets, name: diameter}
			spec:
			  podSelector: {matchLabels: {app: dog}}
			  ingress:
			  - ports: [{protocol: SCTP, port: diameter}]`},
		probes: []string{
			"default/client pets/dog sctp/3868 allow",
			"default/client pets/dog tcp/3868 deny",
		},
	}, {
		name: "named port with another protocol resolves nowhere",
		policies: []string{`
			metadata: {namespace: pets, name: dns-tcp}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - ports: [{port: dns}]`},
		probes: []string{
			"default/client pets/cat udp/53 deny",
			"default/client pets/cat tcp/53 deny",
		},
	}, {
		name: "named port that no pod has allows nothing",
		policies: []string{`
			metadata: {namespace: pets, name: nope}
			spec:
			  podSelector: {}
			  ingress:
			  - ports: [{port: nope}, {port: http}]`},
		probes: []string{
			"default/client pets/bird tcp/80 deny",
			"default/client pets/bird tcp/8080 deny",
			"default/client pets/cat tcp/8080 allow",
		},
	}, {
		name: "named port egress resolves per remote",
		policies: []string{`
			metadata: {namespace: pets, name: to-frontends}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {tier: frontend}}}]
			    ports: [{port: http}]`},
		probes: []string{
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat pets/dog tcp/8000 deny",
			"pets/cat shop/web tcp/8000 allow",
			"pets/cat shop/web tcp/80 deny",
			"pets/cat shop/db tcp/5432 deny",
		},
	}, {
		name: "named port egress without to resolves against every identity",
		policies: []string{`
			metadata: {namespace: pets, name: to-any-http}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  policyTypes: [Egress]
			  egress:
			  - ports: [{port: http}]`},
		probes: []string{
			"pets/cat pets/dog tcp/80 allow",
			"pets/cat shop/web tcp/8000 allow",
			"pets/cat shop/far tcp/81 allow",
			"pets/cat dev/cat tcp/8081 allow",
			"pets/cat pets/dog tcp/8000 deny",
			"pets/cat 8.8.8.8 tcp/80 deny",
		},
	}, {
		name: "named and numeric ports in one rule",
		policies: []string{`
			metadata: {namespace: pets, name: mixed}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - ports: [{port: metrics}, {port: 8443}]`},
		probes: []string{
			"default/client pets/cat tcp/9090 allow",
			"default/client pets/cat tcp/8443 allow",
			"default/client pets/cat tcp/8080 deny",
		},
	}, {
		name: "pods sharing an identity share their named ports",
		world: func(w *testWorld) {
			w.pods = append(w.pods, testPod{ns: "pets", name: "cat2",
				labels: map[string]string{"app": "cat", "tier": "backend"},
				ports:  []NamedPort{tcp("http", 8088)}})
		},
		policies: []string{`
			metadata: {namespace: pets, name: http}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - ports: [{port: http}]`},
		probes: []string{
			"default/client pets/cat tcp/8080 allow",
			"default/client pets/cat2 tcp/8088 allow",
			"default/client pets/cat2 tcp/8080 allow",
			"default/client pets/cat tcp/9090 deny",
		},
	}}
}

func combinationCases() []conformanceCase {
	return []conformanceCase{{
		name: "rules within a policy are ORed",
		policies: []string{`
			metadata: {namespace: pets, name: two-rules}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			    ports: [{port: 80}]
			  - from: [{podSelector: {matchLabels: {app: bird}}}]
			    ports: [{port: 81}]`},
		probes: []string{
			"pets/dog pets/cat tcp/80 allow",
			"pets/dog pets/cat tcp/81 deny",
			"pets/bird pets/cat tcp/81 allow",
			"pets/bird pets/cat tcp/80 deny",
		},
	}, {
		name: "several policies selecting one pod union their allows",
		policies: []string{`
			metadata: {namespace: pets, name: from-dog}
			spec:
			  podSelector: {matchLabels: {app: cat}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]`, `
			metadata: {namespace: pets, name: backend-dns}
			spec:
			  podSelector: {matchLabels: {tier: backend}}
			  ingress:
			  - ports: [{protocol: UDP, port: 53}]`},
		probes: []string{
			"pets/dog pets/cat tcp/80 allow",
			"pets/bird pets/cat udp/53 allow",
			"pets/bird pets/cat tcp/80 deny",
		},
	}, {
		name: "a deny-all policy does not subtract from an allow",
		policies: []string{`
			metadata: {namespace: pets, name: deny-all}
			spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`, `
			metadata: {namespace: pets, name: dog-to-cat}
			spec:
			  podSelector: {}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: dog}}}]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: cat}}}]`},
		probes: []string{
			"pets/dog pets/cat tcp/8080 allow",
			"pets/dog pets/bird tcp/80 deny",
			"pets/bird pets/cat tcp/8080 deny",
		},
	}, {
		name: "same policy name in two namespaces",
		policies: []string{`
			metadata: {namespace: pets, name: web}
			spec:
			  podSelector: {}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {team: b}}}]`, `
			metadata: {namespace: shop, name: web}
			spec:
			  podSelector: {}
			  ingress:
			  - from: [{namespaceSelector: {matchLabels: {team: a}}}]`},
		probes: []string{
			"shop/web pets/cat tcp/8080 allow",
			"pets/cat shop/web tcp/8000 allow",
			"pets/cat pets/dog tcp/80 deny",
			"shop/web shop/db tcp/5432 deny",
		},
	}, {
		name: "typical web app: frontend from anywhere, backend from frontend",
		policies: []string{`
			metadata: {namespace: shop, name: default-deny}
			spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`, `
			metadata: {namespace: shop, name: web}
			spec:
			  podSelector: {matchLabels: {app: web}}
			  ingress:
			  - ports: [{port: http}]
			  egress:
			  - to: [{podSelector: {matchLabels: {app: db}}}]
			    ports: [{port: pg}]
			  - to: [{namespaceSelector: {}}]
			    ports: [{protocol: UDP, port: 53}]`, `
			metadata: {namespace: shop, name: db}
			spec:
			  podSelector: {matchLabels: {app: db}}
			  ingress:
			  - from: [{podSelector: {matchLabels: {app: web}}}]
			    ports: [{port: 5432}]`},
		probes: []string{
			"8.8.8.8 shop/web tcp/8000 allow",
			"default/client shop/web tcp/8000 allow",
			"default/client shop/web tcp/5432 deny",
			"shop/web shop/db tcp/5432 allow",
			"shop/web shop/db tcp/8000 deny",
			"default/client shop/db tcp/5432 deny",
			"shop/web default/client udp/53 allow",
			"shop/web 8.8.8.8 udp/53 deny",
			"shop/db 8.8.8.8 udp/53 deny",
		},
	}}
}
