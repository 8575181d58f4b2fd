package l7proxy

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// Rule is a compiled HTTP rule. Method, path and host are RE2 expressions
// matched against the whole value, as Cilium matches them; an empty one
// matches anything.
type Rule struct {
	method, path, host *pattern
	headers            []header
}

// pattern is an anchored expression; one that is a plain literal ("GET",
// "/") compares as a string, which is most rules and much cheaper.
type pattern struct {
	re      *regexp.Regexp
	literal string
	plain   bool
}

func (p *pattern) match(s string) bool {
	if p.plain {
		return s == p.literal
	}
	return p.re.MatchString(s)
}

type header struct {
	name  string
	value string // "" with present: the header must exist
	check bool   // compare the value
}

func anchored(expr string) (*pattern, error) {
	if expr == "" {
		return nil, nil
	}
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, err
	}
	p := &pattern{re: re}
	// The whole expression a literal: a match is the same string.
	if un, err := regexp.Compile(expr); err == nil {
		p.literal, p.plain = un.LiteralPrefix()
	}
	return p, nil
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

// Request is what the rules judge of a request: the proxy fills it from
// the request head it parsed, without building an http.Request.
type Request struct {
	Method string
	// Path is the request target's path, percent-decoded, without the
	// query, as net/url decodes it.
	Path string
	Host string
	// Header holds the header fields in the order received; names match
	// whatever their case, values whole (trimmed of surrounding
	// whitespace, not split at commas), as in an http.Header.
	Header []Field
}

// TraceRequest is the request `aegis policy trace` judges: method and
// path (an origin-form target: "/", an optional query), parsed as the
// proxy parses a request. The host a client would send is not known:
// rules on host do not match it.
func TraceRequest(method, path string) (*Request, error) {
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("path %q does not start with /", path)
	}
	var h requestHead
	if err := parseRequestHead([]byte(method+" "+path+" HTTP/1.1\r\nHost: trace.invalid\r\n\r\n"), &h); err != nil {
		return nil, err
	}
	return &h.view, nil
}

// Field is one header field of a Request. Byte slices, so that the proxy
// can point them into the request head it read.
type Field struct {
	Name, Value []byte
}

// Matches reports whether the request satisfies every part of the rule.
func (c *Rule) Matches(r *Request) bool {
	if c.method != nil && !c.method.match(r.Method) {
		return false
	}
	if c.path != nil && !c.path.match(r.Path) {
		return false
	}
	if c.host != nil && !c.host.match(r.Host) {
		return false
	}
	for _, h := range c.headers {
		if !h.matches(r.Header) {
			return false
		}
	}
	return true
}

// matches reports whether fields have one named h.name and, if h checks
// a value, whether the values of all fields of that name, joined by
// commas in the order received, are h.value. Joined, as Envoy (Cilium's
// proxy) matches them: a rule judging only one copy of a repeated field
// would pass a request whose server acts on another. Names compare ASCII
// case-insensitively, which is what canonicalizing both sides did: a
// request's names are tokens.
func (h header) matches(fields []Field) bool {
	var joined []byte
	found := false
	for _, f := range fields {
		if !asciiEqualFold(f.Name, h.name) {
			continue
		}
		if !h.check {
			return true
		}
		if found {
			// A repeated field: copy, rather than point into the head.
			joined = append(append(append([]byte(nil), joined...), ','), f.Value...)
		} else {
			joined = f.Value
		}
		found = true
	}
	return found && string(joined) == h.value
}

// asciiEqualFold compares b and s ignoring ASCII case only (bytes.EqualFold
// would also fold Unicode, letting a rule's non-ASCII name match).
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// matcher compiles rules once per version of the policy and keeps them:
// the same rules serve every request of every connection. A version's
// rules never change, so a rule's address in it names it.
type matcher struct {
	cache atomic.Pointer[ruleCache]
}

type ruleCache struct {
	res   *policy.Result
	rules sync.Map // *cnp.HTTPRule (in res) -> *Rule, or nil when it does not compile
}

// compiled returns the cache of res, a new one when res is a new version.
func (m *matcher) compiled(res *policy.Result) *ruleCache {
	if c := m.cache.Load(); c != nil && c.res == res {
		return c
	}
	c := &ruleCache{res: res}
	m.cache.Store(c)
	return c
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
func Decide(res *policy.Result, src, dst uint32, port uint16, r *Request) Decision {
	var m matcher
	return m.decide(res, src, dst, port, r)
}

func (m *matcher) decide(res *policy.Result, src, dst uint32, port uint16, r *Request) Decision {
	if res == nil {
		return Decision{Dir: policy.Egress}
	}
	c := m.compiled(res)
	egCookie, egCovered, egOK := c.match(res.HTTPSets(src, policy.Egress), dst, port, r)
	if egCovered && !egOK {
		return Decision{Dir: policy.Egress, Cookie: egCookie}
	}
	inCookie, inCovered, inOK := c.match(res.HTTPSets(dst, policy.Ingress), src, port, r)
	switch {
	case inCovered && !inOK:
		return Decision{Dir: policy.Ingress, Cookie: inCookie}
	case egCovered:
		return Decision{Allowed: true, Dir: policy.Egress, Cookie: egCookie}
	case inCovered:
		return Decision{Allowed: true, Dir: policy.Ingress, Cookie: inCookie}
	}
	return Decision{Dir: policy.Egress}
}

// match judges r by the sets of one side that apply to the connection with
// remote on port: covered says whether any does; the cookie is that of the
// first set with a rule matching r (ok), else of the first set that
// applies. Rules of one set are ORed; a set without rules allows every
// request.
func (c *ruleCache) match(sets []policy.HTTPRuleSet, remote uint32, port uint16, r *Request) (cookie uint32, covered, ok bool) {
	for i := range sets {
		s := &sets[i]
		if !s.Applies(remote, port) {
			continue
		}
		if !covered {
			cookie, covered = s.Cookie, true
		}
		if len(s.Rules) == 0 {
			return s.Cookie, true, true
		}
		for j := range s.Rules {
			if rule := c.rule(&s.Rules[j]); rule != nil && rule.Matches(r) {
				return s.Cookie, true, true
			}
		}
	}
	return cookie, covered, false
}

// rule compiles a rule of the version on first use. One that does not
// compile (validated when the policy was read) allows nothing.
func (c *ruleCache) rule(r *cnp.HTTPRule) *Rule {
	if v, ok := c.rules.Load(r); ok {
		return v.(*Rule)
	}
	compiled, err := Compile(*r)
	if err != nil {
		compiled = nil
	}
	v, _ := c.rules.LoadOrStore(r, compiled)
	return v.(*Rule)
}
