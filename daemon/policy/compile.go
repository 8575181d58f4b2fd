package policy

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Input is what the compiler needs to know about the cluster.
type Input struct {
	// Identities is every known identity: pods cluster-wide, CIDR
	// identities (see CIDRs) and the reserved ones.
	Identities []Identity
	// Local is the identities of the pods on this node: the ones policy is
	// compiled for.
	Local []uint32
	// NamedPorts is, per identity, the union of its pods' container ports.
	NamedPorts map[uint32][]NamedPort

	NetworkPolicies []*networkingv1.NetworkPolicy
	// CiliumPolicies are CiliumNetworkPolicies and
	// CiliumClusterwideNetworkPolicies, parsed and validated by package
	// cnp.
	CiliumPolicies []*cnp.Policy
}

// Result is the compiled policy of every local identity.
type Result struct {
	// Identities has one entry per local identity, enforced or not.
	Identities map[uint32]*IdentityPolicy
	// Rules names the rule behind every cookie of the policies compiled.
	Rules map[uint32]RuleRef
	// DNS and FQDN are, per local identity, the DNS rules the DNS proxy
	// enforces and the toFQDNs rules it learns addresses for.
	DNS  map[uint32][]DNSRule
	FQDN map[uint32][]FQDNRule
	// HTTP and HTTPIngress are, per local identity, the HTTP rules the
	// HTTP proxy enforces on its connections: HTTP on those it opens
	// (egress, the remotes are destinations), HTTPIngress on those it
	// accepts (the remotes are sources). Two maps rather than a direction
	// in each set, so rules persisted by an older proxy keep their meaning.
	HTTP        map[uint32][]HTTPRuleSet
	HTTPIngress map[uint32][]HTTPRuleSet
}

// Compile compiles the policies for the local identities. It validates
// every policy first and fails as a whole on the first invalid one: a half
// compiled policy set could allow what the full one denies. jar keeps
// cookies stable across compiles; nil uses a fresh jar. Compiles sharing a
// jar are serialised.
func Compile(in Input, jar *CookieJar) (*Result, error) {
	nps, err := sortedValid(in.NetworkPolicies)
	if err != nil {
		return nil, err
	}
	c := compiler{
		ids:        newIdentityIndex(in.Identities),
		namedPorts: in.NamedPorts,
		res:        &Result{Identities: make(map[uint32]*IdentityPolicy, len(in.Local))},
	}
	for _, id := range in.Local {
		ident, ok := c.ids.byID[id]
		if !ok || !ident.isPod() {
			return nil, fmt.Errorf("compile policy: local identity %d is not a known pod identity", id)
		}
		if _, dup := c.res.Identities[id]; dup {
			continue
		}
		c.locals = append(c.locals, ident)
		c.res.Identities[id] = &IdentityPolicy{Entries: map[Key]Entry{}}
	}
	slices.SortFunc(c.locals, func(a, b *Identity) int { return cmp.Compare(a.ID, b.ID) })

	if jar == nil {
		jar = NewCookieJar()
	}
	jar.mu.Lock()
	defer jar.mu.Unlock()
	jar.begin()
	c.jar = jar

	for _, np := range nps {
		if err := c.networkPolicy(np); err != nil {
			return nil, fmt.Errorf("compile networkpolicy %s/%s: %w", np.Namespace, np.Name, err)
		}
	}
	for _, p := range sortedCilium(in.CiliumPolicies) {
		c.ciliumPolicy(p)
	}
	c.defaultAllows()
	for id, ip := range c.res.Identities {
		if ip.IngressEnforced {
			// Kubelet probes come from the node; Kubernetes expects them
			// to pass whatever the policy says.
			k := Key{Local: id, Remote: IdentityHost, Dir: Ingress, Proto: ProtoAny}
			putEntry(ip.Entries, k, Entry{Action: ActionAllow, Cookie: CookieHostIngress})
		}
		nestDenies(ip.Entries)
	}
	c.res.Rules = jar.end()
	return c.res, nil
}

// sortedValid validates every policy and returns them by namespace and
// name, so that cookies of a fresh jar come out the same for the same
// policies.
func sortedValid(in []*networkingv1.NetworkPolicy) ([]*networkingv1.NetworkPolicy, error) {
	nps := make([]*networkingv1.NetworkPolicy, 0, len(in))
	for i, np := range in {
		if np == nil {
			return nil, fmt.Errorf("compile networkpolicy at index %d: nil", i)
		}
		if err := Validate(np); err != nil {
			if np.Name == "" {
				return nil, fmt.Errorf("compile networkpolicy at index %d: %w", i, err)
			}
			return nil, fmt.Errorf("compile networkpolicy %s/%s: %w", np.Namespace, np.Name, err)
		}
		nps = append(nps, np)
	}
	slices.SortStableFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return nps, nil
}

type compiler struct {
	ids        *identityIndex
	namedPorts map[uint32][]NamedPort
	locals     []*Identity // by ID
	jar        *CookieJar
	res        *Result
	// dd records, per identity and direction, whether some policy puts it
	// in default deny. A NetworkPolicy always does; a Cilium rule may not.
	dd map[uint32]*[2]bool
}

// policyTypes applies the Kubernetes default: without policyTypes a policy
// is about ingress always and about egress if it has egress rules.
func policyTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	for _, t := range spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (c *compiler) networkPolicy(np *networkingv1.NetworkPolicy) error {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return fmt.Errorf("spec.podSelector: %w", err)
	}
	var selected []*Identity
	for _, id := range c.locals {
		if id.Namespace == np.Namespace && sel.Matches(labels.Set(id.Labels)) {
			selected = append(selected, id)
		}
	}
	ingress, egress := policyTypes(&np.Spec)
	var inCookie, egCookie uint32
	if ingress {
		inCookie = c.jar.cookie(RuleRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name, Dir: Ingress, Default: true})
	}
	if egress {
		egCookie = c.jar.cookie(RuleRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name, Dir: Egress, Default: true})
	}
	// Rules of a direction the policy does not list are ignored, as every
	// implementation does: policyTypes decides what a policy is about.
	if ingress {
		for i, rule := range np.Spec.Ingress {
			ref := RuleRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name, Dir: Ingress, Index: i}
			if err := c.rule(np.Namespace, ref, selected, rule.From, rule.Ports); err != nil {
				return fmt.Errorf("spec.ingress[%d]: %w", i, err)
			}
		}
	}
	if egress {
		for i, rule := range np.Spec.Egress {
			ref := RuleRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name, Dir: Egress, Index: i}
			if err := c.rule(np.Namespace, ref, selected, rule.To, rule.Ports); err != nil {
				return fmt.Errorf("spec.egress[%d]: %w", i, err)
			}
		}
	}
	for _, id := range selected {
		ip := c.res.Identities[id.ID]
		if ingress {
			ip.IngressEnforced = true
			c.defaultDeny(id.ID, Ingress, true, inCookie)
		}
		if egress {
			ip.EgressEnforced = true
			c.defaultDeny(id.ID, Egress, true, egCookie)
		}
	}
	return nil
}

// rule adds the allow entries of one rule to every selected local identity.
// The cookie is taken even when no local identity is selected, so a rule
// keeps its cookie while pods come and go.
func (c *compiler) rule(namespace string, ref RuleRef, selected []*Identity, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) error {
	cookie := c.jar.cookie(ref)
	if len(selected) == 0 {
		return nil
	}
	rs, err := c.ids.peers(namespace, peers)
	if err != nil {
		return err
	}
	allow := Entry{Action: ActionAllow, Cookie: cookie}
	for _, local := range selected {
		c.add(local.ID, ref.Dir, rs, ports, allow)
	}
	return nil
}
