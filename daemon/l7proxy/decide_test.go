package l7proxy

import (
	"testing"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// TestDecide: each side with HTTP rules for a connection must let a
// request through; the side that denied is the one named.
func TestDecide(t *testing.T) {
	const client, server, other uint32 = 300, 400, 500
	tcp80 := []policy.ProtoPort{{Proto: policy.ProtoTCP, Port: 80}}
	res := &policy.Result{
		HTTP: map[uint32][]policy.HTTPRuleSet{
			// client may GET anything and POST /api on server.
			client: {{Remotes: []uint32{server}, Ports: tcp80, Rules: []cnp.HTTPRule{{Method: "GET"}, {Method: "POST", Path: "/api"}}, Cookie: 1}},
		},
		HTTPIngress: map[uint32][]policy.HTTPRuleSet{
			// server takes GET / and POST /api from client, GET / from anyone.
			server: {
				{Remotes: []uint32{client}, Ports: tcp80, Rules: []cnp.HTTPRule{{Method: "POST", Path: "/api"}}, Cookie: 2},
				{AnyRemote: true, Ports: tcp80, Rules: []cnp.HTTPRule{{Method: "GET", Path: "/"}}, Cookie: 3},
			},
		},
	}
	cases := []struct {
		name     string
		src, dst uint32
		port     uint16
		method   string
		path     string
		want     Decision
	}{
		{"both sides allow", client, server, 80, "POST", "/api", Decision{Allowed: true, Dir: policy.Egress, Cookie: 1}},
		{"egress allows, ingress denies", client, server, 80, "GET", "/admin", Decision{Dir: policy.Ingress, Cookie: 2}},
		{"egress denies first", client, server, 80, "DELETE", "/", Decision{Dir: policy.Egress, Cookie: 1}},
		{"ingress only allows", other, server, 80, "GET", "/", Decision{Allowed: true, Dir: policy.Ingress, Cookie: 3}},
		{"ingress only denies", other, server, 80, "POST", "/api", Decision{Dir: policy.Ingress, Cookie: 3}},
		{"no rule for the port", other, server, 81, "GET", "/", Decision{Dir: policy.Egress}},
		{"no rule for the peers", server, client, 80, "GET", "/", Decision{Dir: policy.Egress}},
	}
	for _, tc := range cases {
		got := Decide(res, tc.src, tc.dst, tc.port, req(tc.method, tc.path, "x", nil))
		if got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	if got := Decide(nil, client, server, 80, req("GET", "/", "x", nil)); got.Allowed {
		t.Errorf("no policy: %+v, want denied", got)
	}
}
