package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"

	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// step is one move of a scripted peer: write send, or read exactly the
// bytes of expect, or (client only) read one response and check its
// status; accept (server only) waits for the proxy's next connection;
// hangUp closes the connection; pause waits.
type step struct {
	send, expect string
	status       int
	accept       bool
	hangUp       bool
	pause        time.Duration
	// quiet (server only): nothing comes for a moment.
	quiet bool
}

func send(s string) step   { return step{send: s} }
func expect(s string) step { return step{expect: s} }
func status(code int) step { return step{status: code} }

// framingCase is a client and a server talking through the proxy, each
// from a script; the server script starts on the proxy's first connection.
// closed says the proxy ends the client connection after the script.
type framingCase struct {
	name           string
	client, server []step
	closed         bool
}

// allowSome lets through requests to paths of lowercase letters (and /):
// /403 is denied.
var allowSome = &policy.Result{HTTP: map[uint32][]policy.HTTPRuleSet{
	0: {{AnyRemote: true, Ports: []policy.ProtoPort{{Proto: policy.ProtoTCP}}, Rules: []cnp.HTTPRule{{Path: "/[a-z]*"}}, Cookie: 1}},
}}

const okResp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

func framingCases() []framingCase {
	get := "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	post := "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
	chunked := "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3;name=value\r\nabc\r\n5\r\ndefgh\r\n0\r\nX-Trailer: t\r\n\r\n"
	return []framingCase{
		{name: "keep-alive, Content-Length", client: []step{send(get), expect(okResp), send(post), expect(okResp)},
			server: []step{expect(get), send(okResp), expect(post), send(okResp)}},
		{name: "chunked request with extensions and trailers, forwarded as sent", client: []step{send(chunked), expect(okResp), send(get), expect(okResp)},
			server: []step{expect(chunked), send(okResp), expect(get), send(okResp)}},
		{name: "pipelined requests, one after another", client: []step{send(get + post + get), expect(okResp + okResp + okResp)},
			server: []step{expect(get), send(okResp), expect(post), send(okResp), expect(get), send(okResp)}},
		{name: "the client's own head, Host and all", client: []step{send("GET /a?b=c HTTP/1.1\r\nHost: elsewhere:81\r\nX-A:  b \r\n\r\n"), expect(okResp)},
			server: []step{expect("GET /a?b=c HTTP/1.1\r\nHost: elsewhere:81\r\nX-A:  b \r\n\r\n"), send(okResp)}},
		{name: "HTTP/1.0 without Host, closed after", client: []step{send("GET / HTTP/1.0\r\n\r\n"), expect("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")}, closed: true,
			server: []step{expect("GET / HTTP/1.0\r\n\r\n"), send("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")}},
		{name: "Connection: close from the client", client: []step{send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), expect(okResp)}, closed: true,
			server: []step{expect("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), send(okResp)}},
		{name: "Connection: close from the server", client: []step{send(get), expect("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")}, closed: true,
			server: []step{expect(get), send("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")}},

		// Responses without a body, whatever they say.
		{name: "HEAD", client: []step{send("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"), expect("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), send(get), expect(okResp)},
			server: []step{expect("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"), send("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), expect(get), send(okResp)}},
		{name: "204", client: []step{send(get), expect("HTTP/1.1 204 No Content\r\n\r\n"), send(get), expect(okResp)},
			server: []step{expect(get), send("HTTP/1.1 204 No Content\r\n\r\n"), expect(get), send(okResp)}},
		{name: "304", client: []step{send(get), expect("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), send(get), expect(okResp)},
			server: []step{expect(get), send("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), expect(get), send(okResp)}},

		{name: "chunked response with trailers", client: []step{send(get), expect("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: 1\r\n\r\n"), send(get), expect(okResp)},
			server: []step{expect(get), send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: 1\r\n\r\n"), expect(get), send(okResp)}},
		{name: "response until the server closes", client: []step{send(get), expect("HTTP/1.1 200 OK\r\n\r\nall of it")}, closed: true,
			server: []step{expect(get), send("HTTP/1.1 200 OK\r\n\r\nall of it"), {hangUp: true}}},
		{name: "Expect: 100-continue", client: []step{
			send("PUT /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"), expect("HTTP/1.1 100 Continue\r\n\r\n"), send("body"), expect(okResp)},
			server: []step{expect("PUT /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"), send("HTTP/1.1 100 Continue\r\n\r\n"), expect("body"), send(okResp)}},
		{name: "1xx before the answer", client: []step{send(get), expect("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + okResp)},
			server: []step{expect(get), send("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"), send(okResp)}},
		{name: "upgrade: raw bytes both ways", client: []step{
			send("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"), expect("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\nhi"), send("GET / not http"), expect("back")},
			server: []step{expect("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"), send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\nhi"), expect("GET / not http"), send("back")}},
		{name: "the server closed its kept-alive connection: the next request dials again", client: []step{send(get), expect(okResp), {pause: 50 * time.Millisecond}, send(post), expect(okResp)},
			server: []step{expect(get), send(okResp), {hangUp: true}, {accept: true}, expect(post), send(okResp)}},

		// Tunnels. A server that answers CONNECT as any request (a framed
		// 2xx) goes on reading requests: so does the proxy, judging them.
		{name: "CONNECT answered with a framed 2xx: no tunnel", client: []step{
			send("CONNECT /a HTTP/1.1\r\nHost: x\r\n\r\n"), expect(okResp), send("GET /403 HTTP/1.1\r\nHost: x\r\n\r\n"), status(403), send(get), expect(okResp)},
			server: []step{expect("CONNECT /a HTTP/1.1\r\nHost: x\r\n\r\n"), send(okResp), expect(get), send(okResp)}},
		{name: "CONNECT answered with 204: no tunnel", client: []step{
			send("CONNECT /a HTTP/1.1\r\nHost: x\r\n\r\n"), expect("HTTP/1.1 204 No Content\r\n\r\n"), send("GET /403 HTTP/1.1\r\nHost: x\r\n\r\n"), status(403)},
			server: []step{expect("CONNECT /a HTTP/1.1\r\nHost: x\r\n\r\n"), send("HTTP/1.1 204 No Content\r\n\r\n")}},
		{name: "CONNECT answered with an unframed 200: a tunnel", client: []step{
			send("CONNECT /a HTTP/1.0\r\n\r\n"), expect("HTTP/1.0 200 Connected\r\n\r\nhi"), send("raw"), expect("back")},
			server: []step{expect("CONNECT /a HTTP/1.0\r\n\r\n"), send("HTTP/1.0 200 Connected\r\n\r\nhi"), expect("raw"), send("back")}},

		// A 101 is a tunnel only for a request that asked for it; an h2c
		// upgrade is not passed on, or the server would take requests in
		// HTTP/2 frames the proxy does not judge (as Envoy drops it).
		{name: "101 to a request without Upgrade: 502", client: []step{send(get), status(502)}, closed: true,
			server: []step{expect(get), send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n")}},
		{name: "h2c upgrade: not passed on", client: []step{
			send("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"), expect(okResp), send(get), expect(okResp)},
			server: []step{expect("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"), send(okResp), expect(get), send(okResp)}},
		{name: "h2c upgrade: a 101 anyway is 502", client: []step{
			send("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket, H2C\r\n\r\n"), status(502)}, closed: true,
			server: []step{expect("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n"), send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")}},

		// Denied.
		{name: "denied, kept alive", client: []step{send("GET /403 HTTP/1.1\r\nHost: x\r\n\r\n"), status(403), send(get), expect(okResp)},
			server: []step{expect(get), send(okResp)}},
		{name: "denied with a body: closed", client: []step{send("POST /403 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"), status(403)}, closed: true},

		// Refused by the proxy, which never calls the server.
		{name: "Content-Length and Transfer-Encoding", client: []step{send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), status(400)}, closed: true},
		{name: "conflicting Content-Length", client: []step{send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), status(400)}, closed: true},
		{name: "Content-Length not a number", client: []step{send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"), status(400)}, closed: true},
		{name: "unknown transfer coding", client: []step{send("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), status(501)}, closed: true},
		{name: "HTTP/1.1 without Host", client: []step{send("GET / HTTP/1.1\r\n\r\n"), status(400)}, closed: true},
		{name: "two Hosts", client: []step{send("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), status(400)}, closed: true},
		{name: "bare LF", client: []step{send("GET / HTTP/1.1\nHost: x\n\n"), status(400)}, closed: true},
		{name: "folded header", client: []step{send("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"), status(400)}, closed: true},
		{name: "space before the colon", client: []step{send("GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n"), status(400)}, closed: true},
		{name: "malformed request line", client: []step{send("NONSENSE\r\n\r\n"), status(400)}, closed: true},
		{name: "HTTP/2.0", client: []step{send("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), status(505)}, closed: true},
		{name: "head too large", client: []step{send("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n"), status(431)}, closed: true},
		{name: "absolute form for another host than Host's", client: []step{send("GET http://a/ HTTP/1.1\r\nHost: x\r\n\r\n"), status(400)}, closed: true},
		{name: "encoded dot segment", client: []step{send("GET /a/%2e%2e/403 HTTP/1.1\r\nHost: x\r\n\r\n"), status(400)}, closed: true},
		{name: "bad escape in the path", client: []step{send("GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n"), status(400)}, closed: true},
	}
}

// badChunks are chunked request bodies the proxy refuses with 400 once
// the server has the head.
var badChunks = []struct{ name, body string }{
	{"size not hex", "zz\r\nabc\r\n0\r\n\r\n"},
	{"no size", ";ext\r\n0\r\n\r\n"},
	{"size too large", "1000000000000000\r\n"},
	{"space before the extension", "3 ;a\r\nabc\r\n0\r\n\r\n"},
	{"size line ended by LF", "3\nabc\r\n0\r\n\r\n"},
	{"data longer than its size", "3\r\nabcd\r\n0\r\n\r\n"},
	{"trailer not a field", "0\r\nnot a field\r\n\r\n"},
}

// scriptedServer runs script on the connections the proxy opens to it and
// reports the first failure on errc; accepts counts the connections.
func scriptedServer(t *testing.T, script []step) (netip.AddrPort, chan error, *int) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	errc := make(chan error, 1)
	var accepts int
	var mu sync.Mutex
	go func() {
		var c net.Conn
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		next := func() error {
			if c != nil {
				c.Close()
			}
			nc, err := ln.Accept()
			if err != nil {
				return err
			}
			mu.Lock()
			accepts++
			mu.Unlock()
			c = nc
			c.SetDeadline(time.Now().Add(3 * time.Second))
			return nil
		}
		if len(script) == 0 {
			if next() == nil {
				errc <- errors.New("the server was called")
			}
			return
		}
		if err := next(); err != nil {
			errc <- err
			return
		}
		for i, s := range script {
			if err := s.run(c, nil, next); err != nil {
				errc <- fmt.Errorf("server step %d: %w", i, err)
				return
			}
		}
		errc <- nil
		// Hold the connection until the test ends.
		io.Copy(io.Discard, c)
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), errc, &accepts
}

func (s step) run(c net.Conn, br *bufio.Reader, accept func() error) error {
	switch {
	case s.pause > 0:
		time.Sleep(s.pause)
	case s.accept:
		return accept()
	case s.hangUp:
		return c.Close()
	case s.quiet:
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		b := make([]byte, 256)
		if n, _ := c.Read(b); n > 0 {
			return fmt.Errorf("the server got %q", b[:n])
		}
	case s.send != "":
		_, err := io.WriteString(c, s.send)
		return err
	case s.expect != "":
		var r io.Reader = c
		if br != nil {
			r = br
		}
		got := make([]byte, len(s.expect))
		n, err := io.ReadFull(r, got)
		if string(got[:n]) != s.expect {
			return fmt.Errorf("read %q (%v), want %q", got[:n], err, s.expect)
		}
		return nil
	case s.status != 0:
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("%d answer's body: %w", resp.StatusCode, err)
		}
		if resp.StatusCode != s.status {
			return fmt.Errorf("status %d (%q), want %d", resp.StatusCode, b, s.status)
		}
	}
	return nil
}

// runClient runs a client script on a connection through p.
func runClient(t *testing.T, c net.Conn, script []step, closed bool) {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	for i, s := range script {
		if err := s.run(c, br, nil); err != nil {
			t.Fatalf("client step %d: %v", i, err)
		}
	}
	// Nothing more comes: the connection ends (closed) or stays open.
	c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
	n, err := br.Read(make([]byte, 1))
	switch {
	case n > 0:
		t.Errorf("more bytes than the script's")
	case closed && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err):
		t.Errorf("the connection stays open (%v), want it closed", err)
	case !closed && !errors.Is(err, os.ErrDeadlineExceeded):
		t.Errorf("the connection ended (%v), want it kept alive", err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

// warmUp is a first exchange on a connection: after it, the connection
// waits for its next request in the loop.
var warmUp = []step{send("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n"), expect(okResp)}
var warmUpServer = []step{expect("GET /warm HTTP/1.1\r\nHost: x\r\n\r\n"), send(okResp)}

// proxyModes are the ways a case runs: every connection on its goroutine;
// as the proxy runs (the loop takes a kept-alive connection after its
// first request); and after a first exchange, so that the case's requests
// begin in the loop.
var proxyModes = []string{"goroutines", "default", "in the loop"}

// TestFraming runs every framing case in each mode.
func TestFraming(t *testing.T) {
	for _, mode := range proxyModes {
		for _, tc := range framingCases() {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
				p.noLoop = mode == "goroutines"
				p.SetPolicy(allowSome)
				client, server, calls := tc.client, tc.server, 0
				if mode == "in the loop" {
					client = append(slices.Clone(warmUp), client...)
					server = append(slices.Clone(warmUpServer), server...)
					calls = 1
					if len(tc.server) == 0 {
						server = append(server, step{quiet: true})
					}
				}
				dst, errc, accepts := scriptedServer(t, server)
				runClient(t, through(t, p, freeAddr(t, "127.0.0.2"), dst), client, tc.closed)
				if len(server) > 0 {
					if err := <-errc; err != nil {
						t.Error(err)
					}
				} else {
					select {
					case err := <-errc:
						t.Error(err)
					case <-time.After(50 * time.Millisecond):
					}
				}
				if len(tc.server) == 0 && *accepts != calls {
					t.Errorf("the server was called %d times, want %d", *accepts, calls)
				}
				if mode == "in the loop" && p.adopted.Load() == 0 {
					t.Error("the connection never came to the loop")
				}
			})
		}
	}
	for _, mode := range proxyModes {
		for _, tc := range badChunks {
			t.Run(mode+"/bad chunked body: "+tc.name, func(t *testing.T) {
				p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
				p.noLoop = mode == "goroutines"
				head := "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
				// The server may see the head and the body up to the bad
				// part, then the proxy ends the connection; it says nothing.
				client, server := []step{send(head + tc.body), status(400)}, []step{{pause: time.Second}}
				if mode == "in the loop" {
					client = append(slices.Clone(warmUp), client...)
					server = append(slices.Clone(warmUpServer), server...)
				}
				dst, _, _ := scriptedServer(t, server)
				runClient(t, through(t, p, freeAddr(t, "127.0.0.2"), dst), client, true)
			})
		}
	}
}

// TestStreaming: a body the server writes in parts reaches the client
// part by part, each when it is written.
func TestStreaming(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	parts := make(chan string)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
		for p := range parts {
			fmt.Fprintf(c, "%x\r\n%s\r\n", len(p), p)
		}
		io.WriteString(c, "0\r\n\r\n")
	}()
	c := through(t, p, freeAddr(t, "127.0.0.2"), ln.Addr().(*net.TCPAddr).AddrPort())
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"one\n", "two\n", "three\n"} {
		parts <- part
		got := make([]byte, len(part))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != part {
			t.Fatalf("part %q: got %q (%v)", part, got, err)
		}
	}
	close(parts)
}

// TestLargeBodies: bodies larger than every buffer pass whole both ways.
func TestLargeBodies(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(bytes.Repeat(b, 2))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c := through(t, p, freeAddr(t, "127.0.0.2"), ln.Addr().(*net.TCPAddr).AddrPort())
	client := &http.Client{Transport: &http.Transport{DialContext: nil, Dial: func(string, string) (net.Conn, error) { return c, nil }}}
	body := bytes.Repeat([]byte("0123456789abcdef"), 300<<10/16)
	for _, chunked := range []bool{false, true} {
		req, _ := http.NewRequest("POST", "http://x/a", bytes.NewReader(body))
		if chunked {
			req.ContentLength = -1
			req.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body[:1000]), bytes.NewReader(body[1000:])))
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("chunked %v: %v", chunked, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, bytes.Repeat(body, 2)) {
			t.Errorf("chunked %v: %d bytes back (%v), want %d", chunked, len(got), err, 2*len(body))
		}
	}
}

// eventProxy is a test proxy with allowSome's rules whose events are
// collected: events returns them so far.
func eventProxy(t *testing.T) (*Proxy, func() []observe.HTTPEvent) {
	var mu sync.Mutex
	var evs []observe.HTTPEvent
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, func(ev observe.HTTPEvent) {
		mu.Lock()
		evs = append(evs, ev)
		mu.Unlock()
	})
	p.SetPolicy(allowSome)
	return p, func() []observe.HTTPEvent {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(evs)
	}
}

// TestEvents: an allowed request is one response event, a denied one a
// request and a response event, with the request's method and URL.
func TestEvents(t *testing.T) {
	p, events := eventProxy(t)
	dst, _, _ := scriptedServer(t, []step{expect("GET /a?q HTTP/1.1\r\nHost: h:1\r\n\r\n"), send(okResp)})
	runClient(t, through(t, p, freeAddr(t, "127.0.0.2"), dst), []step{
		send("GET /a?q HTTP/1.1\r\nHost: h:1\r\n\r\n"), expect(okResp),
		send("DELETE /403 HTTP/1.1\r\nHost: h:1\r\n\r\n"), status(403),
	}, false)
	type summary struct {
		resp    bool
		verdict flow.Verdict
		method  string
		url     string
		code    uint32
	}
	var got []summary
	for _, ev := range events() {
		got = append(got, summary{ev.Response, ev.Verdict, ev.Method, ev.URL, ev.Code})
		if ev.Protocol != "HTTP/1.1" || ev.Dst != dst || ev.Direction != flow.TrafficDirection_EGRESS || ev.Cookie != 1 || ev.Response && ev.Latency <= 0 {
			t.Errorf("event %+v", ev)
		}
	}
	want := []summary{
		{true, flow.Verdict_FORWARDED, "GET", "http://h:1/a?q", 200},
		{false, flow.Verdict_DROPPED, "DELETE", "http://h:1/403", 0},
		{true, flow.Verdict_DROPPED, "DELETE", "http://h:1/403", 403},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if p.Allowed.Load() != 1 || p.Denied.Load() != 1 {
		t.Errorf("allowed %d, denied %d, want 1 and 1", p.Allowed.Load(), p.Denied.Load())
	}
}
