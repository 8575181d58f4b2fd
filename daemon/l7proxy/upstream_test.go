package l7proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/netns"
)

func TestUpstreamStatus(t *testing.T) {
	dst := netip.MustParseAddrPort("10.0.0.2:80")
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"connect failed", &upstreamError{stage: stageConnect, dst: dst, err: errors.New("i/o timeout")}, 503},
		{"connect failed, wrapped", &url.Error{Op: "Get", URL: "http://x/", Err: &upstreamError{stage: stageConnect, dst: dst, err: os.ErrDeadlineExceeded}}, 503},
		{"client address taken", &upstreamError{stage: stageBind, dst: dst, err: errors.New("address in use")}, 502},
		{"no route", &upstreamError{stage: stageRoute, dst: dst, err: errors.New("network unreachable")}, 502},
		{"server reset", errors.New("connection reset by peer"), 502},
	} {
		if got := upstreamStatus(tc.err); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

type noDatapath struct{}

func (noDatapath) LookupIPCache(netip.Addr) uint32                { return 0 }
func (noDatapath) LookupEndpoint(uint32) (bpf.EndpointInfo, bool) { return bpf.EndpointInfo{}, false }

// allowAll lets every request of identity 0 to identity 0 through.
var allowAll = &policy.Result{HTTP: map[uint32][]policy.HTTPRuleSet{
	0: {{AnyRemote: true, Ports: []policy.ProtoPort{{Proto: policy.ProtoTCP}}, Cookie: 1}},
}}

// newTestProxy is a proxy without a listener whose upstream connections go
// from the client's address when local says so; emit gets its events.
func newTestProxy(t testing.TB, local func(netip.Addr) (bool, error), emit func(observe.HTTPEvent)) *Proxy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the proxy marks its upstream sockets (SO_MARK) and binds them transparently")
	}
	p := newProxy(Config{ConnectTimeout: time.Second, HeaderTimeout: 2 * time.Second}, noDatapath{}, emit, slog.New(slog.DiscardHandler))
	p.viaEndpoint = local
	p.SetPolicy(allowAll)
	t.Cleanup(p.stopLoop)
	return p
}

// echoPeer serves the address each request came from, on loopback.
func echoPeer(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// freeAddr is a loopback address with a port nobody holds.
func freeAddr(t testing.TB, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// through opens a client connection that p serves as one from src to dst
// (as the datapath hands them over), and returns the client's end.
func through(t testing.TB, p *Proxy, src, dst netip.AddrPort) net.Conn {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	p.serveConn(server, connInfo{src: src, dst: dst})
	t.Cleanup(func() { client.Close() })
	return client
}

// get sends GET / on a client connection and returns the answer.
func get(t testing.TB, c net.Conn) (int, string, error) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return 0, "", err
	}
	// One byte at a time: what follows the response stays unread.
	resp, err := http.ReadResponse(bufio.NewReaderSize(oneByte{c}, 16), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1)]) }

// TestUpstreamFromClient: into a local endpoint, each client connection
// reaches the server from its own address and port, over one kept-alive
// connection of its own; elsewhere from the node's address.
func TestUpstreamFromClient(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return true, nil }, nil)
	dst := echoPeer(t)
	srcA, srcB := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.3")
	a, b := through(t, p, srcA, dst), through(t, p, srcB, dst)
	for i := 0; i < 3; i++ {
		for _, tc := range []struct {
			c   net.Conn
			src netip.AddrPort
		}{{a, srcA}, {b, srcB}} {
			code, got, err := get(t, tc.c)
			if err != nil || code != 200 || got != tc.src.String() {
				t.Fatalf("request %d from %s: server saw %q (%d %v), want the client's address and port", i, tc.src, got, code, err)
			}
		}
	}
	// Closing the client connection ends its upstream connection: the same
	// address and port can be bound again at once.
	a.Close()
	deadline := time.Now().Add(2 * time.Second)
	for {
		ln, err := net.Listen("tcp4", srcA.String())
		if err == nil {
			ln.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection's upstream still holds %s: %v", srcA, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	node := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	src := freeAddr(t, "127.0.0.2")
	code, got, err := get(t, through(t, node, src, dst))
	if err != nil || code != 200 || got == src.String() || netip.MustParseAddrPort(got).Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("not to a local endpoint: server saw %q (%d %v), want the node's address", got, code, err)
	}
}

// TestUpstreamFailures: a client address the proxy cannot bind is 502,
// never a connection from another address; a server that does not take
// the connection is 503 and the client connection goes on; no route is
// 502.
func TestUpstreamFailures(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return true, nil }, nil)
	dst := echoPeer(t)

	taken, err := net.Listen("tcp4", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if code, body, err := get(t, through(t, p, taken.Addr().(*net.TCPAddr).AddrPort(), dst)); err != nil || code != http.StatusBadGateway {
		t.Errorf("client address held by a listener: %d %q %v, want 502", code, body, err)
	}

	closed := freeAddr(t, "127.0.0.1")
	c := through(t, p, freeAddr(t, "127.0.0.2"), closed)
	for i := 0; i < 2; i++ {
		if code, body, err := get(t, c); err != nil || code != http.StatusServiceUnavailable || body != "upstream connect error\r\n" {
			t.Errorf("server refusing, request %d: %d %q %v, want 503 upstream connect error", i, code, body, err)
		}
	}

	routeless := newTestProxy(t, func(a netip.Addr) (bool, error) { return false, fmt.Errorf("no route to %s", a) }, nil)
	if code, body, err := get(t, through(t, routeless, freeAddr(t, "127.0.0.2"), dst)); err != nil || code != http.StatusBadGateway {
		t.Errorf("no route: %d %q %v, want 502", code, body, err)
	}
}

// TestUpstreamPortTaken: when the proxy's previous connection from a
// client's port to a server still holds the tuple (the proxy learns of the
// client's close a moment after the client may reuse the port), the new
// upstream connection leaves from another port of the client's address
// rather than failing. Inside a namespace of its own with tcp_tw_reuse off,
// as for a pod's address.
func TestUpstreamPortTaken(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "l7tw")
	ns.MustExec(t, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0")
	err := ns.Do(func() error {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		dst := ln.Addr().(*net.TCPAddr).AddrPort()
		src := netip.MustParseAddrPort("127.0.0.2:45123")
		ctx := context.Background()
		c1, err := dialUpstream(ctx, src, dst, time.Second)
		if err != nil {
			return fmt.Errorf("first connection: %w", err)
		}
		defer c1.Close()
		c2, err := dialUpstream(ctx, src, dst, time.Second)
		if err != nil {
			return fmt.Errorf("second connection from the same client port: %w", err)
		}
		defer c2.Close()
		got := c2.LocalAddr().(*net.TCPAddr).AddrPort()
		if got.Addr() != src.Addr() || got.Port() == src.Port() {
			return fmt.Errorf("second connection from %s, want the client's address %s on another port", got, src.Addr())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
