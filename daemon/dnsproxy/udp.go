package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/policy"
)

// The UDP path works in batches, as a pipeline of two loops with no
// hand-off between goroutines per query: one reads the pods' queries
// (recvmmsg), decides them and sends the allowed ones on to their servers
// (sendmmsg); one per server reads the answers, judges them and sends them
// to the pods. Each server has one connected socket, whose queries carry
// IDs of the proxy's so that answers find their query. A query costs four
// system calls divided by the batch: at the rates where the proxy would
// saturate, a wakeup brings in many queries, so the proxy's cost per query
// falls as the load rises. (The first design, a pool of workers each
// reading one query, asking its server and waiting, spent half its time in
// system calls.)

const (
	// batch is how many datagrams one system call reads or writes at most.
	batch = 32
	// queryBuf holds one query: pods' queries are small (a name and an
	// OPT record); a longer one arrives truncated and is malformed.
	queryBuf = 4096
	// answerBuf holds one answer: UDP carries up to 64 KiB with EDNS.
	answerBuf = 65535
	// maxServers bounds the servers with sockets: pods ask few, and a
	// pod asking thousands of addresses must not cost as many sockets.
	maxServers = 256
	// idleServer is how long a server's socket stays open with nothing in
	// flight, so that the pods asking many servers once do not keep the
	// bound reached.
	idleServer = 30 * time.Second
)

var (
	errOverloaded     = errors.New("too many queries waiting for their servers")
	errRefused        = errors.New("server refused (ICMP port unreachable)")
	errTimeout        = errors.New("server did not answer in time")
	errTooMany        = errors.New("too many servers")
	errUpstreamClosed = errors.New("proxy closing")
)

// udpServer runs the UDP path.
type udpServer struct {
	p    *Proxy
	conn *net.UDPConn
	pc   *ipv4.PacketConn

	mu      sync.Mutex
	servers map[netip.AddrPort]*serverSock
	closed  bool
	wg      sync.WaitGroup
}

// serverSock is the connected socket to one server and its queries in
// flight, by the ID they were sent with.
type serverSock struct {
	u      *udpServer
	server netip.AddrPort
	conn   *net.UDPConn
	pc     *ipv4.PacketConn

	// lastUsed is when the queries' reader last sent a query on it (only
	// that goroutine reads and writes it).
	lastUsed time.Time

	mu     sync.Mutex
	flying map[uint16]*flight
	// order holds the flights by the time they were sent, which is the
	// order their deadlines pass (one timeout for all): the sweeper pops
	// from its head.
	order  []flightRef
	nextID uint16
	seq    uint64
}

type flight struct {
	pq    *pendingQuery
	podID uint16
	seq   uint64
}

type flightRef struct {
	id       uint16
	seq      uint64
	deadline time.Time
}

func newUDPServer(p *Proxy, conn *net.UDPConn) *udpServer {
	return &udpServer{p: p, conn: conn, pc: ipv4.NewPacketConn(conn), servers: map[netip.AddrPort]*serverSock{}}
}

// run serves until ctx ends; the caller closes conn then.
func (u *udpServer) run(ctx context.Context) {
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		u.sweep(ctx)
	}()
	u.readQueries(ctx)
	u.mu.Lock()
	u.closed = true
	for _, s := range u.servers {
		s.conn.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// readQueries is the first loop: queries in, decisions, allowed queries
// on to their servers and the other answers back.
func (u *udpServer) readQueries(ctx context.Context) {
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, queryBuf)}
		msgs[i].OOB = make([]byte, 128)
	}
	var out replies
	toServers := map[*serverSock][]ipv4.Message{}
	ids := batchIdentities{dp: u.p.dp, m: map[netip.Addr]uint32{}}
	lastReap := time.Now()
	for {
		clear(ids.m)
		n, err := u.pc.ReadBatch(msgs, 0)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			u.p.log.Warn("dns proxy: read", "err", err)
			continue
		}
		for i := range n {
			m := &msgs[i]
			dst, ok := origDst(m.OOB[:m.NN])
			ua, isUDP := m.Addr.(*net.UDPAddr)
			if !ok || !isUDP {
				u.p.stats.Malformed.Add(1)
				continue
			}
			src := ua.AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			query := m.Buffers[0][:m.N]
			if m.Flags&syscall.MSG_TRUNC != 0 {
				// Longer than any query a resolver sends: the header is
				// there, the rest is not.
				u.p.stats.Malformed.Add(1)
				out.add(dst, src, formErr(query))
				continue
			}
			reply, pq := u.p.decide(query, src, dst, policy.ProtoUDP, ids)
			if pq == nil {
				if reply != nil {
					out.add(dst, src, reply)
				}
				continue
			}
			s, err := u.server(dst)
			var wire []byte
			if err == nil {
				wire, err = s.register(pq, query)
			}
			if err != nil {
				out.answer(pq, u.p.judge(pq, nil, err))
				continue
			}
			toServers[s] = append(toServers[s], ipv4.Message{Buffers: [][]byte{wire}})
		}
		now := time.Now()
		for s, list := range toServers {
			s.lastUsed = now
			s.send(list)
		}
		clear(toServers)
		out.flush(u)
		if now.Sub(lastReap) > idleServer/3 {
			lastReap = now
			u.reap(now)
		}
	}
}

// batchIdentities looks up each address once per batch: a batch is mostly
// one pod's queries to one server, and a lookup is a system call. A batch
// lasts microseconds, so its identities are as current as the datapath's.
type batchIdentities struct {
	dp Datapath
	m  map[netip.Addr]uint32
}

func (b batchIdentities) LookupIPCache(a netip.Addr) uint32 {
	if id, ok := b.m[a]; ok {
		return id
	}
	id := b.dp.LookupIPCache(a)
	b.m[a] = id
	return id
}

// server returns the socket to server, opening it (and its reader) at the
// first query to it.
func (u *udpServer) server(server netip.AddrPort) (*serverSock, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if s := u.servers[server]; s != nil {
		return s, nil
	}
	if u.closed {
		return nil, errUpstreamClosed
	}
	if len(u.servers) >= maxServers {
		u.reapLocked(time.Now())
	}
	if len(u.servers) >= maxServers {
		return nil, errTooMany
	}
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(server))
	if err != nil {
		return nil, fmt.Errorf("socket to %s: %w", server, err)
	}
	// Answers wait here while the reader handles a batch; the default
	// buffer overflowed under dnsperf.
	if err := forceReadBuffer(conn, udpReadBuffer); err != nil {
		conn.Close()
		return nil, fmt.Errorf("socket to %s: %w", server, err)
	}
	s := &serverSock{u: u, server: server, conn: conn, pc: ipv4.NewPacketConn(conn), flying: map[uint16]*flight{}, lastUsed: time.Now()}
	u.servers[server] = s
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		s.readAnswers()
	}()
	return s, nil
}

// reap closes the sockets of servers nothing was sent to for idleServer
// and nothing is in flight to. Only the queries' reader calls it: no query
// can be on its way to a socket it finds idle.
func (u *udpServer) reap(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.reapLocked(now)
}

func (u *udpServer) reapLocked(now time.Time) {
	for server, s := range u.servers {
		s.mu.Lock()
		idle := len(s.flying) == 0
		s.mu.Unlock()
		if idle && now.Sub(s.lastUsed) > idleServer {
			delete(u.servers, server)
			s.conn.Close()
		}
	}
}

// register gives pq an ID on s and returns the query to send with it.
func (s *serverSock) register(pq *pendingQuery, query []byte) ([]byte, error) {
	if len(query) < 12 {
		return nil, errors.New("query shorter than a DNS header")
	}
	limit := s.u.p.cfg.MaxInFlight
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.flying) >= limit {
		return nil, errOverloaded
	}
	// IDs in sequence, skipping those still in flight (at most limit of
	// the 65536, so the search ends quickly).
	id := s.nextID
	for s.flying[id] != nil {
		id++
	}
	s.nextID = id + 1
	s.seq++
	f := &flight{pq: pq, podID: binary.BigEndian.Uint16(query), seq: s.seq}
	s.flying[id] = f
	s.order = append(s.order, flightRef{id: id, seq: f.seq, deadline: time.Now().Add(s.u.p.cfg.UpstreamTimeout)})
	wire := append([]byte(nil), query...)
	binary.BigEndian.PutUint16(wire, id)
	return wire, nil
}

// send writes queries to the server; those the socket refuses fail at
// once.
func (s *serverSock) send(list []ipv4.Message) {
	for len(list) > 0 {
		n, err := s.pc.WriteBatch(list, 0)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.u.p.log.Debug("dns proxy: send", "server", s.server, "err", err)
			}
			s.failAll(fmt.Errorf("send to %s: %w", s.server, err))
			return
		}
		list = list[n:]
	}
}

// take removes and returns the flight of id, nil if none (an answer
// after its query timed out, or a forged one).
func (s *serverSock) take(id uint16) *flight {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flying[id]
	if f != nil {
		delete(s.flying, id)
	}
	return f
}

// readAnswers is the second loop: a server's answers in, judged, on to
// the pods.
func (s *serverSock) readAnswers() {
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, answerBuf)}
	}
	var out replies
	raw, err := s.conn.SyscallConn()
	if err != nil {
		s.u.p.log.Warn("dns proxy: answers", "server", s.server, "err", err)
		return
	}
	for {
		n, err := s.spin(raw, &msgs[0])
		if n == 0 && err == nil {
			n, err = s.pc.ReadBatch(msgs, 0)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// Nothing listens where the pods asked: every query in
				// flight to it meets the same.
				s.failAll(errRefused)
				continue
			}
			s.u.p.log.Warn("dns proxy: read answer", "server", s.server, "err", err)
			continue
		}
		for i := range n {
			m := &msgs[i]
			raw := m.Buffers[0][:m.N]
			if m.N < 12 {
				continue
			}
			f := s.take(binary.BigEndian.Uint16(raw))
			if f == nil {
				continue
			}
			if m.Flags&syscall.MSG_TRUNC != 0 {
				out.answer(f.pq, s.u.p.judge(f.pq, nil, errors.New("answer over 64 KiB")))
				continue
			}
			binary.BigEndian.PutUint16(raw, f.podID)
			// raw stays valid until the next read: out is flushed first.
			out.answer(f.pq, s.u.p.judge(f.pq, raw, nil))
		}
		out.flush(s.u)
	}
}

// spinFor is how long the reader of a server's answers polls for the next
// one before it sleeps, when one or two queries wait: on this kind of
// machine a sleeping thread takes 50-100 us to wake (an idle virtual CPU
// has to be woken), more than a server on the node takes to answer, and
// a proxy that sleeps through each answer doubles the latency it adds at
// low rates. Under load, with more queries in flight, answers arrive
// faster than a wakeup takes anyway, and polling would only take CPU the
// servers need.
const (
	spinFor      = 200 * time.Microsecond
	spinInFlight = 2
)

// spin polls s's socket for one answer for up to spinFor, when few queries
// are in flight. It returns 0 and no error when it did not poll or saw
// nothing.
func (s *serverSock) spin(raw syscall.RawConn, m *ipv4.Message) (int, error) {
	s.mu.Lock()
	waiting := len(s.flying)
	s.mu.Unlock()
	if waiting == 0 || waiting > spinInFlight {
		return 0, nil
	}
	deadline := time.Now().Add(spinFor)
	buf := m.Buffers[0]
	for {
		var n, flags int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, flags, _, rerr = unix.Recvmsg(int(fd), buf, nil, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			return 0, err
		}
		switch {
		case rerr == nil:
			m.N, m.Flags = n, flags
			return 1, nil
		case errors.Is(rerr, unix.EAGAIN):
		case errors.Is(rerr, unix.EINTR):
		default:
			return 0, rerr
		}
		if time.Now().After(deadline) {
			return 0, nil
		}
		// Others (the queries' reader) get the processor between polls.
		runtime.Gosched()
	}
}

// failAll answers every query in flight on s with SERVFAIL.
func (s *serverSock) failAll(err error) {
	s.mu.Lock()
	failed := make([]*flight, 0, len(s.flying))
	for id, f := range s.flying {
		failed = append(failed, f)
		delete(s.flying, id)
	}
	s.order = s.order[:0]
	s.mu.Unlock()
	var out replies
	for _, f := range failed {
		out.answer(f.pq, s.u.p.judge(f.pq, nil, err))
	}
	out.flush(s.u)
}

// expire removes the flights whose deadline passed by now.
func (s *serverSock) expire(now time.Time) []*flight {
	s.mu.Lock()
	defer s.mu.Unlock()
	var expired []*flight
	i := 0
	for ; i < len(s.order); i++ {
		r := s.order[i]
		f := s.flying[r.id]
		if f == nil || f.seq != r.seq {
			continue // answered
		}
		if r.deadline.After(now) {
			break
		}
		delete(s.flying, r.id)
		expired = append(expired, f)
	}
	s.order = append(s.order[:0], s.order[i:]...)
	return expired
}

// sweep answers SERVFAIL to the queries whose server took longer than the
// timeout, a tenth of the timeout late at most.
func (u *udpServer) sweep(ctx context.Context) {
	tick := time.NewTicker(max(u.p.cfg.UpstreamTimeout/10, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			u.mu.Lock()
			socks := make([]*serverSock, 0, len(u.servers))
			for _, s := range u.servers {
				socks = append(socks, s)
			}
			u.mu.Unlock()
			var out replies
			for _, s := range socks {
				for _, f := range s.expire(now) {
					out.answer(f.pq, u.p.judge(f.pq, nil, errTimeout))
				}
			}
			out.flush(u)
		}
	}
}

// replies collects answers to pods by the server address they come from,
// to send each group in one system call from the socket bound to it, and
// the allowed queries they answer, reported once the answers are out.
type replies struct {
	by       map[netip.AddrPort][]ipv4.Message
	answered []*pendingQuery
}

// answer adds the answer b to the allowed query pq.
func (r *replies) answer(pq *pendingQuery, b []byte) {
	r.add(pq.ev.dst, pq.ev.src, b)
	r.answered = append(r.answered, pq)
}

func (r *replies) add(from, to netip.AddrPort, b []byte) {
	if b == nil {
		return
	}
	if r.by == nil {
		r.by = map[netip.AddrPort][]ipv4.Message{}
	}
	r.by[from] = append(r.by[from], ipv4.Message{Buffers: [][]byte{b}, Addr: net.UDPAddrFromAddrPort(to)})
}

func (r *replies) flush(u *udpServer) {
	for from, list := range r.by {
		if len(list) == 0 {
			continue
		}
		pc, err := u.p.replies.get(from)
		if err != nil {
			u.p.log.Warn("dns proxy: reply", "err", err)
		} else {
			for rest := list; len(rest) > 0; {
				n, err := pc.WriteBatch(rest, 0)
				if err != nil {
					u.p.log.Warn("dns proxy: reply", "from", from, "err", err)
					break
				}
				rest = rest[n:]
			}
		}
		clear(list)
		r.by[from] = list[:0]
	}
	for i, pq := range r.answered {
		u.p.emitDNS(&pq.ev, pq.start)
		r.answered[i] = nil
	}
	r.answered = r.answered[:0]
}
