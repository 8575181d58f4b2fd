package fqdn

import "testing"

func TestSelectors(t *testing.T) {
	cases := []struct {
		name, pattern, query string
		want                 bool
	}{
		{name: "www.microsoft.com", query: "www.microsoft.com", want: true},
		{name: "www.microsoft.com", query: "WWW.Microsoft.COM.", want: true},
		{name: "www.microsoft.com.", query: "www.microsoft.com", want: true},
		{name: "www.microsoft.com", query: "microsoft.com", want: false},
		{name: "api.github.com", query: "api.github.com.evil.org", want: false},
		{pattern: "*", query: "anything.at.all", want: true},
		{pattern: "*", query: "com", want: true},
		{pattern: "*.microsoft.com", query: "www.microsoft.com", want: true},
		{pattern: "*.microsoft.com", query: "learn.microsoft.com.", want: true},
		{pattern: "*.microsoft.com", query: "microsoft.com", want: false},
		{pattern: "*.microsoft.com", query: "a.b.microsoft.com", want: false},
		{pattern: "*.microsoft.com", query: "www.microsoft.com.evil.org", want: false},
		{pattern: "*.microsoft.com", query: "wwwXmicrosoft.com", want: false},
		{pattern: "*.microsoft.com.pets.svc.cluster.local", query: "www.microsoft.com.pets.svc.cluster.local", want: true},
		{pattern: "*.microsoft.com.*.*.internal.cloudapp.net", query: "www.microsoft.com.abc.xyz.internal.cloudapp.net", want: true},
		{pattern: "*.microsoft.com.*.*.internal.cloudapp.net", query: "www.microsoft.com.abc.internal.cloudapp.net", want: false},
		{pattern: "rabbitmq.pets.svc.cluster.local", query: "rabbitmq.pets.svc.cluster.local", want: true},
		{pattern: "rabbitmq.pets.svc.cluster.local", query: "rabbitmqx.pets.svc.cluster.local", want: false},
		{pattern: "api-*.example.com", query: "api-eu.example.com", want: true},
		{pattern: "api-*.example.com", query: "api.example.com", want: false},
		{pattern: "**.cilium.io", query: "sub.cilium.io", want: true},
		{pattern: "**.cilium.io", query: "a.b.c.cilium.io", want: true},
		{pattern: "**.cilium.io", query: "cilium.io", want: false},
		{pattern: "*.svc.cluster.local", query: "rabbitmq.pets.svc.cluster.local", want: false},
		{pattern: "*.pets.svc.cluster.local", query: "rabbitmq.pets.svc.cluster.local", want: true},
	}
	for _, c := range cases {
		s, err := Compile(c.name, c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Matches(c.query); got != c.want {
			t.Errorf("%q%q matches %q: %v, want %v", c.name, c.pattern, c.query, got, c.want)
		}
	}
	if _, err := Pattern("a(b).com"); err == nil {
		t.Error("a pattern with ( compiled")
	}
}

func FuzzPattern(f *testing.F) {
	f.Add("*.microsoft.com", "www.microsoft.com")
	f.Add("**.a.b", "x.y.a.b.")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		s, err := Pattern(pattern)
		if err != nil {
			return
		}
		s.Matches(name)
	})
}
