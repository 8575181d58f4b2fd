package bench

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/mmsg"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// udpRelay is the DNS counterpart of tcpRelay (relay.go): the cheapest
// transparent UDP proxy there can be, the bound the DNS proxy is measured
// against in the same run. It takes the datagrams the datapath hands to
// the DNS proxy's port (the benchmark points the datapath at the relay's
// port for it), sends each to its original destination over a connected
// socket of the node per client socket (so an answer needs no lookup of
// its query), and sends the answers back from the address the client
// asked, with the batches and raw system calls the proxy uses
// (daemon/mmsg), in one epoll loop on one locked thread. It reads no
// message: no parsing, no policy, no flows.
type udpRelay struct {
	listen, ep, stopFD int
	done               chan struct{}
}

// flowOf is one client socket's relay: its address, the server it asked,
// and the connected socket to that server.
type flowOf struct {
	client, server netip.AddrPort
	up             int
}

// startUDPRelay listens on port in ns (the node's namespace).
func startUDPRelay(ns *netns.NS, port uint16) (*udpRelay, error) {
	r := &udpRelay{listen: -1, ep: -1, stopFD: -1, done: make(chan struct{})}
	err := ns.Do(func() error {
		fd, err := relaySocket(netip.AddrPortFrom(netip.IPv4Unspecified(), port), unix.IP_RECVORIGDSTADDR)
		r.listen = fd
		return err
	})
	if err == nil {
		r.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	}
	if err == nil {
		r.stopFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	}
	for _, fd := range []int{r.listen, r.stopFD} {
		if err == nil {
			err = unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
		}
	}
	if err != nil {
		closeFDs(r.listen, r.ep, r.stopFD)
		return nil, fmt.Errorf("udp relay on :%d: %w", port, err)
	}
	go r.loop(ns)
	return r, nil
}

// relaySocket is a non-blocking transparent UDP socket bound to local
// (it may be another host's address), with the extra option opt set when
// it is not 0.
func relaySocket(local netip.AddrPort, opt int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	opts := [][2]int{{unix.SOL_IP, unix.IP_TRANSPARENT}, {unix.SOL_SOCKET, unix.SO_REUSEADDR}}
	if opt != 0 {
		opts = append(opts, [2]int{unix.SOL_IP, opt})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o[0], o[1], 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	// As the proxy's: room for dnsperf's 200 queries in flight.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 2<<20); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.Addr().As4(), Port: int(local.Port())}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// loop runs the relay on a thread in the node's namespace, where the
// sockets it opens for new clients and servers must be.
func (r *udpRelay) loop(ns *netns.NS) {
	defer close(r.done)
	byClient := map[netip.AddrPort]*flowOf{}
	byUp := map[int32]*flowOf{}
	replies := map[netip.AddrPort]int{} // server address -> socket bound to it
	defer func() {
		for _, f := range byClient {
			unix.Close(f.up)
		}
		for _, fd := range replies {
			unix.Close(fd)
		}
	}()
	_ = ns.Do(func() error { return r.run(byClient, byUp, replies) })
}

// run is the loop proper, on a thread in the node's namespace.
func (r *udpRelay) run(byClient map[netip.AddrPort]*flowOf, byUp map[int32]*flowOf, replies map[netip.AddrPort]int) error {
	queries := mmsg.NewIn(64, 512, 128)
	answers := mmsg.NewIn(64, 4096, 0)
	out := map[*flowOf]*mmsg.Out{}
	back := map[int]*mmsg.Out{}
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(r.ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range events[:n] {
			switch fd := int(e.Fd); {
			case fd == r.stopFD:
				return nil
			case fd == r.listen:
				k, _ := queries.Recv(fd)
				for i := range k {
					server, ok1 := mmsg.OrigDst(queries.Control(i))
					client, ok2 := queries.From(i)
					if !ok1 || !ok2 || queries.Truncated(i) {
						continue
					}
					f := byClient[client]
					if f == nil || f.server != server {
						if f, err = r.dial(client, server, byClient, byUp); err != nil {
							continue
						}
					}
					if out[f] == nil {
						out[f] = &mmsg.Out{}
					}
					out[f].Add(queries.Data(i), netip.AddrPort{})
				}
				for f, o := range out {
					_ = o.Send(f.up)
				}
			default:
				f := byUp[e.Fd]
				if f == nil {
					continue
				}
				k, _ := answers.Recv(fd)
				if k == 0 {
					continue
				}
				reply, err := replySocket(f.server, replies)
				if err != nil {
					continue
				}
				if back[reply] == nil {
					back[reply] = &mmsg.Out{}
				}
				for i := range k {
					back[reply].Add(answers.Data(i), f.client)
				}
				_ = back[reply].Send(reply)
			}
		}
	}
}

// dial opens (or replaces) the connected socket of client to server.
func (r *udpRelay) dial(client, server netip.AddrPort, byClient map[netip.AddrPort]*flowOf, byUp map[int32]*flowOf) (*flowOf, error) {
	if old := byClient[client]; old != nil {
		delete(byUp, int32(old.up))
		unix.Close(old.up)
		delete(byClient, client)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: server.Addr().As4(), Port: int(server.Port())}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := &flowOf{client: client, server: server, up: fd}
	byClient[client], byUp[int32(fd)] = f, f
	return f, nil
}

// replySocket is the socket bound to server's address, opened once.
func replySocket(server netip.AddrPort, replies map[netip.AddrPort]int) (int, error) {
	if fd, ok := replies[server]; ok {
		return fd, nil
	}
	fd, err := relaySocket(server, 0)
	if err != nil {
		return -1, err
	}
	replies[server] = fd
	return fd, nil
}

// stop ends the loop and closes every socket.
func (r *udpRelay) stop() {
	one := [8]byte{1}
	_, _ = unix.Write(r.stopFD, one[:])
	<-r.done
	closeFDs(r.listen, r.ep, r.stopFD)
}
