// Package l7proxy is the transparent HTTP proxy. The datapath hands it the
// connections of pods to ports with HTTP rules (bpf_sk_assign to its
// IP_TRANSPARENT listener); it reads each HTTP/1.1 request, forwards those
// a rule matches to the address the pod connected to, answers the others
// `403 Access denied`, and reports every request and response as an L7
// HTTP flow.
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"golang.org/x/sys/unix"

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
}

// Datapath gives identities of addresses.
type Datapath interface {
	LookupIPCache(addr netip.Addr) uint32
}

// Proxy is the HTTP proxy.
type Proxy struct {
	cfg     Config
	dp      Datapath
	emit    func(observe.HTTPEvent)
	log     *slog.Logger
	res     atomic.Pointer[policy.Result]
	ln      net.Listener
	srv     *http.Server
	rp      *httputil.ReverseProxy
	m       matcher
	Allowed atomic.Uint64
	Denied  atomic.Uint64
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
}

// UpstreamMark marks the proxy's connections to servers (PROXY_UPSTREAM_MARK
// in bpf/src/proxy.h): the datapath does not hand them to the proxy again
// when the server's ingress policy has HTTP rules, since the proxy judged
// the request on both sides already. It lies in the nibble Aegis owns
// (PROXY_MARK_MASK) and differs from PROXY_MARK, so policy routing leaves
// these packets alone.
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
	if emit == nil {
		emit = func(observe.HTTPEvent) {}
	}
	p := &Proxy{cfg: cfg, dp: dp, emit: emit, log: log}
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
	tr := &http.Transport{
		// Upstream connections go to the address the pod connected to,
		// whatever the request's Host says.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			dst, _ := ctx.Value(keyDst).(netip.AddrPort)
			d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				if err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, UpstreamMark)
				}); err != nil {
					return err
				}
				if serr != nil {
					return fmt.Errorf("mark upstream socket: %w", serr)
				}
				return nil
			}}
			return d.DialContext(ctx, "tcp4", dst.String())
		},
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       cfg.IdleTimeout,
		ResponseHeaderTimeout: 60 * time.Second,
		DisableCompression:    true,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			dst, _ := pr.In.Context().Value(keyDst).(netip.AddrPort)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = dst.String()
			// The client's view stays: its Host header, no X-Forwarded-*.
			pr.Out.Host = pr.In.Host
		},
		Transport:     tr,
		FlushInterval: -1, // stream bodies as they come
		ModifyResponse: func(resp *http.Response) error {
			p.respond(resp.Request.Context(), uint32(resp.StatusCode))
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Debug("http proxy: upstream", "err", err)
			w.WriteHeader(http.StatusBadGateway)
			p.respond(r.Context(), http.StatusBadGateway)
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
			return context.WithValue(context.WithValue(ctx, keyDst, dst), keyConn, ci)
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
