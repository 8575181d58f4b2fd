package dnsproxy

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// upstreams keeps one UDP socket per server and matches answers to
// queries by a message ID the proxy assigns, so a query costs no socket
// of its own (creating one per query halved the proxy's rate).
type upstreams struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*upstream
}

type upstream struct {
	conn    *net.UDPConn
	mu      sync.Mutex
	nextID  uint16
	waiting map[uint16]chan []byte
	dead    bool
}

var errUpstreamClosed = errors.New("upstream socket closed")

func (u *upstreams) get(server netip.AddrPort) (*upstream, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if c := u.conns[server]; c != nil && !c.isDead() {
		return c, nil
	}
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return nil, err
	}
	c := &upstream{conn: conn, waiting: map[uint16]chan []byte{}}
	if u.conns == nil {
		u.conns = map[netip.AddrPort]*upstream{}
	}
	u.conns[server] = c
	go c.read()
	return c, nil
}

func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k, c := range u.conns {
		c.conn.Close()
		delete(u.conns, k)
	}
}

func (c *upstream) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

func (c *upstream) read() {
	buf := make([]byte, 65535)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			c.mu.Lock()
			c.dead = true
			for id, ch := range c.waiting {
				close(ch)
				delete(c.waiting, id)
			}
			c.mu.Unlock()
			return
		}
		if n < 12 {
			continue
		}
		id := binary.BigEndian.Uint16(buf[:2])
		c.mu.Lock()
		ch := c.waiting[id]
		delete(c.waiting, id)
		c.mu.Unlock()
		if ch != nil {
			ch <- append([]byte(nil), buf[:n]...)
		}
	}
}

// exchange sends query with an ID of the proxy's and returns the answer
// with the pod's ID put back.
func (c *upstream) exchange(query []byte, timeout time.Duration) ([]byte, error) {
	ch := make(chan []byte, 1)
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, errUpstreamClosed
	}
	// Find a free ID; 65536 queries in flight to one server would be a
	// flood the timeout bounds anyway.
	id := c.nextID
	for i := 0; i < 65536; i++ {
		if _, busy := c.waiting[id]; !busy {
			break
		}
		id++
	}
	c.nextID = id + 1
	c.waiting[id] = ch
	c.mu.Unlock()
	podID := binary.BigEndian.Uint16(query[:2])
	out := append([]byte(nil), query...)
	binary.BigEndian.PutUint16(out, id)
	if _, err := c.conn.Write(out); err != nil {
		c.forget(id)
		return nil, err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil, errUpstreamClosed
		}
		binary.BigEndian.PutUint16(resp, podID)
		return resp, nil
	case <-t.C:
		c.forget(id)
		return nil, errors.New("i/o timeout")
	}
}

func (c *upstream) forget(id uint16) {
	c.mu.Lock()
	delete(c.waiting, id)
	c.mu.Unlock()
}
