package l7proxy

import (
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

// newTestProxy is a proxy whose upstream connections go from the client's
// address when local says so.
func newTestProxy(t testing.TB, local func(netip.Addr) (bool, error)) *Proxy {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the proxy's sockets are IP_TRANSPARENT")
	}
	p, err := New(Config{ConnectTimeout: time.Second}, noDatapath{}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.ln.Close() })
	p.viaEndpoint = local
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

func get(t testing.TB, p *Proxy, ci *connInfo) (string, error) {
	t.Helper()
	ctx := context.WithValue(context.WithValue(context.Background(), keyDst, ci.dst), keyConn, ci)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ci.dst.String()+"/", nil)
	resp, err := roundTripper{p}.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestUpstreamFromClient: into a local endpoint, each client connection
// reaches the server from its own address and port, over one kept-alive
// connection of its own; elsewhere from the node's address.
func TestUpstreamFromClient(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return true, nil })
	dst := echoPeer(t)
	a := &connInfo{src: freeAddr(t, "127.0.0.2"), dst: dst}
	b := &connInfo{src: freeAddr(t, "127.0.0.3"), dst: dst}
	for i := 0; i < 3; i++ {
		for _, ci := range []*connInfo{a, b} {
			got, err := get(t, p, ci)
			if err != nil || got != ci.src.String() {
				t.Fatalf("request %d from %s: server saw %q (%v), want the client's address and port", i, ci.src, got, err)
			}
		}
	}
	// Closing the client connection ends its upstream connection: the same
	// address and port can be bound again at once.
	a.up.close()
	if _, err := get(t, p, a); err == nil {
		t.Error("a closed client connection still reached the server")
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		ln, err := net.Listen("tcp4", a.src.String())
		if err == nil {
			ln.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the closed connection's upstream still holds %s: %v", a.src, err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	node := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil })
	ci := &connInfo{src: freeAddr(t, "127.0.0.2"), dst: dst}
	got, err := get(t, node, ci)
	if err != nil || got == ci.src.String() || netip.MustParseAddrPort(got).Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("not to a local endpoint: server saw %q (%v), want the node's address", got, err)
	}
}

// TestUpstreamFailures: a client address the proxy cannot bind is 502 with
// the reason, never a connection from another address; a server that does
// not take the connection is 503; so is one that never answers, within
// the connect timeout.
func TestUpstreamFailures(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return true, nil })
	dst := echoPeer(t)

	taken, err := net.Listen("tcp4", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	ci := &connInfo{src: taken.Addr().(*net.TCPAddr).AddrPort(), dst: dst}
	_, err = get(t, p, ci)
	var ue *upstreamError
	if !errors.As(err, &ue) || ue.stage != stageBind || upstreamStatus(err) != http.StatusBadGateway {
		t.Errorf("client address held by a listener: %v, want a bind failure (502)", err)
	}

	closed := freeAddr(t, "127.0.0.1")
	ci = &connInfo{src: freeAddr(t, "127.0.0.2"), dst: closed}
	if _, err = get(t, p, ci); upstreamStatus(err) != http.StatusServiceUnavailable {
		t.Errorf("server refusing: %v, want a connect failure (503)", err)
	}

	routeless := newTestProxy(t, func(a netip.Addr) (bool, error) { return false, fmt.Errorf("no route to %s", a) })
	ci = &connInfo{src: freeAddr(t, "127.0.0.2"), dst: dst}
	if _, err = get(t, routeless, ci); !errors.As(err, &ue) || ue.stage != stageRoute || upstreamStatus(err) != http.StatusBadGateway {
		t.Errorf("no route: %v, want 502", err)
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
