// Package l7proxy is the transparent HTTP proxy. The datapath hands it the
// connections of pods to ports with HTTP rules (bpf_sk_assign to its
// IP_TRANSPARENT listener); it reads each HTTP/1.1 request, forwards those
// a rule matches to the address the pod connected to (from the client's
// own address, so the server's policy still judges the client: see
// upstream.go), answers the others `403 Access denied`, and reports every
// request and response as an L7 HTTP flow.
package l7proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Config configures the proxy.
type Config struct {
	Port uint16
	// HeaderTimeout bounds how long a client may take to send a request's
	// headers (slowloris); IdleTimeout how long a kept-alive connection may
	// wait for its next request.
	HeaderTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers (more gets 431).
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
	cfg  Config
	dp   Datapath
	emit func(observe.HTTPEvent)
	log  *slog.Logger
	res  atomic.Pointer[policy.Result]
	ln   net.Listener
	srv  *http.Server
	rp   *httputil.ReverseProxy
	m    matcher
	// shared is the transport of connections from the node's address;
	// conns the client connections open, to close their own transports.
	shared      *http.Transport
	conns       sync.Map // net.Conn -> *connInfo
	viaEndpoint func(netip.Addr) (bool, error)
	Allowed     atomic.Uint64
	Denied      atomic.Uint64
}

type ctxKey int

const (
	keyDst ctxKey = iota
	keyConn
	keyEvent
)

// connInfo is what the proxy knows of a pod's connection, looked up once
// per connection rather than per request.
type connInfo struct {
	src, dst     netip.AddrPort
	srcID, dstID uint32
	up           upstream
}

// UpstreamMark marks the proxy's connections to servers (PROXY_UPSTREAM_MARK
// in bpf/src/proxy.h): the datapath judges them by the server's ingress
// policy as the client's, but does not hand them to the proxy again when
// that policy has HTTP rules, since the proxy judged the request on both
// sides already; it hands the server's answers to the proxy. It lies in
// the nibble Aegis owns (PROXY_MARK_MASK) and differs from PROXY_MARK, so
// policy routing leaves these packets alone.
const UpstreamMark = 0x0b00

// New opens the listener.
func New(cfg Config, dp Datapath, emit func(observe.HTTPEvent), log *slog.Logger) (*Proxy, error) {
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
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("http proxy: listen :%d: %w", cfg.Port, err)
	}
	p.ln = ln
	p.shared = newTransport(cfg.IdleTimeout, false, func(ctx context.Context) (net.Conn, error) {
		dst, _ := ctx.Value(keyDst).(netip.AddrPort)
		return dialUpstream(ctx, netip.AddrPort{}, dst, cfg.ConnectTimeout)
	})
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			dst, _ := pr.In.Context().Value(keyDst).(netip.AddrPort)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = dst.String()
			// The client's view stays: its Host header, no X-Forwarded-*.
			pr.Out.Host = pr.In.Host
		},
		Transport: roundTripper{p},
		// No flush after every write: a response of known length goes out
		// in as few writes as its size allows (a large one still streams,
		// buffer by buffer), and ReverseProxy flushes streaming responses
		// (unknown length, event streams) at once by itself.
		FlushInterval: 0,
		// Without a pool ReverseProxy allocates (and clears) a 32 KiB
		// copy buffer for every response.
		BufferPool: copyBuffers{},
		ModifyResponse: func(resp *http.Response) error {
			p.respond(resp.Request.Context(), uint32(resp.StatusCode))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			code := upstreamStatus(err)
			var ue *upstreamError
			if errors.As(err, &ue) && ue.stage != stageConnect {
				// The proxy's own failure, not the server's: worth a
				// warning.
				p.log.Warn("http proxy: upstream", "err", err)
			} else {
				p.log.Debug("http proxy: upstream", "err", err)
			}
			if code == http.StatusServiceUnavailable {
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(code)
				_, _ = w.Write([]byte("upstream connect error\r\n"))
			} else {
				w.WriteHeader(code)
			}
			p.respond(r.Context(), uint32(code))
		},
	}
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			// The listener is transparent: the connection's local address
			// is the one the pod connected to.
			dst := c.LocalAddr().(*net.TCPAddr).AddrPort()
			dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			ci := &connInfo{src: src, dst: dst, srcID: p.dp.LookupIPCache(src.Addr()), dstID: p.dp.LookupIPCache(dst.Addr())}
			p.conns.Store(c, ci)
			return context.WithValue(context.WithValue(ctx, keyDst, dst), keyConn, ci)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s != http.StateClosed && s != http.StateHijacked {
				return
			}
			if v, ok := p.conns.LoadAndDelete(c); ok {
				v.(*connInfo).up.close()
			}
		},
	}
	return p, nil
}

// SetPolicy gives the proxy the compiled HTTP rules.
func (p *Proxy) SetPolicy(res *policy.Result) { p.res.Store(res) }

// Run serves until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = p.srv.Shutdown(sctx)
	}()
	if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http proxy: %w", err)
	}
	return nil
}

// ServeHTTP decides one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ci, _ := r.Context().Value(keyConn).(*connInfo)
	if ci == nil {
		http.Error(w, "no connection", http.StatusInternalServerError)
		return
	}
	ev := observe.HTTPEvent{Time: start, Src: ci.src, Dst: ci.dst, SrcIdentity: ci.srcID, DstIdentity: ci.dstID,
		Method: r.Method, URL: "http://" + r.Host + r.URL.RequestURI(), Protocol: r.Proto}
	d := p.m.decide(p.res.Load(), ci.srcID, ci.dstID, ci.dst.Port(), r)
	ev.Direction, ev.Cookie = flow.TrafficDirection_EGRESS, d.Cookie
	if d.Dir == policy.Ingress {
		ev.Direction = flow.TrafficDirection_INGRESS
	}
	if !d.Allowed {
		p.Denied.Add(1)
		ev.Verdict = flow.Verdict_DROPPED
		p.emit(ev)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte("Access denied\r\n"))
		resp := ev
		resp.Response, resp.Code, resp.Latency, resp.Time = true, http.StatusForbidden, time.Since(start), time.Now()
		p.emit(resp)
		return
	}
	p.Allowed.Add(1)
	// An allowed request is reported once, with its response (which
	// carries the method and URL): the event stream costs as much as the
	// proxying.
	ev.Verdict = flow.Verdict_FORWARDED
	ctx := context.WithValue(r.Context(), keyEvent, &ev)
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

// respond reports the response to the request whose context ctx is.
func (p *Proxy) respond(ctx context.Context, code uint32) {
	ev, _ := ctx.Value(keyEvent).(*observe.HTTPEvent)
	if ev == nil {
		return
	}
	resp := *ev
	resp.Response, resp.Code, resp.Latency, resp.Time = true, code, time.Since(ev.Time), time.Now()
	p.emit(resp)
}

// copyBuffers lends ReverseProxy its body copy buffers.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }
