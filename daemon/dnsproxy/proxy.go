// Package dnsproxy is the transparent DNS proxy. The datapath hands it the
// DNS traffic of pods whose policy has DNS rules (bpf_sk_assign to its
// IP_TRANSPARENT sockets); it lets through the queries the rules allow to
// the server the pod asked, refuses the others, learns from each answer
// the addresses of names that toFQDNs rules select and writes them to the
// datapath before the pod sees the answer, and reports every query as an
// L7 DNS flow.
package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
)

// Config configures the proxy.
type Config struct {
	// Port is where the proxy listens (UDP and TCP) on every address of
	// the node; the datapath learns it from the caller.
	Port uint16
	// RefuseCode answers queries no rule allows: dns.RcodeRefused (as
	// Cilium) or dns.RcodeNameError.
	RefuseCode int
	// UpstreamTimeout bounds a query's trip to its server; past it the
	// pod gets SERVFAIL.
	UpstreamTimeout time.Duration
	// MaxInFlight bounds the UDP queries waiting for one server at once;
	// past it, queries get SERVFAIL at once rather than queueing.
	MaxInFlight int
}

// Datapath is what the proxy needs of the datapath: identities of
// addresses.
type Datapath interface {
	LookupIPCache(addr netip.Addr) uint32
}

// Proxy is a running DNS proxy. Create it with New, start it with Run.
type Proxy struct {
	cfg     Config
	dp      Datapath
	cache   *fqdn.Cache
	log     *slog.Logger
	emit    func(observe.DNSEvent)
	rules   atomic.Pointer[rules]
	replies replySockets
	udp     int // the UDP loop's listening socket (sockets.go)
	tcp     net.Listener
	stats   Stats
	// upstream forwards a query to the server the pod asked (exchange;
	// tests replace it).
	upstream func(query []byte, server netip.AddrPort, proto uint8) ([]byte, error)
}

// Stats count what the proxy did.
type Stats struct {
	Queries, Allowed, Refused, Malformed, UpstreamErrors, Learned atomic.Uint64
}

// newProxy is a proxy without sockets: handle works, Run does not.
func newProxy(cfg Config, dp Datapath, cache *fqdn.Cache, emit func(observe.DNSEvent), log *slog.Logger) *Proxy {
	if cfg.RefuseCode == 0 {
		cfg.RefuseCode = dns.RcodeRefused
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 4096
	}
	if emit == nil {
		emit = func(observe.DNSEvent) {}
	}
	p := &Proxy{cfg: cfg, dp: dp, cache: cache, emit: emit, log: log, udp: -1}
	p.upstream = p.exchange
	return p
}

// New opens the proxy's sockets. emit receives every query and answer (nil:
// none), to become L7 DNS flows.
func New(cfg Config, dp Datapath, cache *fqdn.Cache, emit func(observe.DNSEvent), log *slog.Logger) (*Proxy, error) {
	p := newProxy(cfg, dp, cache, emit, log)
	var err error
	if p.udp, err = listenUDP(cfg.Port); err != nil {
		return nil, err
	}
	if p.tcp, err = listenTCP(cfg.Port); err != nil {
		unix.Close(p.udp)
		return nil, err
	}
	return p, nil
}

// rules are a policy's DNS and toFQDNs rules with their selectors
// compiled, once per policy rather than per query.
type rules struct {
	res  *policy.Result
	sels map[cnp.FQDNSelector]fqdn.Selector // selectors that compile
}

// SetPolicy gives the proxy the compiled policy: the DNS rules it enforces
// and the toFQDNs rules it learns for. The caller sets it before the
// datapath redirects traffic under it.
func (p *Proxy) SetPolicy(res *policy.Result) {
	r := &rules{res: res, sels: map[cnp.FQDNSelector]fqdn.Selector{}}
	compile := func(list []cnp.FQDNSelector) {
		for _, s := range list {
			if _, done := r.sels[s]; done {
				continue
			}
			// A selector that does not compile matches nothing (the
			// policy parser rejects them before they get here).
			if sel, err := fqdn.Compile(s.MatchName, s.MatchPattern); err == nil {
				r.sels[s] = sel
			}
		}
	}
	if res != nil {
		for _, rs := range res.DNS {
			for _, d := range rs {
				compile(d.Patterns)
			}
		}
		for _, rs := range res.FQDN {
			for _, f := range rs {
				compile(f.Selectors)
			}
		}
	}
	p.rules.Store(r)
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() *Stats { return &p.stats }

// Run serves until ctx ends, then closes the proxy's sockets.
func (p *Proxy) Run(ctx context.Context) error {
	u, err := newUDPServer(p, p.udp)
	if err != nil {
		p.tcp.Close()
		unix.Close(p.udp)
		return err
	}
	go func() {
		<-ctx.Done()
		p.tcp.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.serveTCP(ctx)
	}()
	u.run(ctx)
	wg.Wait()
	// The UDP loop and its sweeper send from the reply sockets: they go
	// once both have stopped.
	p.replies.close()
	unix.Close(p.udp)
	return nil
}

func (p *Proxy) serveTCP(ctx context.Context) {
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go p.serveConn(ctx, c)
	}
}

// serveConn answers the queries of one TCP connection, in order, until the
// pod closes it or stays idle.
func (p *Proxy) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	for ctx.Err() == nil {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		query, err := readTCPMsg(c)
		if err != nil {
			return
		}
		resp := p.handle(query, src, dst, policy.ProtoTCP)
		if resp == nil {
			return
		}
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := writeTCPMsg(c, resp); err != nil {
			return
		}
	}
}

func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	msg := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, err
	}
	return msg, nil
}

func writeTCPMsg(w io.Writer, msg []byte) error {
	out := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(out, uint16(len(msg)))
	copy(out[2:], msg)
	_, err := w.Write(out)
	return err
}

// errReply builds an answer carrying only rcode for q's header and
// question.
func errReply(q *dns.Msg, rcode int) []byte {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	m.RecursionAvailable = true
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// formErr answers a query that does not parse, when its header does.
func formErr(query []byte) []byte {
	if len(query) < 12 {
		return nil
	}
	var h dns.Msg
	h.Id = binary.BigEndian.Uint16(query[:2])
	h.Response = true
	h.Rcode = dns.RcodeFormatError
	b, _ := h.Pack()
	return b
}

// handle decides one query and returns the answer for the pod, or nil for
// none: decide, then the server's trip, then finish.
func (p *Proxy) handle(query []byte, src, dst netip.AddrPort, proto uint8) []byte {
	reply, pq := p.decide(query, src, dst, proto, p.dp)
	if pq == nil {
		return reply
	}
	raw, err := p.upstream(query, dst, proto)
	return p.finish(pq, raw, err)
}

// pendingQuery is an allowed query on its way to its server: what finish
// needs to judge the answer.
type pendingQuery struct {
	ev    dnsEvent
	rs    *rules
	start time.Time
}

// decide judges one query. A query the pod gets no server's answer to
// (refused, malformed) comes back as reply (nil: no answer at all); an
// allowed one as pq, to be forwarded to dst as it came. ids gives the
// identities of addresses.
func (p *Proxy) decide(query []byte, src, dst netip.AddrPort, proto uint8, ids Datapath) (reply []byte, pq *pendingQuery) {
	p.stats.Queries.Add(1)
	start := time.Now()
	var q dns.Msg
	if err := q.Unpack(query); err != nil {
		p.stats.Malformed.Add(1)
		return formErr(query), nil
	}
	local := ids.LookupIPCache(src.Addr())
	remote := ids.LookupIPCache(dst.Addr())
	ev := dnsEvent{src: src, dst: dst, local: local, remote: remote, proto: proto, q: &q}
	if q.Response || q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 {
		p.stats.Malformed.Add(1)
		ev.verdict = flow.Verdict_DROPPED
		p.emitDNS(&ev, start)
		return errReply(&q, dns.RcodeFormatError), nil
	}
	rs := p.rules.Load()
	name := q.Question[0].Name
	var dnsRules []policy.DNSRule
	if rs != nil && rs.res != nil {
		dnsRules = rs.res.DNSPatterns(local, remote, proto, dst.Port())
	}
	var cookie uint32
	for _, r := range dnsRules {
		if rs.matchesAny(r.Patterns, name) {
			cookie = r.Cookie
			break
		}
	}
	if cookie == 0 {
		p.stats.Refused.Add(1)
		ev.verdict = flow.Verdict_DROPPED
		if len(dnsRules) > 0 {
			ev.cookie = dnsRules[0].Cookie
		}
		p.emitDNS(&ev, start)
		return errReply(&q, p.cfg.RefuseCode), nil
	}
	p.stats.Allowed.Add(1)
	// An allowed query is reported once, with its answer (a RESPONSE flow
	// carries the query too): the event stream costs as much CPU as the
	// proxying itself, so it carries no REQUEST twin.
	ev.verdict, ev.cookie = flow.Verdict_FORWARDED, cookie
	return nil, &pendingQuery{ev: ev, rs: rs, start: start}
}

// finish judges the server's answer and reports it.
func (p *Proxy) finish(pq *pendingQuery, raw []byte, err error) []byte {
	out := p.judge(pq, raw, err)
	p.emitDNS(&pq.ev, pq.start)
	return out
}

// judge judges the server's answer raw (or the failure err) to an allowed
// query: it learns the addresses toFQDNs rules select, before the pod can
// see them, and returns what the pod gets: raw itself, or SERVFAIL. The
// caller reports the answer (emitDNS), after sending it if it likes: the
// report need not delay the pod.
func (p *Proxy) judge(pq *pendingQuery, raw []byte, err error) []byte {
	ev := &pq.ev
	var resp dns.Msg
	if err == nil {
		err = resp.Unpack(raw)
	}
	if err == nil && !answers(&resp, ev.q) {
		// What the proxy learns is named by the answer's question: one
		// that is not the pod's could open addresses of another name.
		err = errors.New("answer to another question")
	}
	if err != nil {
		p.stats.UpstreamErrors.Add(1)
		p.log.Debug("dns proxy: upstream", "server", ev.dst, "name", ev.q.Question[0].Name, "err", err)
		out := errReply(ev.q, dns.RcodeServerFailure)
		var fail dns.Msg
		fail.SetRcode(ev.q, dns.RcodeServerFailure)
		ev.resp = &fail
		return out
	}
	ev.resp = &resp
	ev.names, ev.ips, ev.ttl = chain(&resp)
	if err := p.learn(pq.rs, ev.local, ev.src.Addr(), ev); err != nil {
		p.log.Warn("dns proxy: learn", "name", ev.q.Question[0].Name, "err", err)
	}
	return raw
}

// answers says whether resp answers q: a response with q's ID and q's
// question (or none, as some servers send with an error code).
func answers(resp, q *dns.Msg) bool {
	if !resp.Response || resp.Id != q.Id || len(resp.Question) > 1 {
		return false
	}
	if len(resp.Question) == 0 {
		return resp.Rcode != dns.RcodeSuccess
	}
	a, b := resp.Question[0], q.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// matchesAny reports whether one of sels matches name.
func (rs *rules) matchesAny(sels []cnp.FQDNSelector, name string) bool {
	for _, s := range sels {
		if sel, ok := rs.sels[s]; ok && sel.Matches(name) {
			return true
		}
	}
	return false
}

// exchange forwards the query, as the pod sent it, to the server the pod
// asked, over the protocol the pod used, on a connection of its own: the
// path of TCP queries (UDP ones go through udp.go's batches).
func (p *Proxy) exchange(query []byte, server netip.AddrPort, proto uint8) ([]byte, error) {
	network := "tcp4"
	if proto == policy.ProtoUDP {
		network = "udp4"
	}
	deadline := time.Now().Add(p.cfg.UpstreamTimeout)
	c, err := net.DialTimeout(network, server.String(), p.cfg.UpstreamTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if proto == policy.ProtoUDP {
		if _, err := c.Write(query); err != nil {
			return nil, err
		}
		buf := make([]byte, answerBuf)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return nil, err
			}
			// Only the answer to this query: same ID.
			if n >= 12 && len(query) >= 2 && buf[0] == query[0] && buf[1] == query[1] {
				return buf[:n], nil
			}
		}
	}
	if err := writeTCPMsg(c, query); err != nil {
		return nil, err
	}
	return readTCPMsg(c)
}

// learn writes the addresses of names the local identity's toFQDNs rules
// select, following CNAME chains from the question: every name of the
// chain is matched, and the addresses at its end are learned for it.
func (p *Proxy) learn(rs *rules, local uint32, src netip.Addr, ev *dnsEvent) error {
	if rs == nil || rs.res == nil || ev.resp.Rcode != dns.RcodeSuccess || len(ev.resp.Question) != 1 || len(ev.ips) == 0 {
		return nil
	}
	fqdnRules := rs.res.FQDN[local]
	if len(fqdnRules) == 0 {
		return nil
	}
	var grants []fqdn.Grant
	for _, r := range fqdnRules {
		matched := ""
		for _, s := range r.Selectors {
			sel, ok := rs.sels[s]
			if !ok {
				continue
			}
			for _, n := range ev.names {
				if sel.Matches(n) {
					matched = sel.Source
					break
				}
			}
			if matched != "" {
				break
			}
		}
		if matched == "" {
			continue
		}
		for _, pp := range r.Ports {
			grants = append(grants, fqdn.Grant{Selector: matched, Proto: pp.Proto, Port: pp.Port, Cookie: r.Cookie})
		}
	}
	if len(grants) == 0 {
		return nil
	}
	p.stats.Learned.Add(uint64(len(ev.ips)))
	return p.cache.Learn(local, src.String(), ev.names[0], ev.ips, ev.ttl, grants)
}

// chain returns the question's name and the CNAME targets reached from it,
// the IPv4 addresses at the end of the chain, and the smallest TTL along
// it.
func chain(resp *dns.Msg) (names []string, ips []netip.Addr, ttl time.Duration) {
	if len(resp.Question) == 0 {
		return nil, nil, 0
	}
	q := dns.CanonicalName(resp.Question[0].Name)
	names = []string{q}
	inChain := map[string]bool{q: true}
	minTTL := uint32(0)
	seen := false
	note := func(t uint32) {
		if !seen || t < minTTL {
			minTTL, seen = t, true
		}
	}
	// CNAMEs may come in any order; follow them to a fixed point, at most
	// as many steps as there are records (no loops).
	for range len(resp.Answer) {
		grew := false
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && inChain[dns.CanonicalName(c.Hdr.Name)] && !inChain[dns.CanonicalName(c.Target)] {
				t := dns.CanonicalName(c.Target)
				inChain[t] = true
				names = append(names, t)
				note(c.Hdr.Ttl)
				grew = true
			}
		}
		if !grew {
			break
		}
	}
	for _, rr := range resp.Answer {
		if a, ok := rr.(*dns.A); ok && inChain[dns.CanonicalName(a.Hdr.Name)] {
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				ips = append(ips, ip)
				note(a.Hdr.Ttl)
			}
		}
	}
	return names, ips, time.Duration(minTTL) * time.Second
}

// String describes the proxy for logs.
func (p *Proxy) String() string { return fmt.Sprintf("dns proxy on :%d", p.cfg.Port) }
