package dnsproxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// transparent marks a socket IP_TRANSPARENT: it may receive packets the
// datapath assigned to it whatever their destination, and send from
// addresses that are not the node's. reuse adds SO_REUSEADDR and
// SO_REUSEPORT, for the reply sockets bound to a server's address.
func transparent(reuse, origDst bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			opts := [][2]int{{unix.SOL_IP, unix.IP_TRANSPARENT}}
			if origDst {
				opts = append(opts, [2]int{unix.SOL_IP, unix.IP_RECVORIGDSTADDR})
			}
			if reuse {
				opts = append(opts, [2]int{unix.SOL_SOCKET, unix.SO_REUSEADDR}, [2]int{unix.SOL_SOCKET, unix.SO_REUSEPORT})
			}
			for _, o := range opts {
				if serr = unix.SetsockoptInt(int(fd), o[0], o[1], 1); serr != nil {
					serr = fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], serr)
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// listenUDP opens the proxy's UDP socket on every address of the node,
// with SO_REUSEPORT so that a new version of the proxy can bind the port
// before the old one leaves.
func listenUDP(port uint16) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: transparent(true, true)}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen udp :%d: %w", port, err)
	}
	c := pc.(*net.UDPConn)
	if err := forceReadBuffer(c, udpReadBuffer); err != nil {
		c.Close()
		return nil, fmt.Errorf("dns proxy: listen udp :%d: %w", port, err)
	}
	return c, nil
}

// udpReadBuffer holds the queries that wait for a worker: the default
// (~200 small datagrams) overflowed when dnsperf kept 200 queries in
// flight. 2 MiB is ~2000 queries, under 100 ms of work at the proxy's
// rate, so a flood still overflows rather than queueing for seconds.
const udpReadBuffer = 2 << 20

// forceReadBuffer sets SO_RCVBUFFORCE (the proxy runs as root), past
// net.core.rmem_max.
func forceReadBuffer(c *net.UDPConn, size int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt SO_RCVBUFFORCE %d: %w", size, serr)
	}
	return nil
}

// listenTCP opens the proxy's TCP listener; accepted connections carry the
// original destination as their local address.
func listenTCP(port uint16) (net.Listener, error) {
	lc := net.ListenConfig{Control: transparent(true, false)}
	l, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen tcp :%d: %w", port, err)
	}
	return l, nil
}

// origDst reads IP_ORIGDSTADDR from a datagram's control messages: the
// address and port the pod sent to.
func origDst(oob []byte) (netip.AddrPort, bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return netip.AddrPort{}, false
		}
		if h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && len(data) >= 8 {
			port := binary.BigEndian.Uint16(data[2:4])
			addr := netip.AddrFrom4([4]byte(data[4:8]))
			return netip.AddrPortFrom(addr, port), true
		}
		oob = rest
	}
	return netip.AddrPort{}, false
}

// replySockets hands out UDP sockets bound to a server's address, so an
// answer reaches the pod from the address and port it asked. They are kept
// per server: a node talks to few DNS servers. Each comes wrapped for
// batched writes, once rather than per batch.
type replySockets struct {
	mu    sync.Mutex
	socks map[netip.AddrPort]*replySocket
}

type replySocket struct {
	conn *net.UDPConn
	pc   *ipv4.PacketConn
}

func (r *replySockets) get(from netip.AddrPort) (*ipv4.PacketConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.socks[from]; s != nil {
		return s.pc, nil
	}
	lc := net.ListenConfig{Control: transparent(true, false)}
	pc, err := lc.ListenPacket(context.Background(), "udp4", from.String())
	if err != nil {
		return nil, fmt.Errorf("dns proxy: reply socket for %s: %w", from, err)
	}
	if r.socks == nil {
		r.socks = map[netip.AddrPort]*replySocket{}
	}
	c := pc.(*net.UDPConn)
	s := &replySocket{conn: c, pc: ipv4.NewPacketConn(c)}
	r.socks[from] = s
	return s.pc, nil
}

func (r *replySockets) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, s := range r.socks {
		s.conn.Close()
		delete(r.socks, k)
	}
}
