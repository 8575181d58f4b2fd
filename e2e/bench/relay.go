package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/l7proxy"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// tcpRelay is the cheapest transparent proxy there can be, as a bound to
// measure the L7 proxy against in the same run: it takes the connections
// the datapath hands to the HTTP proxy's port (the benchmark points the
// datapath at the relay's port for it), connects to each one's original
// destination from the client's own address exactly as the proxy does
// (IP_TRANSPARENT, l7proxy.UpstreamMark), and copies bytes both ways in
// one epoll loop on one locked thread with raw reads and writes: no
// parsing, no policy, no flows. Its cost is that of the proxy's path (two
// TCP connections, the redirects of the datapath) and nothing more: what
// no proxy in user space on this path can spend less than.
type tcpRelay struct {
	ln      net.Listener
	ep      int
	wakeFD  int // eventfd: new pairs queued, or stop
	mu      sync.Mutex
	pending [][2]int
	stopped bool
	done    chan struct{}
}

// startRelay listens on port in ns (the node's namespace), transparently.
func startRelay(ns *netns.NS, port uint16) (*tcpRelay, error) {
	r := &tcpRelay{done: make(chan struct{})}
	lc := net.ListenConfig{Control: sockopts(0)}
	listen := fmt.Sprintf("0.0.0.0:%d", port)
	if err := ns.Do(func() (err error) { r.ln, err = lc.Listen(context.Background(), "tcp4", listen); return err }); err != nil {
		return nil, fmt.Errorf("relay: listen %s: %w", listen, err)
	}
	var err error
	if r.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		r.ln.Close()
		return nil, fmt.Errorf("relay: epoll: %w", err)
	}
	if r.wakeFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		r.ln.Close()
		unix.Close(r.ep)
		return nil, fmt.Errorf("relay: eventfd: %w", err)
	}
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, r.wakeFD, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(r.wakeFD)}); err != nil {
		r.ln.Close()
		unix.Close(r.ep)
		unix.Close(r.wakeFD)
		return nil, fmt.Errorf("relay: epoll add: %w", err)
	}
	go r.loop()
	go r.accept(ns)
	return r, nil
}

// sockopts makes a socket IP_TRANSPARENT (it may take and bind addresses
// that are not the node's) and SO_REUSEADDR, and marks it SO_MARK mark
// when that is not 0.
func sockopts(mark int) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			opts := [][3]int{{unix.SOL_IP, unix.IP_TRANSPARENT, 1}, {unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}}
			if mark != 0 {
				opts = append(opts, [3]int{unix.SOL_SOCKET, unix.SO_MARK, mark})
			}
			for _, o := range opts {
				if serr = unix.SetsockoptInt(int(fd), o[0], o[1], o[2]); serr != nil {
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

// accept pairs each client connection with one to its original
// destination, opened in the node's namespace from the client's address
// and port, and hands both descriptors to the loop.
func (r *tcpRelay) accept(ns *netns.NS) {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: c.RemoteAddr(), Control: sockopts(l7proxy.UpstreamMark)}
		var up net.Conn
		if err := ns.Do(func() (err error) { up, err = d.Dial("tcp4", c.LocalAddr().String()); return err }); err != nil {
			c.Close()
			continue
		}
		a, errA := rawFD(c)
		b, errB := rawFD(up)
		if errA != nil || errB != nil {
			closeFDs(a, b)
			continue
		}
		r.mu.Lock()
		if r.stopped {
			r.mu.Unlock()
			closeFDs(a, b)
			return
		}
		r.pending = append(r.pending, [2]int{a, b})
		r.mu.Unlock()
		r.wake()
	}
}

func (r *tcpRelay) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(r.wakeFD, one[:])
}

// rawFD takes a connection's socket out of Go's poller: a non-blocking
// duplicate the loop owns, the connection itself closed.
func rawFD(c net.Conn) (int, error) {
	defer c.Close()
	sc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := sc.Control(func(s uintptr) { fd, derr = unix.Dup(int(s)) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	unix.CloseOnExec(fd)
	return fd, unix.SetNonblock(fd, true)
}

func closeFDs(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// loop relays until stop: each readable socket is read once and what came
// is written to its peer; a peer that cannot take it all at once is waited
// for (the benchmark's requests and answers are a few hundred bytes).
func (r *tcpRelay) loop() {
	runtime.LockOSThread()
	defer close(r.done)
	peer := map[int32]int32{}
	events := make([]unix.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	drop := func(fd int32) {
		p, ok := peer[fd]
		if !ok {
			return
		}
		delete(peer, fd)
		delete(peer, p)
		closeFDs(int(fd), int(p))
	}
	defer func() {
		for fd := range peer {
			drop(fd)
		}
	}()
	for {
		n, err := unix.EpollWait(r.ep, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, e := range events[:n] {
			if e.Fd == int32(r.wakeFD) {
				var v [8]byte
				_, _ = unix.Read(r.wakeFD, v[:])
				r.mu.Lock()
				pairs, stopped := r.pending, r.stopped
				r.pending = nil
				r.mu.Unlock()
				for _, p := range pairs {
					peer[int32(p[0])], peer[int32(p[1])] = int32(p[1]), int32(p[0])
					for _, fd := range p {
						_ = unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)})
					}
				}
				if stopped {
					return
				}
				continue
			}
			p, ok := peer[e.Fd]
			if !ok {
				continue // its pair was dropped earlier in this batch
			}
			m, err := unix.Read(int(e.Fd), buf)
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if m <= 0 || err != nil || !writeAll(int(p), buf[:m]) {
				drop(e.Fd)
			}
		}
	}
}

// writeAll writes b to a non-blocking socket, waiting for room at most a
// second in all.
func writeAll(fd int, b []byte) bool {
	deadline := time.Now().Add(time.Second)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if n > 0 {
			b = b[n:]
			continue
		}
		if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
			return false
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		_, _ = unix.Poll(pfd, 100)
	}
	return true
}

// stop ends the loop and closes every socket.
func (r *tcpRelay) stop() {
	r.ln.Close()
	r.mu.Lock()
	r.stopped = true
	pending := r.pending
	r.pending = nil
	r.mu.Unlock()
	for _, p := range pending {
		closeFDs(p[0], p[1])
	}
	r.wake()
	<-r.done
	unix.Close(r.ep)
	unix.Close(r.wakeFD)
}
