package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aegis-cni/aegis/e2e/netns"
	"github.com/aegis-cni/aegis/e2e/node"
)

// serveHTTP runs an HTTP server inside ns on addr until the test ends.
func serveHTTP(t *testing.T, ns *netns.NS, addr, name string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Reset") != "" {
			// The server resets the connection instead of answering.
			c, _, _ := w.(http.Hijacker).Hijack()
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			return
		}
		if r.Header.Get("Upgrade") == "aegis-echo" {
			// A protocol upgrade (as WebSocket's): after 101 the
			// connection carries raw bytes, echoed back.
			c, rw, _ := w.(http.Hijacker).Hijack()
			defer c.Close()
			rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: aegis-echo\r\nConnection: Upgrade\r\n\r\n")
			rw.Flush()
			io.Copy(c, rw)
			return
		}
		if r.Header.Get("X-Stream") != "" {
			// A streamed answer of unknown length: each part must reach
			// the client before the next is written.
			for i := range 3 {
				fmt.Fprintf(w, "part %d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(200 * time.Millisecond)
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		// The peer's address, as the server sees it: the client's own
		// when the proxy connects from it.
		fmt.Fprintf(w, "%s: %s %s host=%s body=%d from=%s", name, r.Method, r.URL.Path, r.Host, len(body), r.RemoteAddr)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// newL7Node is a node with the pet store's store-front, order-service and
// product-service, which serves HTTP on 3002; setup runs on the node
// before its daemon starts.
func newL7Node(t *testing.T, setup func(*node.Node)) (n *node.Node, sf, ps, orders *node.Pod) {
	n = node.New(t, node.Options{})
	if setup != nil {
		setup(n)
	}
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("pets", nil))
	var manifests []string
	for _, name := range []string{"store-front", "product-service", "order-service"} {
		manifests = append(manifests, node.PodManifest("pets", name, petStoreLabels(name)))
	}
	n.Apply("01-pods.yaml", strings.Join(manifests, "---\n"))
	n.StartDaemon()
	sf = n.NewPod("pets", "store-front", nil)
	ps = n.NewPod("pets", "product-service", nil)
	orders = n.NewPod("pets", "order-service", nil)
	serveHTTP(t, ps.NS, ps.Addr(3002), "product-service")
	return n, sf, ps, orders
}

// podClient is an HTTP client whose connections start inside ns, one at a
// time (so keep-alive reuse is observable).
func podClient(ns *netns.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial("tcp", addr, 2*time.Second)
		},
		MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1,
	}}
}

// TestL7HTTP: the last rule of the workshop's combined policy, GET / to
// product-service:3002, through the HTTP proxy.
func TestL7HTTP(t *testing.T) {
	n := node.New(t, node.Options{})
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("pets", nil)+"---\n"+node.NamespaceManifest("kube-system", nil))
	var manifests []string
	for name, ns := range petStorePods {
		manifests = append(manifests, node.PodManifest(ns, name, petStoreLabels(name)))
	}
	n.Apply("01-pods.yaml", strings.Join(manifests, "---\n"))
	n.StartDaemon()
	sf := n.NewPod("pets", "store-front", nil)
	ps := n.NewPod("pets", "product-service", nil)
	serveHTTP(t, ps.NS, ps.Addr(3002), "product-service")
	ps.NS.Serve(t, "tcp", ps.Addr(3003), "other:")
	base := "http://" + ps.Addr(3002)
	c := podClient(sf.NS)
	get := func(method, path string, body io.Reader) (int, string, error) {
		req, _ := http.NewRequest(method, base+path, body)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, _, err := get("POST", "/", nil); err != nil || code != 200 {
		t.Fatalf("before policy: POST / %d %v", code, err)
	}

	dirSource{n}.apply(t, workshopObjects(t, "aks-combined-fqdn-l7.yaml"))
	say := narrator{t}
	say.say("\n== L7: $ kubectl apply -n pets -f aks-combined-fqdn-l7.yaml: store-front may only GET / on product-service:3002")
	// A connection opened before the policy is judged again: it now goes
	// to the proxy too. Start clean anyway.
	c.CloseIdleConnections()

	code, body, err := get("GET", "/", nil)
	if err != nil || code != 200 || !strings.Contains(body, "product-service: GET / host="+ps.Addr(3002)) || !strings.Contains(body, " from="+sf.IP.String()+":") {
		t.Errorf("GET /: %d %q %v, want product-service's answer to store-front's address", code, body, err)
	}
	say.say("  [ok ] store-front %-6s %-9s -> %d", "GET", "/", code)
	for _, tc := range []struct{ method, path string }{{"POST", "/"}, {"GET", "/admin"}, {"DELETE", "/"}} {
		code, body, err := get(tc.method, tc.path, nil)
		if err != nil || code != 403 || strings.TrimSpace(body) != "Access denied" {
			t.Errorf("%s %s: %d %q %v, want 403 Access denied", tc.method, tc.path, code, body, err)
		}
		say.say("  [ok ] store-front %-6s %-9s -> %d %s", tc.method, tc.path, code, strings.TrimSpace(body))
	}
	// Keep-alive: allowed and denied requests mixed on one connection
	// behave per request.
	var conns []string
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn.LocalAddr().String()) }}
	for i, want := range []int{200, 403, 200, 403, 200} {
		path := "/"
		if want == 403 {
			path = "/admin"
		}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("request %d on the kept-alive connection: %d, want %d", i, resp.StatusCode, want)
		}
	}
	for _, conn := range conns[1:] {
		if conn != conns[0] {
			t.Errorf("requests did not share one connection: %v", conns)
			break
		}
	}
	// Other ports of product-service stay under L3/L4: no rule, no access.
	if err := sf.NS.Probe("tcp", ps.Addr(3003), 500*time.Millisecond); err == nil {
		t.Error("product-service:3003 connected; only 3002 is allowed")
	}
	// A large body streams through (GET with a body is still GET /).
	big := strings.Repeat("x", 8<<20)
	if code, body, err := get("GET", "/", strings.NewReader(big)); err != nil || code != 200 || !strings.Contains(body, fmt.Sprintf("body=%d", len(big))) {
		t.Errorf("GET / with an 8 MiB body: %d %q %v", code, body[:min(len(body), 80)], err)
	}

	// A chunked request body passes whole.
	chunked, _ := http.NewRequest("GET", base+"/", io.MultiReader(strings.NewReader("abc"), strings.NewReader("defgh")))
	chunked.ContentLength = -1 // unknown length: sent chunked
	if resp, err := c.Do(chunked); err != nil || resp.StatusCode != 200 {
		t.Errorf("GET / with a chunked body: %v %v", resp, err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "body=8") || len(resp.TransferEncoding) != 0 && resp.TransferEncoding[0] != "chunked" {
			t.Errorf("GET / with a chunked body: %q", b)
		}
	}
	// An upgrade on an allowed request passes through, and the connection
	// then carries raw bytes both ways; on a denied one it is 403.
	upgrade := func(path string) (string, string) {
		conn, err := sf.NS.Dial("tcp", ps.Addr(3002), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: product-service\r\nConnection: Upgrade\r\nUpgrade: aegis-echo\r\n\r\n", path)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err.Error()
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(resp.Body)
			return resp.Status, strings.TrimSpace(string(b))
		}
		io.WriteString(conn, "ping through the proxy\n")
		echoed, err := br.ReadString('\n')
		if err != nil {
			return resp.Status, err.Error()
		}
		return resp.Status, echoed
	}
	if status, echoed := upgrade("/"); !strings.HasPrefix(status, "101") || echoed != "ping through the proxy\n" {
		t.Errorf("upgrade on GET /: %q, echoed %q", status, echoed)
	}
	if status, body := upgrade("/admin"); !strings.HasPrefix(status, "403") || body != "Access denied" {
		t.Errorf("upgrade on GET /admin: %q %q, want 403 Access denied", status, body)
	}
	// A streamed answer (unknown length) reaches the client part by part,
	// not at its end.
	streamReq, _ := http.NewRequest("GET", base+"/", nil)
	streamReq.Header.Set("X-Stream", "1")
	start := time.Now()
	if resp, err := c.Do(streamReq); err != nil || resp.StatusCode != 200 {
		t.Errorf("GET / streamed: %v %v", resp, err)
	} else {
		first, err := bufio.NewReader(resp.Body).ReadString('\n')
		firstAt := time.Since(start)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || first != "part 0\n" || firstAt >= 400*time.Millisecond {
			t.Errorf("GET / streamed: first part %q after %v (%v), want it before the rest is written", first, firstAt, err)
		}
	}

	// Bad input.
	raw := func(payload string) string {
		conn, err := sf.NS.Dial("tcp", ps.Addr(3002), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, payload)
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return line
	}
	if line := raw("NONSENSE\r\n\r\n"); !strings.Contains(line, "400") {
		t.Errorf("a malformed request: %q, want 400", line)
	}
	if line := raw("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n"); !strings.Contains(line, "431") {
		t.Errorf("oversized headers: %q, want 431", line)
	}
	// A slow client holding a half-sent request does not hold up others.
	slow, err := sf.NS.Dial("tcp", ps.Addr(3002), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(slow, "GET / HTTP/1.1\r\nHost: x\r\n")
	if code, _, err := get("GET", "/", nil); err != nil || code != 200 {
		t.Errorf("GET / beside a slow client: %d %v", code, err)
	}
	slow.Close()
	// An upstream reset: 502, and the next request is fine.
	req, _ := http.NewRequest("GET", base+"/", nil)
	req.Header.Set("X-Reset", "1")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Errorf("GET / reset by the server: %v %v, want 502", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, _, err := get("GET", "/", nil); err != nil || code != 200 {
		t.Errorf("GET / after a reset: %d %v", code, err)
	}

	checkHTTPFlows(t, n)
	// policy trace takes the request.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--http-method", "GET", "--http-path", "/"}, "FORWARDED"},
		{[]string{"--http-method", "POST", "--http-path", "/"}, "403 Access denied"},
		{[]string{"--http-path", "/admin"}, "403 Access denied"},
	} {
		out, err := n.CLI(append([]string{"policy", "trace", "--src", "pets/store-front", "--dst", "pets/product-service", "--port", "3002"}, tc.args...)...)
		if err != nil || !strings.Contains(out, tc.want) {
			t.Errorf("aegis policy trace %v: %v, want %q in\n%s", tc.args, err, tc.want, out)
		}
	}
	// aegis observe's HTTP filters, as hubble observe's.
	out, err := n.CLI("observe", "--type", "l7", "--http-method", "POST", "--http-status", "4+", "--last", "50")
	if err != nil || !strings.Contains(out, "http-response") || !strings.Contains(out, "403") || strings.Contains(out, " GET ") {
		t.Errorf("aegis observe --http-method POST --http-status 4+: %v\n%s", err, out)
	}
	out, err = n.CLI("observe", "--http-path", "^/admin$", "--last", "50")
	if err != nil || !strings.Contains(out, "/admin") || strings.Contains(out, "POST") {
		t.Errorf("aegis observe --http-path ^/admin$: %v\n%s", err, out)
	}
	if out, err := n.CLI("observe", "--type", "l7", "--http-status", "4+", "--last", "3"); err != nil {
		t.Errorf("aegis observe --type l7 --http-status 4+: %v\n%s", err, out)
	} else {
		say.say("\n$ aegis observe --type l7 --http-status 4+ --last 3\n%s", strings.TrimRight(out, "\n"))
	}
	metrics := scrapeMetrics(t, n)
	for _, want := range []string{
		`hubble_http_requests_total{destination_namespace="pets",destination_pod="product-service",method="GET",protocol="HTTP/1.1",reporter="client",source_namespace="pets",source_pod="store-front",status="200"}`,
		`hubble_http_requests_total{destination_namespace="pets",destination_pod="product-service",method="POST",protocol="HTTP/1.1",reporter="client",source_namespace="pets",source_pod="store-front",status="403"}`,
		`hubble_http_request_duration_seconds_bucket{`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func checkHTTPFlows(t *testing.T, n *node.Node) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	var allowed, denied bool
	for time.Now().Before(deadline) && !(allowed && denied) {
		out, err := n.CLI("observe", "-o", "json", "--last", "1000", "--to-pod", "pets/product-service")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out)
		}
		out2, err := n.CLI("observe", "-o", "json", "--last", "1000", "--from-pod", "pets/product-service")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out2)
		}
		for _, line := range strings.Split(out+"\n"+out2, "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var f flow.Flow
			if err := protojson.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
			h := f.GetL7().GetHttp()
			if h == nil {
				continue
			}
			if f.GetL7().GetType() == flow.L7FlowType_RESPONSE && h.GetCode() == 200 && h.GetMethod() == "GET" && strings.HasSuffix(h.GetUrl(), "/") &&
				len(f.GetEgressAllowedBy()) > 0 && f.GetEgressAllowedBy()[0].GetName() == "combined-fqdn-l7-policy" {
				allowed = true
			}
			if f.GetVerdict() == flow.Verdict_DROPPED && h.GetMethod() == "POST" && len(f.GetEgressDeniedBy()) > 0 {
				denied = true
			}
		}
		if !(allowed && denied) {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !allowed {
		t.Error("no HTTP RESPONSE flow GET / 200 naming combined-fqdn-l7-policy")
	}
	if !denied {
		t.Error("no DROPPED HTTP flow for POST /")
	}
}

const productServiceHTTP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: product-service-http, namespace: pets}
spec:
  endpointSelector: {matchLabels: {app: product-service}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: store-front}}]
    toPorts: [{ports: [{port: "3002", protocol: TCP}], rules: {http: [{method: GET, path: "/"}]}}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "3002", protocol: TCP}], rules: {http: [{method: GET, path: "/"}]}}]
`

// TestL7HTTPIngress: ingress HTTP rules of the destination's policy, for
// pods and for an outside host: the datapath bounces the connections into
// the proxy at the destination's veth; peers the rule does not name stay
// dropped at L3/L4.
func TestL7HTTPIngress(t *testing.T) {
	var out *node.Outside
	n, sf, ps, orders := newL7Node(t, func(n *node.Node) {
		out = n.AddOutside(t, "192.0.2.10")
		// A strict reverse path filter, as many distributions set it: the
		// bounce into the proxy must work with it (aegisd makes conf/all
		// loose, aegis-cni turns it off on host veths).
		n.NS.MustExec(t, "sysctl", "-w", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1")
	})
	n.Apply("10-cnp.yaml", productServiceHTTP)

	base := "http://" + ps.Addr(3002)
	do := func(c *http.Client, method, path string, trace *httptrace.ClientTrace) (int, string, error) {
		ctx := context.Background()
		if trace != nil {
			ctx = httptrace.WithClientTrace(ctx, trace)
		}
		req, _ := http.NewRequestWithContext(ctx, method, base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, from := range []struct {
		name  string
		ns    *netns.NS
		ip    string
		cases []struct {
			method, path string
			code         int
		}
	}{
		{"store-front", sf.NS, sf.IP.String(), []struct {
			method, path string
			code         int
		}{{"GET", "/", 200}, {"POST", "/", 403}, {"GET", "/admin", 403}, {"GET", "/", 200}}},
		{"outside 192.0.2.10", out.NS, out.Addrs[0], []struct {
			method, path string
			code         int
		}{{"GET", "/", 200}, {"POST", "/", 403}, {"GET", "/", 200}}},
	} {
		c := podClient(from.ns)
		var conns []string
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn.LocalAddr().String()) }}
		for _, tc := range from.cases {
			code, body, err := do(c, tc.method, tc.path, trace)
			switch {
			case err != nil:
				t.Errorf("from %s: %s %s: %v", from.name, tc.method, tc.path, err)
			case code != tc.code:
				t.Errorf("from %s: %s %s: %d %q, want %d", from.name, tc.method, tc.path, code, body, tc.code)
			case code == 200 && !strings.HasPrefix(body, "product-service: GET / host="+ps.Addr(3002)):
				t.Errorf("from %s: GET /: %q, not product-service's answer", from.name, body)
			case code == 200 && !strings.HasSuffix(body, " from="+conns[len(conns)-1]):
				// The proxy connects from the client's address and port.
				t.Errorf("from %s: GET / reached the server as %q, want from=%s", from.name, body, conns[len(conns)-1])
			case code == 403 && strings.TrimSpace(body) != "Access denied":
				t.Errorf("from %s: %s %s: %q, want Access denied", from.name, tc.method, tc.path, body)
			}
		}
		// Allowed and denied requests are judged one by one on one
		// kept-alive connection.
		if len(conns) != len(from.cases) {
			t.Errorf("from %s: %d connections reported for %d requests", from.name, len(conns), len(from.cases))
		}
		for _, conn := range conns {
			if conn != conns[0] {
				t.Errorf("from %s: requests did not share one connection: %v", from.name, conns)
				break
			}
		}
		c.CloseIdleConnections()
	}
	// A pod the rule does not name: no rule allows it at L3/L4, so its
	// connection is dropped before any HTTP is spoken.
	if err := orders.NS.Probe("tcp", ps.Addr(3002), 500*time.Millisecond); err == nil {
		t.Error("order-service connected to product-service:3002; only store-front and world may")
	}
	// The node's own connections pass, as under every ingress policy.
	if code, _, err := do(podClient(n.NS), "POST", "/", nil); err != nil || code != 200 {
		t.Errorf("from the node: POST /: %d %v, want 200 (not through the proxy)", code, err)
	}
	checkIngressHTTPFlows(t, n, sf.IP.String(), out.Addrs[0])
}

// checkIngressHTTPFlows: the proxy's flows for ingress rules say INGRESS,
// name the policy, and carry method, URL and status.
func checkIngressHTTPFlows(t *testing.T, n *node.Node, podSrc, outSrc string) {
	t.Helper()
	type seen struct{ allowed, denied bool }
	got := map[string]*seen{podSrc: {}, outSrc: {}}
	done := func() bool {
		for _, s := range got {
			if !s.allowed || !s.denied {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(3 * time.Second)
	var lines []string
	for time.Now().Before(deadline) && !done() {
		out, err := n.CLI("observe", "-o", "json", "--last", "1000", "--type", "l7")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out)
		}
		lines = strings.Split(out, "\n")
		for _, line := range lines {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var f flow.Flow
			if err := protojson.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
			h := f.GetL7().GetHttp()
			if h == nil || f.GetTrafficDirection() != flow.TrafficDirection_INGRESS {
				continue
			}
			client := f.GetIP().GetSource()
			if f.GetL7().GetType() == flow.L7FlowType_RESPONSE {
				client = f.GetIP().GetDestination()
			}
			s := got[client]
			if s == nil {
				continue
			}
			named := func(ps []*flow.Policy) bool { return len(ps) > 0 && ps[0].GetName() == "product-service-http" }
			if f.GetL7().GetType() == flow.L7FlowType_RESPONSE && f.GetVerdict() == flow.Verdict_FORWARDED && h.GetCode() == 200 &&
				h.GetMethod() == "GET" && strings.HasSuffix(h.GetUrl(), ":3002/") && f.GetL7().GetLatencyNs() > 0 && named(f.GetIngressAllowedBy()) {
				s.allowed = true
			}
			if f.GetL7().GetType() == flow.L7FlowType_REQUEST && f.GetVerdict() == flow.Verdict_DROPPED && h.GetMethod() == "POST" &&
				h.GetProtocol() == "HTTP/1.1" && named(f.GetIngressDeniedBy()) && f.GetDestination().GetPodName() == "product-service" {
				s.denied = true
			}
		}
		if !done() {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for client, s := range got {
		if !s.allowed {
			t.Errorf("no INGRESS HTTP RESPONSE flow GET / 200 from %s naming product-service-http", client)
		}
		if !s.denied {
			t.Errorf("no INGRESS DROPPED HTTP flow POST / from %s naming product-service-http", client)
		}
	}
	if t.Failed() {
		t.Logf("flows:\n%s", strings.Join(lines, "\n"))
	}
}

const storeFrontHTTPEgress = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: store-front-http, namespace: pets}
spec:
  endpointSelector: {matchLabels: {app: store-front}}
  egress:
  - toEndpoints: [{matchLabels: {app: product-service}}]
    toPorts: [{ports: [{port: "3002", protocol: TCP}], rules: {http: [{method: GET, path: "/"}]}}]
`

// productServiceIngress lets the named apps into product-service:3002.
func productServiceIngress(apps ...string) string {
	return `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: product-service-ingress, namespace: pets}
spec:
  podSelector: {matchLabels: {app: product-service}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [` + strings.Join(apps, ", ") + `]}]}}]
    ports: [{port: 3002, protocol: TCP}]
`
}

// TestL7HTTPUpstreamPolicy: the HTTP proxy connects to the server from the
// client's own address and port, so the server's L3/L4 ingress policy
// still judges the client. store-front's egress HTTP rule lets GET / out,
// but product-service takes only order-service: the proxy's connection is
// dropped at product-service (as Cilium drops its proxy's upstream SYN)
// and store-front gets 503, not 403 (no HTTP rule denied it). Once
// product-service lets store-front in, the server sees store-front's own
// address and port.
func TestL7HTTPUpstreamPolicy(t *testing.T) {
	n, sf, ps, orders := newL7Node(t, nil)
	n.Apply("10-store-front.yaml", storeFrontHTTPEgress)
	n.Apply("11-product-service.yaml", productServiceIngress("order-service"))

	base := "http://" + ps.Addr(3002)
	// do sends one request and returns the client's local address too.
	do := func(c *http.Client, method, path string) (code int, body, local string, err error) {
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { local = i.Conn.LocalAddr().String() }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), method, base+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", local, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), local, nil
	}
	// The proxy waits out its connect timeout (3s) before it answers.
	slow := podClient(sf.NS)
	slow.Timeout = 10 * time.Second
	start := time.Now()
	code, body, _, err := do(slow, "GET", "/")
	if err != nil || code != http.StatusServiceUnavailable || strings.Contains(body, "product-service:") {
		t.Errorf("GET / from store-front, which product-service does not let in: %d %q %v after %v, want 503", code, body, err, time.Since(start).Round(time.Millisecond))
	}
	// A request no HTTP rule allows is still the proxy's 403.
	if code, body, _, err := do(slow, "POST", "/"); err != nil || code != 403 || strings.TrimSpace(body) != "Access denied" {
		t.Errorf("POST / from store-front: %d %q %v, want 403 Access denied", code, body, err)
	}
	checkUpstreamDrop(t, n, sf.IP.String())
	// order-service, which the policy names, gets in directly.
	if code, body, _, err := do(podClient(orders.NS), "GET", "/"); err != nil || code != 200 || !strings.Contains(body, "from="+orders.IP.String()+":") {
		t.Errorf("GET / from order-service: %d %q %v, want 200 from its address", code, body, err)
	}

	n.Apply("11-product-service.yaml", productServiceIngress("order-service", "store-front"))
	c := podClient(sf.NS)
	// Keep-alive: allowed and denied requests mixed on one connection;
	// each allowed one reaches the server from store-front's own address
	// and port, over one upstream connection.
	var conns []string
	for i, tc := range []struct {
		method, path string
		code         int
	}{{"GET", "/", 200}, {"GET", "/admin", 403}, {"GET", "/", 200}, {"POST", "/", 403}, {"GET", "/", 200}} {
		code, body, local, err := do(c, tc.method, tc.path)
		conns = append(conns, local)
		switch {
		case err != nil:
			t.Fatalf("request %d, %s %s: %v", i, tc.method, tc.path, err)
		case code != tc.code:
			t.Errorf("request %d, %s %s: %d %q, want %d", i, tc.method, tc.path, code, body, tc.code)
		case code == 200 && !strings.HasSuffix(body, " from="+local):
			t.Errorf("request %d: GET / reached the server as %q, want from=%s (store-front's own address and port)", i, body, local)
		}
	}
	for _, conn := range conns {
		if conn != conns[0] {
			t.Errorf("requests did not share one connection: %v", conns)
			break
		}
	}
	// A new client connection gets an upstream connection of its own.
	c.CloseIdleConnections()
	if code, body, local, err := do(c, "GET", "/"); err != nil || code != 200 || !strings.HasSuffix(body, " from="+local) || local == conns[0] {
		t.Errorf("GET / on a new connection: %d %q from %s %v, want 200 from=%s (not %s)", code, body, local, err, local, conns[0])
	}
}

// checkUpstreamDrop: the proxy's connection from store-front's address is
// a DROPPED flow at product-service, INGRESS, POLICY_DENIED, with
// store-front as its source and product-service's policy named.
func checkUpstreamDrop(t *testing.T, n *node.Node, src string) {
	t.Helper()
	var lines []string
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		out, err := n.CLI("observe", "-o", "json", "--verdict", "DROPPED", "--to-pod", "pets/product-service", "--last", "100")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out)
		}
		lines = strings.Split(strings.TrimSpace(out), "\n")
		for _, line := range lines {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var f flow.Flow
			if err := protojson.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
			by := f.GetIngressDeniedBy()
			if f.GetL7() == nil && f.GetIP().GetSource() == src && f.GetSource().GetPodName() == "store-front" &&
				f.GetDropReasonDesc() == flow.DropReason_POLICY_DENIED && f.GetTrafficDirection() == flow.TrafficDirection_INGRESS &&
				f.GetL4().GetTCP().GetDestinationPort() == 3002 && len(by) == 1 && by[0].GetName() == "product-service-ingress" {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no DROPPED flow store-front (%s) -> product-service:3002 naming product-service-ingress; flows:\n%s", src, strings.Join(lines, "\n"))
}
