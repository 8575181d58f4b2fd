// Package l7proxy is the transparent HTTP proxy. The datapath hands it the
// connections of pods to ports with HTTP rules (bpf_sk_assign to its
// IP_TRANSPARENT listener); it reads each HTTP/1.1 request head, forwards
// the requests a rule matches, head as received and body as it comes, to
// the address the pod connected to (from the client's own address, so the
// server's policy still judges the client: see upstream.go), answers the
// others `403 Access denied`, and reports every request and response as an
// L7 HTTP flow. It is an HTTP/1.1 forwarder of its own rather than
// net/http's server and reverse proxy: it parses only what framing and the
// rules need (head.go, body.go). Each client connection has one upstream
// connection of its own and is served by a goroutine (conn.go) or, while
// kept alive between requests and for plain requests, by one epoll loop
// on a thread of its own (loop.go), which hands anything else back to the
// goroutine code.
package l7proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Config configures the proxy.
type Config struct {
	Port uint16
	// HeaderTimeout bounds how long a client may take to send a request's
	// head once it started it (slowloris); IdleTimeout how long a
	// kept-alive connection may wait for its next request, and how long
	// a request body or a write to either side may stall.
	HeaderTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's head (more gets 431).
	MaxHeaderBytes int
	// ConnectTimeout bounds an upstream connect: a server whose policy
	// drops the client's connection never answers (the client gets 503).
	ConnectTimeout time.Duration
}

// Datapath gives identities of addresses and the endpoints behind host
// veths.
type Datapath interface {
	LookupIPCache(addr netip.Addr) uint32
	LookupEndpoint(ifindex uint32) (bpf.EndpointInfo, bool)
}

// Proxy is the HTTP proxy.
type Proxy struct {
	cfg         Config
	dp          Datapath
	emit        func(observe.HTTPEvent)
	log         *slog.Logger
	res         atomic.Pointer[policy.Result]
	ln          net.Listener
	m           matcher
	viaEndpoint func(netip.Addr) (bool, error)
	runCtx      atomic.Pointer[context.Context]
	Allowed     atomic.Uint64
	Denied      atomic.Uint64

	// closing: shutdown began; killed: its grace ran out. conns are the
	// client connections open, in the loop or not.
	closing atomic.Bool
	killed  atomic.Bool
	// loop serves kept-alive connections (loop.go), started on first
	// use; noLoop keeps every connection on its goroutine (tests).
	loop     atomic.Pointer[loop]
	loopOnce sync.Once
	noLoop   bool
	// adopted counts the connections the loop took, looped the requests
	// it forwarded.
	adopted, looped atomic.Uint64
	mu              sync.Mutex
	conns           map[*conn]struct{}
	wg              sync.WaitGroup
}

// shutdownGrace is how long connections serving a request at shutdown
// have to finish it.
const shutdownGrace = 2 * time.Second

// UpstreamMark marks the proxy's connections to servers (PROXY_UPSTREAM_MARK
// in bpf/src/proxy.h): the datapath judges them by the server's ingress
// policy as the client's, but does not hand them to the proxy again when
// that policy has HTTP rules, since the proxy judged the request on both
// sides already; it hands the server's answers to the proxy. It lies in
// the nibble Aegis owns (PROXY_MARK_MASK) and differs from PROXY_MARK, so
// policy routing leaves these packets alone.
const UpstreamMark = 0x0b00

// newProxy is a proxy without its listener.
func newProxy(cfg Config, dp Datapath, emit func(observe.HTTPEvent), log *slog.Logger) *Proxy {
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 3 * time.Second
	}
	if emit == nil {
		emit = func(observe.HTTPEvent) {}
	}
	p := &Proxy{cfg: cfg, dp: dp, emit: emit, log: log}
	p.viaEndpoint = func(a netip.Addr) (bool, error) { return routesToEndpoint(dp, a) }
	return p
}

// New opens the listener.
func New(cfg Config, dp Datapath, emit func(observe.HTTPEvent), log *slog.Logger) (*Proxy, error) {
	p := newProxy(cfg, dp, emit, log)
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range [][2]int{{unix.SOL_IP, unix.IP_TRANSPARENT}, {unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}} {
				if serr = unix.SetsockoptInt(int(fd), o[0], o[1], 1); serr != nil {
					return
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", p.cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("http proxy: listen :%d: %w", p.cfg.Port, err)
	}
	p.ln = ln
	return p, nil
}

// SetPolicy gives the proxy the compiled HTTP rules.
func (p *Proxy) SetPolicy(res *policy.Result) { p.res.Store(res) }

// Run serves until ctx ends, then gives the requests under way
// shutdownGrace to finish.
func (p *Proxy) Run(ctx context.Context) error {
	p.runCtx.Store(&ctx)
	stop := context.AfterFunc(ctx, p.shutdown)
	defer stop()
	var backoff time.Duration
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if p.closing.Load() {
				break
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("http proxy: accept: %w", err)
			}
			// Out of descriptors, a connection aborted before it was
			// taken: wait a little and go on, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.log.Warn("http proxy: accept", "err", err, "retry in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		// The listener is transparent: the connection's local address
		// is the one the pod connected to.
		dst := nc.LocalAddr().(*net.TCPAddr).AddrPort()
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		src := nc.RemoteAddr().(*net.TCPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		p.serveConn(nc, connInfo{src: src, dst: dst, srcID: p.dp.LookupIPCache(src.Addr()), dstID: p.dp.LookupIPCache(dst.Addr())})
	}
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		p.killed.Store(true)
		p.mu.Lock()
		for c := range p.conns {
			c.kill()
		}
		p.mu.Unlock()
		p.stopLoop()
		<-done
	}
	p.stopLoop()
	return nil
}

// shutdown stops accepting and ends the connections waiting for a
// request; the others end after their current one.
func (p *Proxy) shutdown() {
	p.closing.Store(true)
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if c.idle.Load() {
			_ = c.nc.Close()
		}
	}
	// The loop ends its idle ones.
	if l := p.loop.Load(); l != nil {
		l.wake()
	}
}

// ctx is the context upstream connects run in: Run's, so that shutdown
// ends them.
func (p *Proxy) ctx() context.Context {
	if c := p.runCtx.Load(); c != nil {
		return *c
	}
	return context.Background()
}
