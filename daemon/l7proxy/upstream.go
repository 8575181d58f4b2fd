package l7proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Upstream connections. Into a pod on this node, the proxy connects from
// the client's own address and port (an IP_TRANSPARENT socket bound to
// them), as Cilium's proxy does: the pod's ingress policy then judges the
// client, where the node's address would be let in as the host. The
// datapath hands the pod's answers to the socket (bpf/src/proxy.h). The
// client's port keeps the tuple one the pod's namespace has room for: the
// client's own connection ends at the proxy.
//
// Anywhere else (another node, outside), answers to a client's address
// would not pass a pod's veth on their way back, so the datapath could not
// hand them to the proxy: those connections leave from the node's address.

// upstreamError is a failure to open an upstream connection: bind when the
// client's address and port could not be taken, connect when the server
// could not be reached (refused, or its SYN dropped by its policy).
type upstreamError struct {
	stage string
	src   netip.AddrPort // the address bound, if any
	dst   netip.AddrPort
	err   error
}

func (e *upstreamError) Error() string {
	if e.src.IsValid() {
		return fmt.Sprintf("%s upstream %s from %s: %v", e.stage, e.dst, e.src, e.err)
	}
	return fmt.Sprintf("%s upstream %s: %v", e.stage, e.dst, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

const (
	stageBind    = "bind"
	stageConnect = "connect"
	stageRoute   = "route"
)

// upstreamStatus is the status a client gets for a failed request: 503
// when the server could not be reached, as Envoy answers a connect
// failure or timeout (Cilium's proxy, where the server's policy drops the
// proxy's SYN); 502 for everything else, a socket the proxy could not set
// up included.
func upstreamStatus(err error) int {
	var ue *upstreamError
	if errors.As(err, &ue) && ue.stage == stageConnect {
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// markControl marks a socket UpstreamMark and, with transparent, lets it
// bind to an address that is not the node's (IP_TRANSPARENT) and to a port
// an older connection of the same client left in TIME_WAIT (SO_REUSEADDR).
func markControl(transparent bool) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, UpstreamMark); serr != nil {
				serr = fmt.Errorf("mark upstream socket: %w", serr)
				return
			}
			if !transparent {
				return
			}
			for _, o := range [][2]int{{unix.SOL_IP, unix.IP_TRANSPARENT}, {unix.SOL_SOCKET, unix.SO_REUSEADDR}} {
				if serr = unix.SetsockoptInt(int(fd), o[0], o[1], 1); serr != nil {
					serr = fmt.Errorf("make upstream socket transparent: %w", serr)
					return
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}
}

// dialUpstream connects to dst, from src when it is valid, within timeout.
func dialUpstream(ctx context.Context, src, dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, Control: markControl(src.IsValid())}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
	}
	conn, err := d.DialContext(ctx, "tcp4", dst.String())
	if err == nil {
		return conn, nil
	}
	if src.IsValid() && src.Port() != 0 && errors.Is(err, syscall.EADDRNOTAVAIL) {
		// The tuple is still taken in the node's namespace: the proxy's
		// previous connection from this client port to this server is
		// not closed yet (it learns of the client's close a moment
		// later) or waits out TIME_WAIT, and the client has already
		// reused the port. Leave from another port of the client's own
		// address: the server's policy still judges the client.
		src = netip.AddrPortFrom(src.Addr(), 0)
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
		if conn, err = d.DialContext(ctx, "tcp4", dst.String()); err == nil {
			return conn, nil
		}
	}
	ue := &upstreamError{stage: stageConnect, src: src, dst: dst, err: err}
	// The net package names the system call that failed.
	var se *os.SyscallError
	if errors.As(err, &se) && (se.Syscall == "bind" || se.Syscall == "setsockopt") {
		ue.stage = stageBind
	}
	return nil, ue
}

// routesToEndpoint says whether the node routes addr through the host veth
// of one of its endpoints, whose datapath hands answers to the proxy.
func routesToEndpoint(dp Datapath, addr netip.Addr) (bool, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return false, fmt.Errorf("look up the route to %s: %w", addr, err)
	}
	for _, r := range routes {
		if r.LinkIndex > 0 {
			if _, ok := dp.LookupEndpoint(uint32(r.LinkIndex)); ok {
				return true, nil
			}
		}
	}
	return false, nil
}
