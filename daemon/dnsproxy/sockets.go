package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockopt is one integer socket option: level, name, value.
type sockopt [3]int

// transparentOpts mark a socket IP_TRANSPARENT: it may receive packets the
// datapath assigned to it whatever their destination, and send from
// addresses that are not the node's. SO_REUSEADDR and SO_REUSEPORT let a
// new proxy bind the port before the old one leaves, and the reply
// sockets bind a server's address.
var transparentOpts = []sockopt{
	{unix.SOL_IP, unix.IP_TRANSPARENT, 1},
	{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
	{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1},
}

// setsockopts sets opts on fd, stopping at the first that fails.
func setsockopts(fd int, opts ...sockopt) error {
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			return fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], err)
		}
	}
	return nil
}

// transparent sets transparentOpts on a socket Go's net package opens.
func transparent(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setsockopts(int(fd), transparentOpts...) }); err != nil {
		return err
	}
	return serr
}

// listenUDP opens the proxy's UDP socket on every address of the node. It
// is a socket of the UDP loop's own, outside Go's poller (udp.go), and
// reports each query's original destination.
func listenUDP(port uint16) (int, error) {
	opts := append(append([]sockopt{}, transparentOpts...), sockopt{unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1}, bigReadBuffer)
	fd, err := udpSocket(netip.AddrPortFrom(netip.IPv4Unspecified(), port), opts...)
	if err != nil {
		return -1, fmt.Errorf("dns proxy: listen udp :%d: %w", port, err)
	}
	return fd, nil
}

// udpSocket opens a non-blocking UDP socket with opts, bound to local when
// it is valid.
func udpSocket(local netip.AddrPort, opts ...sockopt) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := setsockopts(fd, opts...); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if local.IsValid() {
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.Addr().As4(), Port: int(local.Port())}); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("bind %s: %w", local, err)
		}
	}
	return fd, nil
}

// dialUDP opens the socket to one server: connected, so that only its
// answers arrive and an ICMP refusal comes back as an error.
func dialUDP(server netip.AddrPort) (int, error) {
	fd, err := udpSocket(netip.AddrPort{}, bigReadBuffer)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: server.Addr().As4(), Port: int(server.Port())}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", server, err)
	}
	return fd, nil
}

// bigReadBuffer sets udpReadBuffer with SO_RCVBUFFORCE (the proxy runs as
// root), past net.core.rmem_max.
var bigReadBuffer = sockopt{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReadBuffer}

// udpReadBuffer holds the queries (or answers) that wait for the loop: the
// default (~200 small datagrams) overflowed when dnsperf kept 200 queries
// in flight. 2 MiB is ~2000 queries, under 100 ms of work at the proxy's
// rate, so a flood still overflows rather than queueing for seconds.
const udpReadBuffer = 2 << 20

// listenTCP opens the proxy's TCP listener; accepted connections carry the
// original destination as their local address.
func listenTCP(port uint16) (net.Listener, error) {
	lc := net.ListenConfig{Control: transparent}
	l, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen tcp :%d: %w", port, err)
	}
	return l, nil
}

// replySockets hands out UDP sockets bound to a server's address, so an
// answer reaches the pod from the address and port it asked. They are kept
// per server: a node talks to few DNS servers. The UDP loop and its
// sweeper send on them; they are closed once both have stopped.
type replySockets struct {
	mu    sync.Mutex
	socks map[netip.AddrPort]int
}

func (r *replySockets) get(from netip.AddrPort) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fd, ok := r.socks[from]; ok {
		return fd, nil
	}
	if !from.Addr().Is4() {
		return -1, fmt.Errorf("dns proxy: reply socket for %s: not IPv4", from)
	}
	fd, err := udpSocket(from, transparentOpts...)
	if err != nil {
		return -1, fmt.Errorf("dns proxy: reply socket for %s: %w", from, err)
	}
	if r.socks == nil {
		r.socks = map[netip.AddrPort]int{}
	}
	r.socks[from] = fd
	return fd, nil
}

func (r *replySockets) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, fd := range r.socks {
		unix.Close(fd)
		delete(r.socks, k)
	}
}
