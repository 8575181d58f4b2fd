package l7proxy

import (
	"fmt"
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
	if c.method != nil && !c.method.MatchString(r.Method) {
		return false
	}
	if c.path != nil && !c.path.MatchString(r.Path) {
		return false
	}
	if c.host != nil && !c.host.MatchString(r.Host) {
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
func Decide(res *policy.Result, src, dst uint32, port uint16, r *Request) Decision {
	var m matcher
	return m.decide(res, src, dst, port, r)
}

func (m *matcher) decide(res *policy.Result, src, dst uint32, port uint16, r *Request) Decision {
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
func (m *matcher) match(sets []policy.HTTPRuleSet, r *Request) (uint32, bool) {
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
