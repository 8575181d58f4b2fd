package dnsproxy

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// BenchmarkHandle drives the proxy's work on a query (decision, the
// server's answer judged, learning, the event encoded for a follower) with
// answers a miekg server on loopback gave once. The sockets (IP_ORIGDSTADDR,
// the batches, reply sockets bound to the server's address) need the
// datapath's redirect and are measured by e2e/bench BenchmarkDNSProxy.
func BenchmarkHandle(b *testing.B) {
	pod := netip.MustParseAddrPort("127.0.0.1:40000")
	server := startUpstream(b, "127.0.0.2:0")
	dp := fakeDP{pod.Addr(): podID, server.Addr(): serverID}
	dnsRule := policy.DNSRule{Remotes: []uint32{serverID}, Ports: []policy.ProtoPort{{Proto: policy.ProtoUDP, Port: server.Port()}},
		Patterns: []cnp.FQDNSelector{{MatchName: "api.example.com"}, {MatchPattern: "*.example.test"}}, Cookie: 10}
	for _, tc := range []struct {
		name string
		res  *policy.Result
	}{
		{"dns-rule", &policy.Result{DNS: map[uint32][]policy.DNSRule{podID: {dnsRule}}}},
		{"learn", &policy.Result{DNS: map[uint32][]policy.DNSRule{podID: {dnsRule}},
			FQDN: map[uint32][]policy.FQDNRule{podID: {{Selectors: []cnp.FQDNSelector{{MatchPattern: "*.example.test"}},
				Ports: []policy.ProtoPort{{Proto: policy.ProtoTCP, Port: 443}}, Cookie: 11}}}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m := &fakeMap{m: map[bpf.FQDNKey]uint32{}}
			cache, err := fqdn.NewCache(m, fqdn.Options{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			events := &Events{}
			var got atomic.Uint64
			stop := drainEvents(b, events, &got)
			p := newProxy(Config{UpstreamTimeout: time.Second}, dp, cache,
				func(ev observe.DNSEvent) { events.Emit(observe.L7Event{DNS: &ev}) }, slog.New(slog.DiscardHandler))
			p.SetPolicy(tc.res)
			queries := make([][]byte, 100)
			answers := map[string][]byte{}
			for i := range queries {
				queries[i] = query(fmt.Sprintf("q%d.example.test.", i), dns.TypeA)
				a, err := p.exchange(queries[i], server, policy.ProtoUDP)
				if err != nil {
					b.Fatal(err)
				}
				answers[string(queries[i])] = a
			}
			p.upstream = func(q []byte, _ netip.AddrPort, _ uint8) ([]byte, error) { return answers[string(q)], nil }
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					resp := p.handle(queries[i%len(queries)], pod, server, policy.ProtoUDP)
					if len(resp) < 12 || resp[3]&0xf != dns.RcodeSuccess {
						b.Errorf("query %d: answer %x", i, resp)
						return
					}
					i++
				}
			})
			b.StopTimer()
			stop()
			if p.stats.UpstreamErrors.Load() != 0 {
				b.Fatalf("%d upstream errors", p.stats.UpstreamErrors.Load())
			}
			// Every name resolves to one address: one datapath entry.
			if tc.name == "learn" && len(m.m) != 1 {
				b.Fatalf("learned %d datapath entries, want 1", len(m.m))
			}
			if got.Load() == 0 {
				b.Fatal("no events reached the follower")
			}
		})
	}
}

// startUpstream runs a DNS server answering every A query with one
// address.
func startUpstream(tb testing.TB, addr string) netip.AddrPort {
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		tb.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A: net.IPv4(203, 0, 113, 1)})
		_ = w.WriteMsg(r)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	tb.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// drainEvents follows events as the control socket does, decoding every
// frame, and counts them.
func drainEvents(tb testing.TB, events *Events, got *atomic.Uint64) func() {
	f, cancel := events.subscribe()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var spare, buf []byte
		for {
			select {
			case <-done:
				return
			case <-f.ready:
			}
			out := f.take(spare)
			r := bufio.NewReader(bytes.NewReader(out))
			for {
				var err error
				var ev observe.L7Event
				ev, buf, err = readFrame(r, buf)
				if err != nil {
					break
				}
				if ev.DNS != nil {
					got.Add(1)
				}
			}
			spare = out
		}
	}()
	return func() {
		close(done)
		<-finished
		cancel()
	}
}
