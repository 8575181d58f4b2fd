package l7proxy

import (
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// Rule is a compiled HTTP rule. Method, path and host are RE2 expressions
// matched against the whole value, as Cilium matches them; an empty one
// matches anything.
type Rule struct {
	method, path, host *regexp.Regexp
	headers            []header
}

type header struct {
	name  string
	value string // "" with present: the header must exist
	check bool   // compare the value
}

func anchored(expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	return regexp.Compile("^(?:" + expr + ")$")
}

// Compile compiles one rule of a policy (validated already).
func Compile(r cnp.HTTPRule) (*Rule, error) {
	var c Rule
	var err error
	if c.method, err = anchored(r.Method); err != nil {
		return nil, err
	}
	if c.path, err = anchored(r.Path); err != nil {
		return nil, err
	}
	if c.host, err = anchored(r.Host); err != nil {
		return nil, err
	}
	// headers: "Name" (present) or "Name: value" (that value).
	for _, h := range r.Headers {
		name, value, hasValue := strings.Cut(h, ":")
		c.headers = append(c.headers, header{name: http.CanonicalHeaderKey(strings.TrimSpace(name)), value: strings.TrimSpace(value), check: hasValue})
	}
	for _, hm := range r.HeaderMatches {
		c.headers = append(c.headers, header{name: http.CanonicalHeaderKey(hm.Name), value: hm.Value, check: hm.Value != ""})
	}
	return &c, nil
}

// Matches reports whether the request satisfies every part of the rule.
func (c *Rule) Matches(r *http.Request) bool {
	if c.method != nil && !c.method.MatchString(r.Method) {
		return false
	}
	if c.path != nil && !c.path.MatchString(r.URL.Path) {
		return false
	}
	if c.host != nil && !c.host.MatchString(r.Host) {
		return false
	}
	for _, h := range c.headers {
		vals, ok := r.Header[h.name]
		if !ok {
			return false
		}
		if h.check && !contains(vals, h.value) {
			return false
		}
	}
	return true
}

func contains(vals []string, v string) bool {
	for _, x := range vals {
		if x == v {
			return true
		}
	}
	return false
}

func ruleKey(r cnp.HTTPRule) string {
	var b strings.Builder
	b.WriteString(r.Method + "\x00" + r.Path + "\x00" + r.Host)
	for _, h := range r.Headers {
		b.WriteString("\x00h" + h)
	}
	for _, h := range r.HeaderMatches {
		b.WriteString("\x00m" + h.Name + "=" + h.Value)
	}
	return b.String()
}

// matcher compiles rules once and keeps them: the same rules serve every
// request of every connection.
type matcher struct {
	rules sync.Map // ruleKey -> *Rule
}

// Decision is the verdict on one request.
type Decision struct {
	Allowed bool
	// Dir is the side whose rules decided: the one that denied, else
	// egress when the source's egress rules applied, else ingress.
	Dir policy.Direction
	// Cookie names the rule set that allowed the request (of Dir's side),
	// or the first one of the side that denied it; 0 when no rule covered
	// the connection.
	Cookie uint32
}

// Decide judges a request on a connection from the identity src to the
// identity dst on port. The datapath hands the proxy a connection when the
// source's egress policy or the destination's ingress policy asks for HTTP
// rules on it; each side with rules for the connection must let the
// request through (the proxy's own connection upstream is not judged
// again), so the rules of both apply. A connection no rule covers gets
// nothing through.
func Decide(res *policy.Result, src, dst uint32, port uint16, r *http.Request) Decision {
	var m matcher
	return m.decide(res, src, dst, port, r)
}

func (m *matcher) decide(res *policy.Result, src, dst uint32, port uint16, r *http.Request) Decision {
	if res == nil {
		return Decision{Dir: policy.Egress}
	}
	eg := res.HTTPRules(src, dst, policy.Egress, port)
	in := res.HTTPRules(dst, src, policy.Ingress, port)
	if len(eg) == 0 && len(in) == 0 {
		return Decision{Dir: policy.Egress}
	}
	d := Decision{Allowed: true, Dir: policy.Ingress}
	if len(eg) > 0 {
		cookie, ok := m.match(eg, r)
		if !ok {
			return Decision{Dir: policy.Egress, Cookie: eg[0].Cookie}
		}
		d = Decision{Allowed: true, Dir: policy.Egress, Cookie: cookie}
	}
	if len(in) > 0 {
		cookie, ok := m.match(in, r)
		if !ok {
			return Decision{Dir: policy.Ingress, Cookie: in[0].Cookie}
		}
		if len(eg) == 0 {
			d.Cookie = cookie
		}
	}
	return d
}

// match returns the cookie of the first rule set with a rule matching r.
// Rules of one set are ORed; a set without rules allows every request.
func (m *matcher) match(sets []policy.HTTPRuleSet, r *http.Request) (uint32, bool) {
	for _, s := range sets {
		if len(s.Rules) == 0 {
			return s.Cookie, true
		}
		for _, rule := range s.Rules {
			k := ruleKey(rule)
			v, ok := m.rules.Load(k)
			if !ok {
				c, err := Compile(rule)
				if err != nil {
					continue // validated when the policy was read; a rule that does not compile allows nothing
				}
				v, _ = m.rules.LoadOrStore(k, c)
			}
			if v.(*Rule).Matches(r) {
				return s.Cookie, true
			}
		}
	}
	return 0, false
}
