package dnsproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

type fakeDP map[netip.Addr]uint32

func (f fakeDP) LookupIPCache(a netip.Addr) uint32 {
	if id, ok := f[a]; ok {
		return id
	}
	return policy.IdentityWorld
}

type fakeMap struct {
	mu sync.Mutex
	m  map[bpf.FQDNKey]uint32
}

func (f *fakeMap) PutFQDN(k bpf.FQDNKey, c uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[k] = c
	return nil
}

func (f *fakeMap) DeleteFQDN(k bpf.FQDNKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, k)
	return nil
}

var (
	podAddr    = netip.MustParseAddrPort("10.244.1.3:40000")
	serverAddr = netip.MustParseAddrPort("10.244.1.6:53")
)

const (
	podID    = 300
	serverID = 301
)

// testProxy is a proxy without sockets whose upstream answers with
// answer(query).
func testProxy(t testing.TB, answer func(q *dns.Msg) ([]byte, error)) (*Proxy, *fakeMap, *[]observe.DNSEvent) {
	m := &fakeMap{m: map[bpf.FQDNKey]uint32{}}
	cache, err := fqdn.NewCache(m, fqdn.Options{MaxIPsPerName: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var events []observe.DNSEvent
	p := newProxy(Config{UpstreamTimeout: 200 * time.Millisecond}, fakeDP{podAddr.Addr(): podID, serverAddr.Addr(): serverID}, cache,
		func(ev observe.DNSEvent) { mu.Lock(); events = append(events, ev); mu.Unlock() }, slog.New(slog.DiscardHandler))
	p.upstream = func(query []byte, server netip.AddrPort, proto uint8) ([]byte, error) {
		var q dns.Msg
		if err := q.Unpack(query); err != nil {
			return nil, err
		}
		return answer(&q)
	}
	p.SetPolicy(&policy.Result{
		DNS: map[uint32][]policy.DNSRule{podID: {{
			Remotes: []uint32{serverID}, Ports: []policy.ProtoPort{{Proto: policy.ProtoUDP, Port: 53}, {Proto: policy.ProtoTCP, Port: 53}},
			Patterns: []cnp.FQDNSelector{{MatchPattern: "*.microsoft.com"}, {MatchName: "rabbitmq.pets.svc.cluster.local"}}, Cookie: 10,
		}}},
		FQDN: map[uint32][]policy.FQDNRule{podID: {{
			Selectors: []cnp.FQDNSelector{{MatchPattern: "*.microsoft.com"}}, Ports: []policy.ProtoPort{{Proto: policy.ProtoTCP, Port: 443}}, Cookie: 11,
		}}},
	})
	return p, m, &events
}

func aAnswer(q *dns.Msg, ips ...string) ([]byte, error) {
	r := new(dns.Msg)
	r.SetReply(q)
	for _, ip := range ips {
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(ip)})
	}
	return r.Pack()
}

func query(name string, qtype uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	b, _ := m.Pack()
	return b
}

func rcodeOf(t *testing.T, b []byte) int {
	t.Helper()
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return m.Rcode
}

func TestAllowLearnRefuse(t *testing.T) {
	p, m, events := testProxy(t, func(q *dns.Msg) ([]byte, error) { return aAnswer(q, "203.0.113.20") })
	resp := p.handle(query("www.microsoft.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)
	if rcodeOf(t, resp) != dns.RcodeSuccess {
		t.Fatalf("allowed query: rcode %d", rcodeOf(t, resp))
	}
	k := bpf.FQDNKey{Local: podID, Addr: netip.MustParseAddr("203.0.113.20"), Proto: policy.ProtoTCP, Port: 443}
	if m.m[k] != 11 {
		t.Errorf("learned entries %v, want %+v with cookie 11", m.m, k)
	}
	resp = p.handle(query("www.bing.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)
	if rcodeOf(t, resp) != dns.RcodeRefused {
		t.Errorf("refused query: rcode %d", rcodeOf(t, resp))
	}
	// A name the DNS rules allow but no toFQDNs selects learns nothing.
	p.handle(query("rabbitmq.pets.svc.cluster.local.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)
	if len(m.m) != 1 {
		t.Errorf("entries %v", m.m)
	}
	// Another server, or another port, has no DNS rule: refused.
	other := netip.MustParseAddrPort("10.244.1.9:53")
	if rcodeOf(t, p.handle(query("www.microsoft.com.", dns.TypeA), podAddr, other, policy.ProtoUDP)) != dns.RcodeRefused {
		t.Error("a server the rules do not name answered")
	}
	var drops int
	for _, ev := range *events {
		if ev.Query == "www.bing.com." && ev.Cookie == 10 && !ev.Response {
			drops++
		}
	}
	if drops != 1 {
		t.Errorf("refused query events: %d, events %+v", drops, *events)
	}
}

func TestBadInput(t *testing.T) {
	p, m, _ := testProxy(t, func(q *dns.Msg) ([]byte, error) { return aAnswer(q, "203.0.113.20") })
	// Not DNS at all: too short for a header, no answer.
	if resp := p.handle([]byte{1, 2, 3}, podAddr, serverAddr, policy.ProtoUDP); resp != nil {
		t.Errorf("answered garbage: %v", resp)
	}
	// A header with a broken body: FORMERR with the query's ID.
	bad := append(query("www.microsoft.com.", dns.TypeA)[:12], 0xff, 0xff)
	resp := p.handle(bad, podAddr, serverAddr, policy.ProtoUDP)
	if resp == nil || rcodeOf(t, resp) != dns.RcodeFormatError || binary.BigEndian.Uint16(resp) != binary.BigEndian.Uint16(bad) {
		t.Errorf("malformed query: %v", resp)
	}
	// A compression loop in the question name.
	loop := query("a.", dns.TypeA)[:12]
	loop = append(loop, 0xc0, 12, 0, 1, 0, 1)
	if resp := p.handle(loop, podAddr, serverAddr, policy.ProtoUDP); resp == nil || rcodeOf(t, resp) != dns.RcodeFormatError {
		t.Errorf("compression loop: %v", resp)
	}
	// Two questions.
	two := new(dns.Msg)
	two.SetQuestion("www.microsoft.com.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "learn.microsoft.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	b, _ := two.Pack()
	if resp := p.handle(b, podAddr, serverAddr, policy.ProtoUDP); rcodeOf(t, resp) != dns.RcodeFormatError {
		t.Error("two questions were not FORMERR")
	}
	if len(m.m) != 0 {
		t.Errorf("bad input learned %v", m.m)
	}
}

func TestUpstreamFailures(t *testing.T) {
	// An upstream that never answers: SERVFAIL, quickly.
	p, _, _ := testProxy(t, func(q *dns.Msg) ([]byte, error) {
		time.Sleep(250 * time.Millisecond)
		return nil, errors.New("i/o timeout")
	})
	start := time.Now()
	resp := p.handle(query("www.microsoft.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)
	if rcodeOf(t, resp) != dns.RcodeServerFailure || time.Since(start) > time.Second {
		t.Errorf("upstream timeout: rcode %d after %v", rcodeOf(t, resp), time.Since(start))
	}
	// An answer that does not parse: SERVFAIL, nothing learned.
	p, m, _ := testProxy(t, func(q *dns.Msg) ([]byte, error) { return []byte{0, 1, 2}, nil })
	if rcodeOf(t, p.handle(query("www.microsoft.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)) != dns.RcodeServerFailure || len(m.m) != 0 {
		t.Error("a broken answer was passed on or learned from")
	}
	// Thousands of addresses: passed on whole, at most the cap learned.
	var ips []string
	for i := range 3000 {
		ips = append(ips, fmt.Sprintf("198.51.%d.%d", 100+i/250, 1+i%250))
	}
	p, m, _ = testProxy(t, func(q *dns.Msg) ([]byte, error) { return aAnswer(q, ips...) })
	resp = p.handle(query("big.microsoft.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoTCP)
	var r dns.Msg
	if err := r.Unpack(resp); err != nil || len(r.Answer) != 3000 {
		t.Errorf("a 3000-address answer came back with %d records (%v)", len(r.Answer), err)
	}
	if len(m.m) != 50 {
		t.Errorf("learned %d addresses for one name, cap 50", len(m.m))
	}
}

// TestAnswerMustMatchQuestion: what the proxy learns is named by the
// answer's question, so an answer to another question (or with another
// ID) is SERVFAIL and teaches nothing; an error answer without a question
// passes.
func TestAnswerMustMatchQuestion(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(q *dns.Msg) ([]byte, error)
		rcode  int
	}{
		{"another name", func(q *dns.Msg) ([]byte, error) {
			other := q.Copy()
			other.Question[0].Name = "login.microsoft.com."
			return aAnswer(other, "203.0.113.99")
		}, dns.RcodeServerFailure},
		{"another type", func(q *dns.Msg) ([]byte, error) {
			other := q.Copy()
			other.Question[0].Qtype = dns.TypeMX
			return aAnswer(other, "203.0.113.99")
		}, dns.RcodeServerFailure},
		{"another id", func(q *dns.Msg) ([]byte, error) {
			other := q.Copy()
			other.Id++
			return aAnswer(other, "203.0.113.99")
		}, dns.RcodeServerFailure},
		{"a query, not an answer", func(q *dns.Msg) ([]byte, error) { return q.Pack() }, dns.RcodeServerFailure},
		{"name in other case", func(q *dns.Msg) ([]byte, error) {
			other := q.Copy()
			other.Question[0].Name = "WWW.Microsoft.COM."
			return aAnswer(other, "203.0.113.99")
		}, dns.RcodeSuccess},
		{"refused without a question", func(q *dns.Msg) ([]byte, error) {
			r := new(dns.Msg)
			r.SetRcode(q, dns.RcodeRefused)
			r.Question = nil
			return r.Pack()
		}, dns.RcodeRefused},
	} {
		p, m, _ := testProxy(t, tc.answer)
		resp := p.handle(query("www.microsoft.com.", dns.TypeA), podAddr, serverAddr, policy.ProtoUDP)
		if got := rcodeOf(t, resp); got != tc.rcode {
			t.Errorf("%s: rcode %d, want %d", tc.name, got, tc.rcode)
		}
		if tc.rcode != dns.RcodeSuccess && len(m.m) != 0 {
			t.Errorf("%s: learned %v", tc.name, m.m)
		}
	}
}

func TestChainFollowsCNAMEs(t *testing.T) {
	r := new(dns.Msg)
	r.SetQuestion("alias.microsoft.com.", dns.TypeA)
	hdr := func(name string, typ uint16, ttl uint32) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl}
	}
	r.Answer = []dns.RR{
		&dns.A{Hdr: hdr("edge.example.net.", dns.TypeA, 30), A: net.ParseIP("203.0.113.7")},
		&dns.CNAME{Hdr: hdr("mid.example.org.", dns.TypeCNAME, 100), Target: "edge.example.net."},
		&dns.CNAME{Hdr: hdr("alias.microsoft.com.", dns.TypeCNAME, 300), Target: "mid.example.org."},
		&dns.A{Hdr: hdr("unrelated.example.", dns.TypeA, 5), A: net.ParseIP("203.0.113.8")},
		// A loop must not hang the walk.
		&dns.CNAME{Hdr: hdr("edge.example.net.", dns.TypeCNAME, 10), Target: "alias.microsoft.com."},
	}
	names, ips, ttl := chain(r)
	if len(names) != 3 || len(ips) != 1 || ips[0] != netip.MustParseAddr("203.0.113.7") || ttl != 30*time.Second {
		t.Errorf("chain: %v %v %v", names, ips, ttl)
	}
}

func FuzzHandle(f *testing.F) {
	f.Add(query("www.microsoft.com.", dns.TypeA), []byte(nil))
	good, _ := aAnswer(func() *dns.Msg { m := new(dns.Msg); m.SetQuestion("www.microsoft.com.", dns.TypeA); return m }(), "203.0.113.1")
	f.Add(query("www.microsoft.com.", dns.TypeA), good)
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, good)
	f.Fuzz(func(t *testing.T, q, answer []byte) {
		p, _, _ := testProxy(t, func(*dns.Msg) ([]byte, error) { return answer, nil })
		p.upstream = func([]byte, netip.AddrPort, uint8) ([]byte, error) { return answer, nil }
		resp := p.handle(q, podAddr, serverAddr, policy.ProtoUDP)
		if resp == nil {
			return
		}
		// Whatever comes back is either the upstream's bytes or an answer
		// the proxy built, which must parse.
		if string(resp) != string(answer) {
			var m dns.Msg
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("the proxy built an answer that does not parse: %v", err)
			}
		}
	})
}
