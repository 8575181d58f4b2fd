package policy

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

func decodeAll(tb testing.TB, ys ...string) []*networkingv1.NetworkPolicy {
	tb.Helper()
	var nps []*networkingv1.NetworkPolicy
	for _, y := range ys {
		np, err := decodePolicy(y)
		if err != nil {
			tb.Fatal(err)
		}
		nps = append(nps, np)
	}
	return nps
}

// cookiesByRule inverts Result.Rules.
func cookiesByRule(res *Result) map[RuleRef]uint32 {
	out := map[RuleRef]uint32{}
	for c, ref := range res.Rules {
		out[ref] = c
	}
	return out
}

const (
	cookiePolicyA = `
		metadata: {namespace: pets, name: a}
		spec:
		  podSelector: {}
		  ingress: [{from: [{podSelector: {}}]}, {ports: [{port: 80}]}]
		  egress: [{}]`
	cookiePolicyB = `
		metadata: {namespace: shop, name: b}
		spec:
		  podSelector: {}
		  ingress: [{}]`
	cookiePolicyC = `
		metadata: {namespace: dev, name: c}
		spec:
		  podSelector: {matchLabels: {app: nobody}}
		  ingress: [{}]`
)

func TestCookieJarStable(t *testing.T) {
	w := defaultWorld()
	jar := NewCookieJar()
	compile := func(ys ...string) *Result {
		t.Helper()
		in, _ := w.input(decodeAll(t, ys...))
		res, err := Compile(in, jar)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	first := cookiesByRule(compile(cookiePolicyA, cookiePolicyB))
	if len(first) != 9 { // a: 2 ingress + 1 egress + 2 default denies; b: 1 + 1 default deny; host ingress, default allow
		t.Fatalf("rules: %v", first)
	}
	if first[HostIngressRule] != CookieHostIngress {
		t.Errorf("host ingress rule has cookie %d", first[HostIngressRule])
	}

	// Same policies, other order, plus one more: old cookies stay.
	second := cookiesByRule(compile(cookiePolicyC, cookiePolicyB, cookiePolicyA))
	for ref, c := range first {
		if second[ref] != c {
			t.Errorf("%+v: cookie %d became %d", ref, c, second[ref])
		}
	}
	// A rule that selects no local pod still holds a cookie, so it keeps
	// it while pods come and go.
	refC := RuleRef{Kind: KindNetworkPolicy, Namespace: "dev", Name: "c", Dir: Ingress}
	cookieC, ok := second[refC]
	if !ok {
		t.Fatalf("rule of c has no cookie: %v", second)
	}

	// Dropping a policy forgets its rules; its number is never handed out
	// again, so a stale map value cannot name a different rule.
	third := cookiesByRule(compile(cookiePolicyA, cookiePolicyB))
	if _, ok := third[refC]; ok {
		t.Errorf("rule of removed policy c still listed")
	}
	fourth := cookiesByRule(compile(cookiePolicyA, cookiePolicyB, cookiePolicyC))
	if fourth[refC] == cookieC {
		t.Errorf("re-added rule reused cookie %d", cookieC)
	}
	for ref, c := range first {
		if fourth[ref] != c {
			t.Errorf("%+v: cookie %d became %d", ref, c, fourth[ref])
		}
	}
}

func TestCookieJarFreshIsDeterministic(t *testing.T) {
	w := defaultWorld()
	var prev map[RuleRef]uint32
	for _, order := range [][]string{
		{cookiePolicyA, cookiePolicyB, cookiePolicyC},
		{cookiePolicyC, cookiePolicyA, cookiePolicyB},
	} {
		in, _ := w.input(decodeAll(t, order...))
		res, err := Compile(in, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := cookiesByRule(res)
		if prev != nil {
			for ref, c := range prev {
				if got[ref] != c {
					t.Errorf("%+v: cookie %d in one order, %d in another", ref, c, got[ref])
				}
			}
		}
		prev = got
	}
}

// TestCompileNamesRules checks that verdicts name the rule that decided
// them.
func TestCompileNamesRules(t *testing.T) {
	c := newTestCluster(t, defaultWorld(), []string{cookiePolicyA})
	cat, client := c.pods["pets/cat"], c.pods["default/client"]
	dog := c.pods["pets/dog"]
	for _, tc := range []struct {
		remote uint32
		dir    Direction
		port   uint16
		want   RuleRef
	}{
		{dog, Ingress, 8080, RuleRef{Kind: KindNetworkPolicy, Namespace: "pets", Name: "a", Dir: Ingress, Index: 0}},
		{client, Ingress, 80, RuleRef{Kind: KindNetworkPolicy, Namespace: "pets", Name: "a", Dir: Ingress, Index: 1}},
		{client, Egress, 80, RuleRef{Kind: KindNetworkPolicy, Namespace: "pets", Name: "a", Dir: Egress, Index: 0}},
		{IdentityHost, Ingress, 8080, HostIngressRule},
	} {
		e, enforced := c.res.Lookup(cat, tc.remote, tc.dir, ProtoTCP, tc.port)
		if !enforced || e.Action != ActionAllow {
			t.Errorf("%d %v %d: got %+v, %v", tc.remote, tc.dir, tc.port, e, enforced)
			continue
		}
		if got := c.res.Rules[e.Cookie]; got != tc.want {
			t.Errorf("%d %v %d: cookie %d names %+v, want %+v", tc.remote, tc.dir, tc.port, e.Cookie, got, tc.want)
		}
	}
	// A drop no rule decided names the policy whose default deny it is.
	e, _ := c.res.Lookup(cat, client, Ingress, ProtoTCP, 81)
	if want := (RuleRef{Kind: KindNetworkPolicy, Namespace: "pets", Name: "a", Dir: Ingress, Default: true}); e.Action != ActionDeny || c.res.Rules[e.Cookie] != want {
		t.Errorf("default deny: got %+v naming %+v, want %+v", e, c.res.Rules[e.Cookie], want)
	}
}
