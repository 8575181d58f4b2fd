package dnsproxy

import (
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
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
	u := &udpServer{p: p, servers: map[netip.AddrPort]*serverSock{}}
	t.Cleanup(func() {
		for _, s := range u.servers {
			s.conn.Close()
		}
	})
	old := time.Now().Add(-2 * idleServer)
	open := func(port uint16, lastUsed time.Time, flights int) *serverSock {
		addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
		conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		s := &serverSock{u: u, server: addr, conn: conn, flying: map[uint16]*flight{}, lastUsed: lastUsed}
		for i := range flights {
			s.flying[uint16(i)] = &flight{}
		}
		u.servers[addr] = s
		return s
	}
	idle := open(1001, old, 0)
	busy := open(1002, old, 1)
	recent := open(1003, time.Now(), 0)
	u.reap(time.Now())
	if _, ok := u.servers[idle.server]; ok {
		t.Error("an idle server's socket was kept")
	}
	if _, err := idle.conn.Write([]byte{0}); err == nil {
		t.Error("the idle server's socket is still open")
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
