package policy

import "sync"

// Rule kinds, as they appear in RuleRef.Kind and in flows.
const (
	KindNetworkPolicy = "NetworkPolicy"
	KindCiliumPolicy  = "CiliumNetworkPolicy"
	KindClusterwide   = "CiliumClusterwideNetworkPolicy"
	KindReserved      = "Reserved"
)

// Cookies with a fixed meaning.
const (
	// CookieNone is the cookie of a verdict no rule decided: the default
	// deny of an enforced direction.
	CookieNone uint32 = 0
	// CookieHostIngress names the built-in rule that lets the node itself
	// (kubelet probes) reach every local pod, as Cilium's allow-localhost.
	CookieHostIngress uint32 = 1
	// CookieDefaultAllow names the allow-all a direction gets when the
	// policies selecting it all set enableDefaultDeny false: their deny
	// rules apply, everything else passes (as Cilium inserts an allow-all
	// for such endpoints).
	CookieDefaultAllow uint32 = 2
)

// HostIngressRule is the rule behind CookieHostIngress.
var HostIngressRule = RuleRef{Kind: KindReserved, Name: "allow-host-ingress", Dir: Ingress}

// DefaultAllowRule is the rule behind CookieDefaultAllow.
var DefaultAllowRule = RuleRef{Kind: KindReserved, Name: "default-allow"}

// CookieJar hands out cookie numbers per rule and keeps them across
// compiles, so an unchanged rule keeps its cookie and recompiling does not
// rewrite every policy map value. Numbers are never reused: a cookie still
// sitting in a map or in a flow record never comes to name a different rule.
// A jar forgets the rules that a compile no longer saw.
type CookieJar struct {
	mu      sync.Mutex
	next    uint32
	cookies map[RuleRef]uint32
	// seen collects the rules of the compile in progress, so end can
	// forget the others.
	seen map[RuleRef]bool
}

// NewCookieJar returns a jar that knows only the reserved rules.
func NewCookieJar() *CookieJar {
	return &CookieJar{
		next:    CookieDefaultAllow + 1,
		cookies: map[RuleRef]uint32{HostIngressRule: CookieHostIngress, DefaultAllowRule: CookieDefaultAllow},
	}
}

// begin starts a compile. The caller holds mu.
func (j *CookieJar) begin() {
	j.seen = map[RuleRef]bool{HostIngressRule: true, DefaultAllowRule: true}
}

// cookie returns ref's cookie, allocating one for a rule not seen before.
// The caller holds mu.
func (j *CookieJar) cookie(ref RuleRef) uint32 {
	if j.seen != nil {
		j.seen[ref] = true
	}
	if c, ok := j.cookies[ref]; ok {
		return c
	}
	c := j.next
	j.next++
	j.cookies[ref] = c
	return c
}

// end finishes a successful compile: it forgets the rules the compile did
// not see and returns the live rules by cookie. The caller holds mu.
func (j *CookieJar) end() map[uint32]RuleRef {
	rules := make(map[uint32]RuleRef, len(j.seen))
	for ref, c := range j.cookies {
		if !j.seen[ref] {
			delete(j.cookies, ref)
			continue
		}
		rules[c] = ref
	}
	j.seen = nil
	return rules
}
