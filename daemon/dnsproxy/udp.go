package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/mmsg"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// The UDP path is one loop on one goroutine, over sockets of its own that
// Go's poller does not know: it waits in epoll for the pods' queries and
// the servers' answers, reads each in batches (recvmmsg), decides the
// queries and sends the allowed ones on to their servers, judges the
// answers and sends them to the pods (sendmmsg). Each server has one
// connected socket, whose queries carry IDs of the proxy's so that
// answers find their query. At the rates where the proxy would saturate a
// wakeup brings in many datagrams, so a query's four system calls are
// divided by the batch.
//
// The first design, a pool of workers each reading one query, asking its
// server and waiting, spent half its time in system calls. The second, a
// goroutine reading the queries and one per server reading answers, on
// Go's poller, spent a quarter of the proxy's CPU in the runtime's
// scheduler: goroutines parking and waking, the poller's own epoll woken
// by every datagram sent (a socket it watches has room again), and the
// runtime's monitor taking the processor of a thread in a long sendmmsg.

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
	p      *Proxy
	listen int // the pods' queries arrive here (-1: none, in tests)
	ep     int // the loop's epoll
	stop   int // an eventfd: written when the loop is to end

	// flying counts the queries in flight to all servers.
	flying atomic.Int64

	mu      sync.Mutex
	servers map[netip.AddrPort]*serverSock
	byFD    map[int32]*serverSock
	closed  bool
}

// serverSock is the connected socket to one server and its queries in
// flight, by the ID they were sent with.
type serverSock struct {
	u      *udpServer
	server netip.AddrPort
	fd     int

	// Only the loop uses these: lastUsed is when it last sent a query on
	// the socket, out the queries it gathered for it from one batch.
	lastUsed time.Time
	out      mmsg.Out

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

// newUDPServer sets up the loop over listen (-1: no pods' socket).
func newUDPServer(p *Proxy, listen int) (*udpServer, error) {
	u := &udpServer{p: p, listen: listen, ep: -1, stop: -1, servers: map[netip.AddrPort]*serverSock{}, byFD: map[int32]*serverSock{}}
	var err error
	if u.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("dns proxy: epoll: %w", err)
	}
	if u.stop, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		u.closeAll()
		return nil, fmt.Errorf("dns proxy: eventfd: %w", err)
	}
	for _, fd := range []int{u.stop, listen} {
		if fd < 0 {
			continue
		}
		if err := unix.EpollCtl(u.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			u.closeAll()
			return nil, fmt.Errorf("dns proxy: epoll add: %w", err)
		}
	}
	return u, nil
}

// run serves until ctx ends, then closes the servers' sockets and the
// loop's own; the listening socket stays its caller's.
func (u *udpServer) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		u.sweep(ctx)
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		u.wake()
	}()
	u.loop()
	wg.Wait()
	u.closeAll()
}

// wake ends the loop. (An eventfd takes any count but 0 and 2^64-1.)
func (u *udpServer) wake() {
	one := [8]byte{1}
	unix.Write(u.stop, one[:])
}

func (u *udpServer) closeAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for server, s := range u.servers {
		delete(u.servers, server)
		u.closeLocked(s)
	}
	for _, fd := range []int{u.ep, u.stop} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	u.ep, u.stop = -1, -1
}

// round is what one wakeup of the loop reads and gathers.
type round struct {
	queries, answers *mmsg.In
	out              replies
	touched          []*serverSock // servers with queries gathered
	ids              batchIdentities
}

func (u *udpServer) newRound() *round {
	return &round{
		queries: mmsg.NewIn(batch, queryBuf, 128),
		answers: mmsg.NewIn(batch, answerBuf, 0),
		ids:     batchIdentities{dp: u.p.dp, m: map[netip.Addr]uint32{}},
	}
}

// loop is the UDP path: it returns when stop is written.
func (u *udpServer) loop() {
	// The loop keeps one thread of its own. Unlocked, the runtime may
	// resume it on another thread after a wait, and run the goroutines it
	// woke (the events' writer) on the one it left. Over six alternating
	// pairs of benchmark runs, locked it proxied 33.1k queries/s (median)
	// against 27.1k; 0.71-0.82 of the bare relay's rate against 0.59-0.69
	// in the three pairs that printed it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := u.newRound()
	events := make([]unix.EpollEvent, 64)
	lastReap := time.Now()
	var spinUntil time.Time
	for {
		// Block, unless a query or two wait for their answer: then poll
		// (see spinFor).
		timeout := 1000
		if !spinUntil.IsZero() {
			timeout = 0
		}
		n, err := unix.EpollWait(u.ep, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			u.p.log.Warn("dns proxy: epoll", "err", err)
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if !u.ready(ev.Fd, r) {
				return
			}
		}
		now := time.Now()
		u.finish(r, now)
		switch inFlight := u.flying.Load(); {
		case inFlight == 0 || inFlight > spinInFlight:
			spinUntil = time.Time{}
		case n > 0 || spinUntil.IsZero():
			spinUntil = now.Add(spinFor)
		case now.After(spinUntil):
			spinUntil = time.Time{}
		default:
			// Polling on: the loop's thread is its own (a yield would hand
			// it to the scheduler and wait for a wake-up, what polling
			// avoids); the other goroutines run on other threads.
		}
		if now.Sub(lastReap) > idleServer/3 {
			lastReap = now
			u.reap(now)
		}
	}
}

// ready handles the socket fd that epoll found readable; false when it is
// the stop eventfd.
func (u *udpServer) ready(fd int32, r *round) bool {
	switch int(fd) {
	case u.stop:
		return false
	case u.listen:
		u.readQueries(r)
	default:
		u.mu.Lock()
		s := u.byFD[fd]
		u.mu.Unlock()
		if s != nil {
			s.readAnswers(r.answers, &r.out)
			// The answers point into r.answers, which the next server's
			// read reuses: they go out first.
			r.out.flush(u)
		}
	}
	return true
}

// finish sends the queries r gathered to their servers and the answers
// to the pods.
func (u *udpServer) finish(r *round, now time.Time) {
	for _, s := range r.touched {
		s.lastUsed = now
		s.send()
	}
	clear(r.touched)
	r.touched = r.touched[:0]
	r.out.flush(u)
}

// readQueries reads one batch of the pods' queries, decides them, gathers
// the allowed ones on their servers' sockets (r.touched) and the other
// answers in r.out.
func (u *udpServer) readQueries(r *round) {
	in, out := r.queries, &r.out
	clear(r.ids.m)
	n, err := in.Recv(u.listen)
	if err != nil {
		if !errors.Is(err, unix.EAGAIN) {
			u.p.log.Warn("dns proxy: read", "err", err)
		}
		return
	}
	for i := range n {
		dst, ok := mmsg.OrigDst(in.Control(i))
		src, isV4 := in.From(i)
		if !ok || !isV4 {
			u.p.stats.Malformed.Add(1)
			continue
		}
		query := in.Data(i)
		if in.Truncated(i) {
			// Longer than any query a resolver sends: the header is
			// there, the rest is not.
			u.p.stats.Malformed.Add(1)
			out.add(dst, src, formErr(query))
			continue
		}
		reply, pq := u.p.decide(query, src, dst, policy.ProtoUDP, r.ids)
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
		if s.out.Len() == 0 {
			r.touched = append(r.touched, s)
		}
		s.out.Add(wire, netip.AddrPort{})
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
	fd, err := dialUDP(server)
	if err != nil {
		return nil, fmt.Errorf("socket to %s: %w", server, err)
	}
	if err := unix.EpollCtl(u.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("socket to %s: epoll add: %w", server, err)
	}
	s := &serverSock{u: u, server: server, fd: fd, flying: map[uint16]*flight{}, lastUsed: time.Now()}
	u.servers[server] = s
	u.byFD[int32(fd)] = s
	return s, nil
}

// reap closes the sockets of servers nothing was sent to for idleServer
// and nothing is in flight to. Only the loop calls it: no query can be on
// its way to a socket it finds idle.
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
			u.closeLocked(s)
		}
	}
}

// closeLocked closes s's socket, which leaves the loop's epoll with it.
func (u *udpServer) closeLocked(s *serverSock) {
	delete(u.byFD, int32(s.fd))
	unix.Close(s.fd)
	s.fd = -1
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
	s.u.flying.Add(1)
	s.order = append(s.order, flightRef{id: id, seq: f.seq, deadline: time.Now().Add(s.u.p.cfg.UpstreamTimeout)})
	wire := append([]byte(nil), query...)
	binary.BigEndian.PutUint16(wire, id)
	return wire, nil
}

// send writes the queries gathered in s.out to the server; those the
// socket refuses fail at once.
func (s *serverSock) send() {
	if err := s.out.Send(s.fd); err != nil {
		s.u.p.log.Debug("dns proxy: send", "server", s.server, "err", err)
		s.failAll(fmt.Errorf("send to %s: %w", s.server, err))
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
		s.u.flying.Add(-1)
	}
	return f
}

// readAnswers reads one batch of s's answers, judges them and gathers
// them in out, to go to the pods. The answers point into in: the caller
// flushes out before in is read again.
func (s *serverSock) readAnswers(in *mmsg.In, out *replies) {
	n, err := in.Recv(s.fd)
	switch {
	case errors.Is(err, unix.EAGAIN):
		return
	case errors.Is(err, unix.ECONNREFUSED):
		// Nothing listens where the pods asked: every query in flight to
		// it meets the same.
		s.failAll(errRefused)
		return
	case err != nil:
		s.u.p.log.Warn("dns proxy: read answer", "server", s.server, "err", err)
		return
	}
	for i := range n {
		raw := in.Data(i)
		if len(raw) < 12 {
			continue
		}
		f := s.take(binary.BigEndian.Uint16(raw))
		if f == nil {
			continue
		}
		if in.Truncated(i) {
			out.answer(f.pq, s.u.p.judge(f.pq, nil, errors.New("answer over 64 KiB")))
			continue
		}
		binary.BigEndian.PutUint16(raw, f.podID)
		out.answer(f.pq, s.u.p.judge(f.pq, raw, nil))
	}
}

// spinFor is how long the loop polls for the next datagram before it
// sleeps, when one or two queries wait for their answer: on this kind of
// machine a sleeping thread takes 50-100 us to wake (an idle virtual CPU
// has to be woken), more than a server on the node takes to answer, and
// a proxy that sleeps through each answer adds that wake-up to every
// query at low rates (the README's benchmarks give the figures). Under
// load, with more queries in flight, answers arrive faster than a wakeup
// takes anyway, and polling would only take CPU the servers need.
const (
	spinFor      = 200 * time.Microsecond
	spinInFlight = 2
)

// failAll answers every query in flight on s with SERVFAIL.
func (s *serverSock) failAll(err error) {
	s.mu.Lock()
	failed := make([]*flight, 0, len(s.flying))
	for id, f := range s.flying {
		failed = append(failed, f)
		delete(s.flying, id)
	}
	s.u.flying.Add(-int64(len(failed)))
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
	s.u.flying.Add(-int64(len(expired)))
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
	by       map[netip.AddrPort]*mmsg.Out
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
		r.by = map[netip.AddrPort]*mmsg.Out{}
	}
	ob := r.by[from]
	if ob == nil {
		ob = &mmsg.Out{}
		r.by[from] = ob
	}
	ob.Add(b, to)
}

func (r *replies) flush(u *udpServer) {
	for from, ob := range r.by {
		if ob.Len() == 0 {
			continue
		}
		fd, err := u.p.replies.get(from)
		if err != nil {
			u.p.log.Warn("dns proxy: reply", "err", err)
			ob.Reset()
			continue
		}
		if err := ob.Send(fd); err != nil {
			u.p.log.Warn("dns proxy: reply", "from", from, "err", err)
		}
	}
	for i, pq := range r.answered {
		u.p.emitDNS(&pq.ev, pq.start)
		r.answered[i] = nil
	}
	r.answered = r.answered[:0]
}
