package dnsproxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// upstreams keeps, per server, the idle ones of a set of UDP sockets
// connected to it. An exchange takes one, sends the query with an ID of
// the socket's, reads the answer itself and gives the socket back: a
// query costs no socket of its own (creating one per query halved the
// proxy's rate) and no hand-off to a reader goroutine (one shared socket
// per server, its reader waking the asker, cost a wakeup, a channel and a
// timer per query). There are at most as many sockets per server as
// queries were ever in flight to it at once, which the UDP workers bound.
type upstreams struct {
	mu     sync.RWMutex
	pools  map[netip.AddrPort]*upPool
	closed bool
}

type upPool struct {
	server netip.AddrPort
	mu     sync.Mutex
	idle   []*upConn
	closed bool
}

// upConn is one connected socket; one exchange at a time uses it.
type upConn struct {
	conn   *net.UDPConn
	nextID uint16
	buf    []byte
}

// maxIdlePerServer bounds the sockets kept per server; more in flight at
// once (TCP clients retrying over UDP do not exist, but UDP workers may
// be raised) are closed when they come back.
const maxIdlePerServer = 1024

var errUpstreamClosed = errors.New("upstream sockets closed")

func (u *upstreams) pool(server netip.AddrPort) (*upPool, error) {
	u.mu.RLock()
	pl, closed := u.pools[server], u.closed
	u.mu.RUnlock()
	if closed {
		return nil, errUpstreamClosed
	}
	if pl != nil {
		return pl, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, errUpstreamClosed
	}
	if pl = u.pools[server]; pl == nil {
		if u.pools == nil {
			u.pools = map[netip.AddrPort]*upPool{}
		}
		pl = &upPool{server: server}
		u.pools[server] = pl
	}
	return pl, nil
}

func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, pl := range u.pools {
		pl.close()
	}
}

// exchange sends query to server and returns the answer with the pod's
// ID put back.
func (u *upstreams) exchange(server netip.AddrPort, query []byte, timeout time.Duration) ([]byte, error) {
	pl, err := u.pool(server)
	if err != nil {
		return nil, err
	}
	c, err := pl.get()
	if err != nil {
		return nil, err
	}
	resp, err := c.exchange(query, timeout)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		// Refused by ICMP, or closed: a fresh socket next time.
		c.conn.Close()
		return nil, err
	}
	pl.put(c)
	return resp, err
}

func (pl *upPool) get() (*upConn, error) {
	pl.mu.Lock()
	if n := len(pl.idle); n > 0 {
		c := pl.idle[n-1]
		pl.idle = pl.idle[:n-1]
		pl.mu.Unlock()
		return c, nil
	}
	closed := pl.closed
	pl.mu.Unlock()
	if closed {
		return nil, errUpstreamClosed
	}
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(pl.server))
	if err != nil {
		return nil, err
	}
	return &upConn{conn: conn, buf: make([]byte, 65535)}, nil
}

func (pl *upPool) put(c *upConn) {
	pl.mu.Lock()
	if pl.closed || len(pl.idle) >= maxIdlePerServer {
		pl.mu.Unlock()
		c.conn.Close()
		return
	}
	pl.idle = append(pl.idle, c)
	pl.mu.Unlock()
}

func (pl *upPool) close() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.closed = true
	for _, c := range pl.idle {
		c.conn.Close()
	}
	pl.idle = nil
}

// exchange asks and waits for the answer carrying the ID it sent; answers
// with other IDs are late ones to queries that timed out on this socket
// before.
func (c *upConn) exchange(query []byte, timeout time.Duration) ([]byte, error) {
	if len(query) < 12 {
		return nil, errors.New("query shorter than a DNS header")
	}
	id := c.nextID
	c.nextID++
	out := c.buf[:copy(c.buf, query)]
	binary.BigEndian.PutUint16(out, id)
	if err := c.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(out); err != nil {
		return nil, err
	}
	for {
		n, err := c.conn.Read(c.buf)
		if err != nil {
			return nil, err
		}
		if n < 12 || binary.BigEndian.Uint16(c.buf) != id {
			continue
		}
		resp := append([]byte(nil), c.buf[:n]...)
		copy(resp, query[:2])
		return resp, nil
	}
}
