package l7proxy

import (
	"regexp"
	"testing"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// req is the rules' view of a request, as the proxy's parser makes it.
func req(method, target, host string, headers map[string]string) *Request {
	raw := method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n"
	for k, v := range headers {
		raw += k + ": " + v + "\r\n"
	}
	var h requestHead
	if err := parseRequestHead([]byte(raw+"\r\n"), &h); err != nil {
		panic(err)
	}
	return &h.view
}

func TestRuleMatches(t *testing.T) {
	cases := []struct {
		rule cnp.HTTPRule
		r    *Request
		want bool
	}{
		{cnp.HTTPRule{Method: "GET", Path: "/"}, req("GET", "/", "x", nil), true},
		{cnp.HTTPRule{Method: "GET", Path: "/"}, req("POST", "/", "x", nil), false},
		{cnp.HTTPRule{Method: "GET", Path: "/"}, req("GET", "/admin", "x", nil), false},
		// Whole-value match: "GET" does not match "GETX", "/" not "/a".
		{cnp.HTTPRule{Method: "GET"}, req("GETX", "/", "x", nil), false},
		{cnp.HTTPRule{Method: "GET|HEAD"}, req("HEAD", "/", "x", nil), true},
		{cnp.HTTPRule{Path: "/api/v[0-9]+/.*"}, req("GET", "/api/v2/items", "x", nil), true},
		{cnp.HTTPRule{Path: "/api/v[0-9]+/.*"}, req("GET", "/x/api/v2/items", "x", nil), false},
		// The path is matched without the query.
		{cnp.HTTPRule{Path: "/search"}, req("GET", "/search?q=1", "x", nil), true},
		{cnp.HTTPRule{Host: `.*\.example\.com`}, req("GET", "/", "www.example.com", nil), true},
		{cnp.HTTPRule{Host: `.*\.example\.com`}, req("GET", "/", "example.org", nil), false},
		{cnp.HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "x", map[string]string{"x-token": "a"}), true},
		{cnp.HTTPRule{Headers: []string{"X-Token"}}, req("GET", "/", "x", nil), false},
		{cnp.HTTPRule{Headers: []string{"X-Env: prod"}}, req("GET", "/", "x", map[string]string{"X-Env": "prod"}), true},
		{cnp.HTTPRule{Headers: []string{"X-Env: prod"}}, req("GET", "/", "x", map[string]string{"X-Env": "dev"}), false},
		{cnp.HTTPRule{HeaderMatches: []cnp.HeaderMatch{{Name: "x-env", Value: "prod"}}}, req("GET", "/", "x", map[string]string{"X-Env": "prod"}), true},
		{cnp.HTTPRule{HeaderMatches: []cnp.HeaderMatch{{Name: "x-env", Value: "prod"}}}, req("GET", "/", "x", map[string]string{"X-Env": "qa"}), false},
		{cnp.HTTPRule{}, req("DELETE", "/anything", "x", nil), true},
		// The path is matched decoded, as net/http's URL.Path.
		{cnp.HTTPRule{Path: "/a/b"}, req("GET", "/a%2Fb", "x", nil), true},
		// Names match whatever their case; Host is the host, not a field.
		{cnp.HTTPRule{Headers: []string{"x-token"}}, req("GET", "/", "x", map[string]string{"X-TOKEN": "a"}), true},
		{cnp.HTTPRule{Headers: []string{"Host"}}, req("GET", "/", "x", nil), false},
		// A repeated field is judged by all its values joined by commas,
		// as Envoy judges it: one copy matching is not enough.
		{cnp.HTTPRule{Headers: []string{"X-Env: prod"}}, &Request{Method: "GET", Path: "/", Header: []Field{
			{Name: []byte("X-Env"), Value: []byte("dev")}, {Name: []byte("x-env"), Value: []byte("prod")}}}, false},
		{cnp.HTTPRule{Headers: []string{"X-Env: prod"}}, &Request{Method: "GET", Path: "/", Header: []Field{
			{Name: []byte("X-Env"), Value: []byte("prod")}, {Name: []byte("x-env"), Value: []byte("prod")}}}, false},
		{cnp.HTTPRule{Headers: []string{"X-Env: dev,prod"}}, &Request{Method: "GET", Path: "/", Header: []Field{
			{Name: []byte("X-Env"), Value: []byte("dev")}, {Name: []byte("x-env"), Value: []byte("prod")}}}, true},
		{cnp.HTTPRule{HeaderMatches: []cnp.HeaderMatch{{Name: "x-env", Value: "prod"}}}, &Request{Method: "GET", Path: "/", Header: []Field{
			{Name: []byte("X-Env"), Value: []byte("prod")}, {Name: []byte("X-Other"), Value: []byte("1")}, {Name: []byte("X-ENV"), Value: []byte("dev")}}}, false},
		// Presence is presence, however many copies.
		{cnp.HTTPRule{Headers: []string{"X-Env"}}, &Request{Method: "GET", Path: "/", Header: []Field{
			{Name: []byte("X-Env"), Value: []byte("dev")}, {Name: []byte("x-env"), Value: []byte("prod")}}}, true},
		// A rule's non-ASCII name folds to no token.
		{cnp.HTTPRule{Headers: []string{"\u212aey"}}, req("GET", "/", "x", map[string]string{"Key": "a"}), false},
	}
	for _, c := range cases {
		r, err := Compile(c.rule)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Matches(c.r); got != c.want {
			t.Errorf("%+v matches %s %s (host %s, %q): %v, want %v", c.rule, c.r.Method, c.r.Path, c.r.Host, c.r.Header, got, c.want)
		}
	}
}

func FuzzRule(f *testing.F) {
	f.Add("GET", "/", "", "X-A: b", "GET", "/", "h", "X-A", "b")
	f.Add("(", "[", "*", "", "POST", "/x", "", "", "")
	f.Add("G.T", "/a|/b", "(?i)host", "", "GET", "/b", "HOST", "", "")
	f.Add("GET", "/a\\.b", "x$", "", "GET\n", "/a.b", "x", "", "")
	f.Fuzz(func(t *testing.T, method, path, host, header, rm, rp, rh, hk, hv string) {
		rule, err := Compile(cnp.HTTPRule{Method: method, Path: path, Host: host, Headers: []string{header}})
		if err != nil {
			return
		}
		r := &Request{Method: rm, Path: rp, Host: rh}
		if hk != "" {
			r.Header = []Field{{Name: []byte(hk), Value: []byte(hv)}}
		}
		// Each part matches as its anchored expression does, literal or
		// not.
		for _, part := range []struct {
			expr, value string
			p           *pattern
		}{{method, rm, rule.method}, {path, rp, rule.path}, {host, rh, rule.host}} {
			if part.expr == "" {
				if part.p != nil {
					t.Fatalf("empty expression compiled to %+v", part.p)
				}
				continue
			}
			want := regexp.MustCompile("^(?:" + part.expr + ")$").MatchString(part.value)
			if got := part.p.match(part.value); got != want {
				t.Fatalf("%q against %q: %v, the expression says %v (plain %v)", part.expr, part.value, got, want, part.p.plain)
			}
		}
		// An empty rule part never decides against a request.
		empty, _ := Compile(cnp.HTTPRule{})
		if !empty.Matches(r) {
			t.Fatal("the empty rule refused a request")
		}
	})
}
