package dnsproxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// TestFlights checks the table of queries in flight to one server: each
// gets an ID of its own (not the pod's), an answer finds its query once,
// the sweeper expires exactly the overdue ones, and the table refuses
// queries past its bound rather than growing.
func TestFlights(t *testing.T) {
	p := newProxy(Config{UpstreamTimeout: time.Second, MaxInFlight: 3}, fakeDP{}, nil, nil, nil)
	s := &serverSock{u: &udpServer{p: p}, flying: map[uint16]*flight{}}
	q := func(podID uint16) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b, podID)
		return b
	}
	pqs := []*pendingQuery{{}, {}, {}, {}}
	ids := map[uint16]bool{}
	for i, pq := range pqs[:3] {
		wire, err := s.register(pq, q(7))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		id := binary.BigEndian.Uint16(wire)
		if ids[id] {
			t.Fatalf("query %d got ID %d twice", i, id)
		}
		ids[id] = true
	}
	if _, err := s.register(pqs[3], q(7)); err != errOverloaded {
		t.Fatalf("a fourth query with a bound of 3: %v, want %v", err, errOverloaded)
	}
	if _, err := s.register(pqs[3], []byte{1, 2}); err == nil {
		t.Fatal("a query shorter than a header was registered")
	}
	// The second query's answer.
	f := s.take(1)
	if f == nil || f.pq != pqs[1] || f.podID != 7 {
		t.Fatalf("answer with ID 1 found %+v, want the second query", f)
	}
	if s.take(1) != nil {
		t.Fatal("an answer found its query twice")
	}
	// Nothing is overdue before the timeout; the two left are after it.
	if got := s.expire(time.Now()); len(got) != 0 {
		t.Fatalf("expired %d queries before their deadline", len(got))
	}
	got := s.expire(time.Now().Add(2 * time.Second))
	if len(got) != 2 || got[0].pq != pqs[0] || got[1].pq != pqs[2] {
		t.Fatalf("expired %v, want the first and third queries in order", got)
	}
	if len(s.flying) != 0 || len(s.order) != 0 {
		t.Fatalf("table left with %d flights, %d in order", len(s.flying), len(s.order))
	}
	// An ID comes back free once its query is done.
	if _, err := s.register(pqs[3], q(9)); err != nil {
		t.Fatalf("register after the table emptied: %v", err)
	}
}

// TestReapIdleServers: sockets of servers nobody asked for a while are
// closed, those with queries in flight are kept, and a full table makes
// room by closing idle ones rather than refusing a new server.
func TestReapIdleServers(t *testing.T) {
	p := newProxy(Config{UpstreamTimeout: time.Second}, fakeDP{}, nil, nil, slog.New(slog.DiscardHandler))
	u, err := newUDPServer(p, -1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.closeAll)
	old := time.Now().Add(-2 * idleServer)
	open := func(port uint16, lastUsed time.Time, flights int) *serverSock {
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		s, err := u.server(addr)
		if err != nil {
			t.Fatal(err)
		}
		s.lastUsed = lastUsed
		for i := range flights {
			s.flying[uint16(i)] = &flight{}
		}
		return s
	}
	idle := open(1001, old, 0)
	idleFD := idle.fd
	busy := open(1002, old, 1)
	recent := open(1003, time.Now(), 0)
	u.reap(time.Now())
	if _, ok := u.servers[idle.server]; ok {
		t.Error("an idle server's socket was kept")
	}
	if sa, err := unix.Getpeername(idleFD); err == nil {
		if in4, ok := sa.(*unix.SockaddrInet4); ok && in4.Port == int(idle.server.Port()) {
			t.Error("the idle server's socket is still open")
		}
	}
	if idle.fd != -1 || u.byFD[int32(idleFD)] != nil {
		t.Error("the idle server's socket is still known to the loop")
	}
	for _, s := range []*serverSock{busy, recent} {
		if u.servers[s.server] != s {
			t.Errorf("socket to %s (in flight or used lately) was closed", s.server)
		}
	}
	// Fill the table with idle servers: a new one still gets a socket.
	for i := len(u.servers); i < maxServers; i++ {
		open(uint16(2000+i), old, 0)
	}
	s, err := u.server(netip.MustParseAddrPort("127.0.0.1:3000"))
	if err != nil || s == nil {
		t.Fatalf("a new server with the table full of idle ones: %v", err)
	}
	if len(u.servers) != 3 {
		t.Errorf("%d sockets after making room, want 3 (busy, recent, new)", len(u.servers))
	}
}

// TestServerAnswersAndRefusals drives the UDP path's server side over
// loopback sockets: an allowed query goes to its server with the proxy's
// ID, the server's answer reaches the pod with the pod's ID from a socket
// bound to the server's address, and a server that refuses (ICMP port
// unreachable) gets the pod SERVFAIL at once, not after the timeout.
func TestServerAnswersAndRefusals(t *testing.T) {
	podIP, serverIP := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")
	pod, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(podIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	podAddr := pod.LocalAddr().(*net.UDPAddr).AddrPort()
	// The server, and a port of the same address nothing listens on.
	server, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	serverAddr := server.LocalAddr().(*net.UDPAddr).AddrPort()
	gone, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.LocalAddr().(*net.UDPAddr).AddrPort()
	gone.Close()

	p := newProxy(Config{UpstreamTimeout: 5 * time.Second}, fakeDP{podIP: podID, serverIP: serverID}, nil, nil, slog.New(slog.DiscardHandler))
	p.SetPolicy(&policy.Result{DNS: map[uint32][]policy.DNSRule{podID: {{
		Remotes: []uint32{serverID}, Ports: []policy.ProtoPort{{Proto: policy.ProtoUDP, Port: serverAddr.Port()}, {Proto: policy.ProtoUDP, Port: goneAddr.Port()}},
		Patterns: []cnp.FQDNSelector{{MatchPattern: "*.example.test"}}, Cookie: 10,
	}}}})
	// The loop reads the servers' answers; the test sends the queries
	// itself (the loop has no pods' socket here, so it never touches a
	// server's batch of queries).
	u, err := newUDPServer(p, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.run(ctx)
	}()
	defer func() {
		cancel()
		<-done
		p.replies.close()
	}()
	ask := func(to netip.AddrPort, name string, id uint16) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = id
		q, _ := m.Pack()
		reply, pq := p.decide(q, podAddr, to, policy.ProtoUDP, p.dp)
		if pq == nil {
			t.Fatalf("%s not allowed: %x", name, reply)
		}
		s, err := u.server(to)
		if err != nil {
			t.Fatal(err)
		}
		wire, err := s.register(pq, q)
		if err != nil {
			t.Fatal(err)
		}
		s.out.Add(wire, netip.AddrPort{})
		s.send()
	}
	answerAtPod := func() (*dns.Msg, netip.AddrPort) {
		t.Helper()
		buf := make([]byte, 512)
		pod.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := pod.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no answer at the pod: %v", err)
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		return &m, from
	}

	ask(serverAddr, "a.example.test.", 4242)
	buf := make([]byte, 512)
	server.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, from, err := server.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("query did not reach the server: %v", err)
	}
	var q dns.Msg
	if err := q.Unpack(buf[:n]); err != nil || len(q.Question) != 1 || q.Question[0].Name != "a.example.test." {
		t.Fatalf("server got %v (%v)", q.Question, err)
	}
	r := new(dns.Msg)
	r.SetReply(&q)
	r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: "a.example.test.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
	out, _ := r.Pack()
	// On a node the server is in a pod's namespace; here it shares the
	// proxy's, so it answers from a socket that lets the proxy's reply
	// socket bind the same address.
	server.Close()
	lc := net.ListenConfig{Control: transparent}
	pc, err := lc.ListenPacket(context.Background(), "udp4", serverAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo(out, net.UDPAddrFromAddrPort(from)); err != nil {
		t.Fatal(err)
	}
	got, replyFrom := answerAtPod()
	if got.Id != 4242 || got.Rcode != dns.RcodeSuccess || len(got.Answer) != 1 {
		t.Fatalf("pod got id %d rcode %d answers %v", got.Id, got.Rcode, got.Answer)
	}
	if replyFrom != serverAddr {
		t.Errorf("answer came from %s, want the server's address %s", replyFrom, serverAddr)
	}

	// Nothing listens at the other port: ICMP refuses the query.
	start := time.Now()
	ask(goneAddr, "b.example.test.", 4343)
	got, replyFrom = answerAtPod()
	if got.Id != 4343 || got.Rcode != dns.RcodeServerFailure || replyFrom != goneAddr {
		t.Fatalf("refusing server: pod got id %d rcode %d from %s", got.Id, got.Rcode, replyFrom)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("SERVFAIL for a refusing server after %v; the timeout is 5s, refusal should be at once", d)
	}
}

// TestAnswersOfTwoServersInOneRound: when one wakeup finds answers from
// two servers, each answer reaches the pod as its server sent it, though
// both servers' answers are read into the same buffers.
func TestAnswersOfTwoServersInOneRound(t *testing.T) {
	podIP := netip.MustParseAddr("127.0.0.2")
	serverIPs := []netip.Addr{netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("127.0.0.4")}
	const podID, serverID = 1000, 2000
	pod, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(podIP, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer pod.Close()
	podAddr := pod.LocalAddr().(*net.UDPAddr).AddrPort()
	// The servers' sockets let the proxy's reply sockets bind their
	// addresses too, as a server in a pod's namespace would.
	lc := net.ListenConfig{Control: transparent}
	var servers []net.PacketConn
	var addrs []netip.AddrPort
	for _, ip := range serverIPs {
		pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		servers = append(servers, pc)
		addrs = append(addrs, pc.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	dp := fakeDP{podIP: podID, serverIPs[0]: serverID, serverIPs[1]: serverID}
	p := newProxy(Config{UpstreamTimeout: 5 * time.Second}, dp, nil, nil, slog.New(slog.DiscardHandler))
	p.SetPolicy(&policy.Result{DNS: map[uint32][]policy.DNSRule{podID: {{
		Remotes: []uint32{serverID}, Ports: []policy.ProtoPort{{Proto: policy.ProtoUDP, Port: addrs[0].Port()}, {Proto: policy.ProtoUDP, Port: addrs[1].Port()}},
		Patterns: []cnp.FQDNSelector{{MatchPattern: "*.example.test"}}, Cookie: 10,
	}}}})
	u, err := newUDPServer(p, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		u.closeAll()
		p.replies.close()
	}()

	// Each server gets its query and answers it before the round begins.
	var socks []*serverSock
	for i, to := range addrs {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("s%d.example.test.", i), dns.TypeA)
		m.Id = uint16(100 + i)
		q, _ := m.Pack()
		_, pq := p.decide(q, podAddr, to, policy.ProtoUDP, p.dp)
		if pq == nil {
			t.Fatalf("query to %s not allowed", to)
		}
		s, err := u.server(to)
		if err != nil {
			t.Fatal(err)
		}
		wire, err := s.register(pq, q)
		if err != nil {
			t.Fatal(err)
		}
		s.out.Add(wire, netip.AddrPort{})
		s.send()
		socks = append(socks, s)

		buf := make([]byte, 512)
		servers[i].SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := servers[i].ReadFrom(buf)
		if err != nil {
			t.Fatalf("query did not reach server %d: %v", i, err)
		}
		var got dns.Msg
		if err := got.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		r.SetReply(&got)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: got.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(1+i))})
		out, _ := r.Pack()
		if _, err := servers[i].WriteTo(out, from); err != nil {
			t.Fatal(err)
		}
	}

	// One round in which epoll reported both servers.
	r := u.newRound()
	for _, s := range socks {
		if !u.ready(int32(s.fd), r) {
			t.Fatal("a server's socket taken for the stop signal")
		}
	}
	u.finish(r, time.Now())

	got := map[netip.AddrPort]*dns.Msg{}
	for range addrs {
		buf := make([]byte, 512)
		pod.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := pod.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("answers at the pod: %d of 2: %v", len(got), err)
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		got[from] = &m
	}
	for i, from := range addrs {
		m := got[from]
		if m == nil {
			t.Fatalf("no answer from server %d (%s); got answers from %v", i, from, got)
		}
		wantName := fmt.Sprintf("s%d.example.test.", i)
		if m.Id != uint16(100+i) || len(m.Question) != 1 || m.Question[0].Name != wantName || len(m.Answer) != 1 {
			t.Fatalf("answer from server %d: id %d question %v answers %v; want id %d for %s", i, m.Id, m.Question, m.Answer, 100+i, wantName)
		}
		if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IPv4(192, 0, 2, byte(1+i))) {
			t.Fatalf("answer from server %d: %v, want 192.0.2.%d", i, m.Answer[0], 1+i)
		}
	}
}
