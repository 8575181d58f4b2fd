package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// A client connection is served by one goroutine, one request at a time:
// read the head, decide, answer it or forward it on the connection's own
// upstream connection, forward the response, then the next request. A
// request body is copied by a second goroutine while the first reads the
// response, so that a server may answer before the body ends (100
// Continue, an early refusal).

const (
	// responseHeadTimeout bounds the wait for a response head once the
	// request went out, as the Transport of earlier versions did.
	responseHeadTimeout = 60 * time.Second
	// maxResponseHead bounds a response head, as net/http's client does.
	maxResponseHead = 1 << 20
	// lingerTimeout bounds how long a connection the proxy ends is read
	// and discarded after its last answer: closing a socket with unread
	// bytes resets it, and the client may lose the answer.
	lingerTimeout = 500 * time.Millisecond
	// bodyGrace is how long a finished response waits for the rest of its
	// request's body before the proxy gives up on the connection.
	bodyGrace = 100 * time.Millisecond
)

// Buffers come from pools and go back to them while a connection waits
// for its next request: an idle kept-alive connection holds only its
// small client reader.
var (
	clientReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	readers       = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writers       = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	// copyBuffers carry large bodies past the readers' buffers.
	copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// connInfo is what the proxy knows of a pod's connection, looked up once
// per connection rather than per request.
type connInfo struct {
	src, dst     netip.AddrPort
	srcID, dstID uint32
}

type route int8

const (
	routeUnknown  route = iota
	routeEndpoint       // into a local endpoint: from the client's address
	routeNode           // elsewhere: from the node's address
)

// deadline is a connection's read deadline, moved only when it would
// move later by a second or more, or earlier: timeouts of seconds need no
// finer steps, and each move is a timer update.
type deadline struct {
	nc net.Conn
	at time.Time
}

func (d *deadline) set(t time.Time) {
	if t.IsZero() == d.at.IsZero() && !t.Before(d.at) && t.Sub(d.at) < time.Second {
		return
	}
	_ = d.nc.SetReadDeadline(t)
	d.at = t
}

// stallClock moves a deadline along while bytes move, so that a transfer
// ends once nothing moved for its timeout: a peer that stops sending a
// body or reading an answer would otherwise hold both connections, and
// the body copier, for ever. The deadline moves by steps of a second at
// most (each move is a timer update), less for timeouts under 16 s.
type stallClock struct{ at time.Time }

// next returns the deadline to set before an I/O call, if it must move.
func (s *stallClock) next(timeout time.Duration) (time.Time, bool) {
	t := time.Now().Add(timeout)
	if t.Sub(s.at) < min(time.Second, timeout/16) {
		return t, false
	}
	s.at = t
	return t, true
}

// clientIO is the client connection as the connection's reader and
// writer use it. Writes must not stall for IdleTimeout; reads of a
// request body (bodyReading) neither, while the head's and the idle
// wait's reads keep the deadlines of c.dl.
type clientIO struct{ c *conn }

func (x clientIO) Read(b []byte) (int, error) {
	c := x.c
	if c.bodyReading.Load() {
		if t, ok := c.bodyClock.next(c.p.cfg.IdleTimeout); ok {
			_ = c.nc.SetReadDeadline(t)
			if !c.bodyReading.Load() {
				// stopBody set its deadline in between: keep it.
				_ = c.nc.SetReadDeadline(time.Now())
			}
		}
	}
	return c.nc.Read(b)
}

func (x clientIO) Write(b []byte) (int, error) {
	c := x.c
	if t, ok := c.writeClock.next(c.p.cfg.IdleTimeout); ok {
		_ = c.nc.SetWriteDeadline(t)
	}
	return c.nc.Write(b)
}

// upWriter is the upstream connection as requests are written to it: a
// server that takes none of a body for IdleTimeout ends it.
type upWriter struct{ up *upConn }

func (w upWriter) Write(b []byte) (int, error) {
	up := w.up
	if t, ok := up.writeClock.next(up.idle); ok {
		_ = up.nc.SetWriteDeadline(t)
	}
	return up.nc.Write(b)
}

// conn is one client connection.
type conn struct {
	p     *Proxy
	nc    net.Conn
	dl    deadline
	info  connInfo
	route route
	br    *bufio.Reader // held for the connection's life
	// pre: what the loop read of the client before it gave the
	// connection back, read before the connection (br reads it).
	pre  *prefixReader
	bw   *bufio.Writer // lent per request
	head []byte
	req  requestHead
	resp responseHead
	idle atomic.Bool // waiting for a request: shutdown may close it

	mu sync.Mutex // guards up (shutdown closes it) and gotHead
	up *upConn
	// gotHead says the final response head arrived: the body copier no
	// longer arms the response head timeout.
	gotHead bool
	// copying: a body copier runs; body carries its result.
	copying bool
	body    chan error
	// bodyReading: the copier reads the body (bodyClock is its read
	// deadline's, the copier's own); writeClock is the write deadline's.
	bodyReading atomic.Bool
	bodyClock   stallClock
	writeClock  stallClock
}

// upConn is a client connection's connection to the server.
type upConn struct {
	nc   net.Conn
	dl   deadline
	br   *bufio.Reader // lent per request
	bw   *bufio.Writer // lent per request with a body
	head []byte
	// pre: what the loop read of the server before it gave the
	// connection back, read before the connection.
	pre *prefixReader
	// used: it carried a request, so the server may have closed it since.
	used bool
	// idle bounds a write's stall (upWriter).
	idle       time.Duration
	writeClock stallClock
}

func (p *Proxy) serveConn(nc net.Conn, info connInfo) {
	c := &conn{p: p, nc: nc, dl: deadline{nc: nc}, info: info, body: make(chan error, 1)}
	c.br = clientReaders.Get().(*bufio.Reader)
	c.br.Reset(clientIO{c})
	p.mu.Lock()
	if p.conns == nil {
		p.conns = map[*conn]struct{}{}
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	go c.serve(nil)
}

// serve serves the connection's requests, after next (a request the
// loop began, see loop.go) when there is one.
func (c *conn) serve(next func() bool) {
	if next != nil && !next() {
		c.end()
		return
	}
	for !c.p.closing.Load() {
		switch c.awaitRequest() {
		case awaitLoop:
			return // the loop has the connection now
		case awaitEnd:
			c.end()
			return
		}
		if !c.serveRequest() {
			break
		}
	}
	c.end()
}

// end closes the connection and its upstream connection (the loop closed
// its descriptors already when the connection ends there).
func (c *conn) end() {
	c.closeUpstream()
	if c.nc != nil {
		_ = c.nc.Close()
	}
	c.releaseBuffers()
	if c.br != nil {
		c.br.Reset(nil)
		clientReaders.Put(c.br)
		c.br, c.pre = nil, nil
	}
	p := c.p
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// kill ends the connection from another goroutine (shutdown).
func (c *conn) kill() {
	c.mu.Lock()
	if c.nc != nil {
		_ = c.nc.Close()
	}
	if c.up != nil {
		_ = c.up.nc.Close()
	}
	c.mu.Unlock()
}

func (c *conn) acquireBuffers() {
	if c.bw == nil {
		c.bw = writers.Get().(*bufio.Writer)
		c.bw.Reset(clientIO{c})
	}
}

// releaseBuffers lends the buffers back between requests. An upstream
// connection with bytes left over spoke out of turn: it is closed.
func (c *conn) releaseBuffers() {
	if c.bw != nil {
		c.bw.Reset(nil)
		writers.Put(c.bw)
		c.bw = nil
	}
	up := c.up
	if up == nil {
		return
	}
	if up.br != nil {
		if up.br.Buffered() > 0 || up.pre.pending() {
			c.closeUpstream()
			return
		}
		up.br.Reset(nil)
		readers.Put(up.br)
		up.br = nil
	}
	if up.bw != nil {
		up.bw.Reset(nil)
		writers.Put(up.bw)
		up.bw = nil
	}
}

// closeUpstream closes the upstream connection; the next request dials
// again.
func (c *conn) closeUpstream() {
	c.mu.Lock()
	up := c.up
	c.up = nil
	c.mu.Unlock()
	if up == nil {
		return
	}
	_ = up.nc.Close()
	if up.br != nil {
		up.br.Reset(nil)
		readers.Put(up.br)
	}
	if up.bw != nil {
		up.bw.Reset(nil)
		writers.Put(up.bw)
	}
}

type waitResult int8

const (
	awaitRequest waitResult = iota // a request began
	awaitEnd                       // the client left, timed out, or shutdown
	awaitLoop                      // the loop waits for it now (loop.go)
)

// awaitRequest waits up to IdleTimeout for the next request to start, or
// hands a kept-alive connection to the loop to wait there.
func (c *conn) awaitRequest() waitResult {
	if c.br.Buffered() > 0 || c.pre.pending() {
		return awaitRequest // pipelined
	}
	c.releaseBuffers()
	if c.p.adopt(c) {
		return awaitLoop
	}
	c.idle.Store(true)
	defer c.idle.Store(false)
	// Shutdown sets closing, then closes the idle connections: one of the
	// two sees the other.
	if c.p.closing.Load() {
		return awaitEnd
	}
	c.dl.set(time.Now().Add(c.p.cfg.IdleTimeout))
	if _, err := c.br.Peek(1); err != nil {
		return awaitEnd
	}
	return awaitRequest
}

// requestEvent is the flow of the request just parsed, and its decision.
func (c *conn) requestEvent(d Decision) observe.HTTPEvent {
	r := &c.req
	ev := observe.HTTPEvent{Time: time.Now(), Src: c.info.src, Dst: c.info.dst, SrcIdentity: c.info.srcID, DstIdentity: c.info.dstID,
		Method: r.view.Method, URL: r.url, Protocol: r.proto, Direction: flow.TrafficDirection_EGRESS, Cookie: d.Cookie}
	if d.Dir == policy.Ingress {
		ev.Direction = flow.TrafficDirection_INGRESS
	}
	return ev
}

// serveRequest serves one request; false ends the connection.
func (c *conn) serveRequest() bool {
	p := c.p
	// From the first byte, the whole head within HeaderTimeout: a client
	// trickling its head (slowloris) is cut off. A head that came whole
	// needs no deadline.
	if b, _ := c.br.Peek(c.br.Buffered()); bytes.Index(b, []byte("\r\n\r\n")) < 0 {
		c.dl.set(time.Now().Add(p.cfg.HeaderTimeout))
	}
	c.acquireBuffers()
	head, err := readHead(c.br, c.head[:0], p.cfg.MaxHeaderBytes)
	c.head = head
	if err == nil {
		err = parseRequestHead(head, &c.req)
	}
	if err != nil {
		var se *statusError
		if errors.As(err, &se) {
			p.log.Debug("http proxy: bad request", "src", c.info.src, "dst", c.info.dst, "err", err)
			c.writeLocal(se.code, se.msg+"\r\n", true, false)
			c.linger()
		}
		// Otherwise the client left or timed out: nobody to answer.
		return false
	}
	r := &c.req
	d := p.m.decide(p.res.Load(), c.info.srcID, c.info.dstID, c.info.dst.Port(), &r.view)
	ev := c.requestEvent(d)
	if !d.Allowed {
		p.Denied.Add(1)
		ev.Verdict = flow.Verdict_DROPPED
		p.emit(ev)
		// A body not forwarded would be read as the next request: the
		// connection ends after the answer.
		end := r.hasBody() || r.framing.close
		c.writeLocal(http.StatusForbidden, "Access denied\r\n", end, true)
		c.respond(ev, http.StatusForbidden)
		if r.hasBody() {
			c.linger()
		}
		return !end
	}
	p.Allowed.Add(1)
	// An allowed request is reported once, with its response (which
	// carries the method and URL): the event stream costs as much as the
	// proxying.
	ev.Verdict = flow.Verdict_FORWARDED
	return c.forward(ev)
}

// respond reports the response to the request of ev.
func (c *conn) respond(ev observe.HTTPEvent, code int) {
	now := time.Now()
	ev.Response, ev.Code, ev.Latency, ev.Time = true, uint32(code), now.Sub(ev.Time), now
	c.p.emit(ev)
}

// writeLocal answers the request with code and a text body; end adds
// Connection: close. A HEAD request gets the head only, unless the head
// could not be read (parsed says whether it was).
func (c *conn) writeLocal(code int, body string, end, parsed bool) {
	w := c.bw
	w.WriteString("HTTP/1.1 ")
	w.WriteString(strconv.Itoa(code))
	w.WriteByte(' ')
	w.WriteString(http.StatusText(code))
	w.WriteString("\r\nContent-Type: text/plain\r\nContent-Length: ")
	w.WriteString(strconv.Itoa(len(body)))
	if end {
		w.WriteString("\r\nConnection: close")
	}
	w.WriteString("\r\n\r\n")
	if !parsed || c.req.view.Method != http.MethodHead {
		w.WriteString(body)
	}
	_ = w.Flush()
}

// linger ends the connection gently after an answer, with the client
// possibly still sending: see lingerTimeout.
func (c *conn) linger() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	c.dl.set(time.Now().Add(lingerTimeout))
	_, _ = io.CopyN(io.Discard, c.br, 4<<20)
}

// idempotent methods may be sent again when a kept-alive upstream
// connection turns out closed before any answer (RFC 9110 9.2.2).
func idempotent(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions || m == http.MethodTrace
}

// forward sends the request upstream and its response back; false ends
// the connection.
func (c *conn) forward(ev observe.HTTPEvent) bool {
	r := &c.req
	// A request that can be sent again skips checking the kept-alive
	// connection: a closed one shows as an answer-less end, then.
	retryable := !r.hasBody() && idempotent(r.view.Method)
	if r.h2c {
		r.raw, r.upgrade = withoutUpgrade(r.raw), false
	}
	up, err := c.upstream(!retryable)
	if err != nil {
		return c.fail(ev, err, !r.hasBody() && !r.framing.close)
	}
	up.head = up.head[:0]
	if r.hasBody() {
		c.startBody(up)
	} else {
		up.dl.set(time.Now().Add(responseHeadTimeout))
		_, err = upWriter{up}.Write(r.raw)
	}
	return c.awaitResponse(ev, up, retryable, err)
}

// awaitResponse reads the response to the request sent on up (err: why
// sending it failed), sending it once more on a new connection when
// retryable and the kept-alive one turns out closed, and forwards it;
// false ends the connection.
func (c *conn) awaitResponse(ev observe.HTTPEvent, up *upConn, retryable bool, err error) bool {
	r := &c.req
	for {
		if err == nil {
			err = c.readResponseHead(up)
		}
		if err == nil {
			if c.resp.code >= 200 || c.resp.code == http.StatusSwitchingProtocols {
				break
			}
			// 1xx interim answers go to the client at once.
			if _, err = c.bw.Write(c.resp.raw); err == nil {
				err = c.bw.Flush()
			}
			if err != nil {
				return c.abort()
			}
			continue
		}
		if retryable && up.used && len(up.head) == 0 && closedEarly(err) {
			// The server closed the kept-alive connection before it saw
			// the request: send it once more on a new one.
			c.closeUpstream()
			if up, err = c.upstream(false); err != nil {
				return c.fail(ev, err, !r.framing.close)
			}
			retryable = false
			up.dl.set(time.Now().Add(responseHeadTimeout))
			_, err = upWriter{up}.Write(r.raw)
			continue
		}
		if c.copying {
			// The copier closed the upstream connection when the client's
			// body failed: that, not the server, is the story.
			var re *readError
			var ce *chunkError
			if berr := c.stopBody(); errors.As(berr, &ce) {
				c.p.log.Debug("http proxy: bad request body", "src", c.info.src, "err", berr)
				c.writeLocal(http.StatusBadRequest, ce.Error()+"\r\n", true, true)
				c.respond(ev, http.StatusBadRequest)
				c.linger()
				return false
			} else if errors.As(berr, &re) {
				return false
			} else if errors.Is(berr, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("the server took none of the request body for %s", c.p.cfg.IdleTimeout)
			}
		}
		return c.fail(ev, err, !r.hasBody() && !r.framing.close)
	}
	return c.relayResponse(ev, up)
}

// relayResponse forwards the response whose head is in c.resp; false
// ends the connection.
func (c *conn) relayResponse(ev observe.HTTPEvent, up *upConn) bool {
	r := &c.req
	if c.resp.code == http.StatusSwitchingProtocols && !r.upgrade {
		// The bytes after it would pass unjudged: a server may switch
		// only when asked to (RFC 9110 7.8).
		return c.fail(ev, errors.New("101 Switching Protocols to a request without Upgrade"), false)
	}
	up.used = true
	if c.copying {
		// The copier may be arming the timeout: one or the other.
		c.mu.Lock()
		c.gotHead = true
		_ = up.nc.SetReadDeadline(time.Time{})
		up.dl.at = time.Time{}
		c.mu.Unlock()
	} else if c.moreToRead(up) {
		up.dl.set(time.Time{})
	}
	code := c.resp.code
	c.respond(ev, code)

	if c.tunnels() {
		if c.stopBody() != nil {
			return false
		}
		if _, err := c.bw.Write(c.resp.raw); err == nil && c.bw.Flush() == nil {
			c.tunnel(up)
		}
		return false
	}
	if _, err := c.bw.Write(c.resp.raw); err != nil {
		return c.abort()
	}
	return c.relayBody(up, c.resp.framing.length)
}

// relayBody forwards the body of the response in c.resp (of a fixed
// length: its last remaining bytes) and ends the exchange; false ends the
// connection.
func (c *conn) relayBody(up *upConn, remaining int64) bool {
	r, code, f := &c.req, c.resp.code, c.resp.framing
	var err error
	untilClose := false
	switch {
	case r.view.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified:
	case f.chunked:
		err = copyChunked(c.bw, up.br)
	case f.te:
		untilClose = true
		err = copyToEOF(c.bw, up.br)
	case f.length >= 0:
		err = copyFixed(c.bw, up.br, remaining)
	default:
		untilClose = true
		err = copyToEOF(c.bw, up.br)
	}
	if err == nil {
		if err = c.bw.Flush(); err != nil {
			err = &writeError{err}
		}
	}
	if err != nil {
		// The head went out: the client learns of the failure by the
		// connection's end.
		var we *writeError
		if !errors.As(err, &we) {
			c.p.log.Warn("http proxy: upstream response body", "dst", c.info.dst, "err", err)
		}
		return c.abort()
	}
	if !c.awaitBody() {
		return false
	}
	if untilClose || f.close {
		c.closeUpstream()
		return false
	}
	return !r.framing.close
}

// tunnels says whether the response makes the connection a tunnel: a
// 101, or a 2xx to CONNECT that frames no body. RFC 9110 9.3.6 forbids
// framing fields in that answer; a server that sends them, or a 204 (a
// handler answering every method alike), goes on reading requests after
// it, and forwarding those unjudged would let them past the rules.
func (c *conn) tunnels() bool {
	code, f := c.resp.code, c.resp.framing
	if code == http.StatusSwitchingProtocols {
		return true
	}
	return c.req.connect && code/100 == 2 && code != http.StatusNoContent && f.length < 0 && !f.te
}

// moreToRead says whether the response's body is still to come, beyond
// what is buffered: its reads must not meet the head timeout.
func (c *conn) moreToRead(up *upConn) bool {
	f := c.resp.framing
	switch {
	case c.req.view.Method == http.MethodHead || c.resp.code == http.StatusNoContent || c.resp.code == http.StatusNotModified:
		return false
	case f.chunked, f.te, f.length < 0, c.tunnels():
		return true
	}
	return int64(up.br.Buffered()) < f.length
}

// abort ends a forwarded request that failed after its head went out.
func (c *conn) abort() bool {
	c.closeUpstream()
	if c.copying {
		_ = c.nc.Close()
		_ = c.stopBody()
	}
	return false
}

// closedEarly says whether a kept-alive connection failed as one the
// server closed does, rather than by a timeout.
func closedEarly(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// fail answers a request the proxy could not forward: 503 when the server
// could not be reached, 502 otherwise. keep says whether the connection
// may serve another request.
func (c *conn) fail(ev observe.HTTPEvent, err error, keep bool) bool {
	code := upstreamStatus(err)
	var ue *upstreamError
	if errors.As(err, &ue) && ue.stage == stageConnect {
		c.p.log.Debug("http proxy: upstream", "err", err)
	} else {
		// The proxy's own failure, or the server's after it was
		// reached: worth a warning.
		c.p.log.Warn("http proxy: upstream", "dst", c.info.dst, "err", err)
	}
	c.closeUpstream()
	// A body copier still reading the client stops first: the client's
	// reader is the linger's next.
	_ = c.stopBody()
	body := ""
	if code == http.StatusServiceUnavailable {
		body = "upstream connect error\r\n"
	}
	c.writeLocal(code, body, !keep, true)
	c.respond(ev, code)
	if !keep {
		c.linger()
	}
	return keep
}

// upstream returns the connection to the server, dialing it if there is
// none or, with check, if the server closed the kept-alive one.
func (c *conn) upstream(check bool) (*upConn, error) {
	if up := c.up; up != nil {
		if !check || !up.used || alive(up.nc) {
			c.lendUpstream(up)
			return up, nil
		}
		c.closeUpstream()
	}
	if c.route == routeUnknown {
		local, err := c.p.viaEndpoint(c.info.dst.Addr())
		if err != nil {
			return nil, &upstreamError{stage: stageRoute, dst: c.info.dst, err: err}
		}
		c.route = routeNode
		if local {
			c.route = routeEndpoint
		}
	}
	var src netip.AddrPort
	if c.route == routeEndpoint {
		src = c.info.src
	}
	nc, err := dialUpstream(c.p.ctx(), src, c.info.dst, c.p.cfg.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	up := &upConn{nc: nc, dl: deadline{nc: nc}, idle: c.p.cfg.IdleTimeout}
	c.mu.Lock()
	c.up = up
	c.mu.Unlock()
	if c.p.closing.Load() {
		// Shutdown may have passed this connection by already.
		_ = nc.Close()
	}
	c.lendUpstream(up)
	return up, nil
}

func (c *conn) lendUpstream(up *upConn) {
	if up.br == nil {
		up.br = readers.Get().(*bufio.Reader)
		if up.pre != nil {
			up.br.Reset(up.pre)
		} else {
			up.br.Reset(up.nc)
		}
	}
}

// alive reports whether a kept-alive connection is still open: nothing
// to read, no end, no error.
func alive(nc net.Conn) bool {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var rerr error
	var b [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	return rerr == unix.EAGAIN
}

// readResponseHead reads the next response head from up into c.resp.
func (c *conn) readResponseHead(up *upConn) error {
	head, err := readHead(up.br, up.head[:0], maxResponseHead)
	up.head = head
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errors.New("timeout awaiting the response head")
		}
		if err == errHeadTooLarge {
			return errors.New("response head too large")
		}
		return err
	}
	return parseResponseHead(head, &c.resp)
}

// startBody forwards the request head and body upstream in a goroutine of
// its own; stopBody or awaitBody collect it.
func (c *conn) startBody(up *upConn) {
	if up.bw == nil {
		up.bw = writers.Get().(*bufio.Writer)
		up.bw.Reset(upWriter{up})
	}
	c.mu.Lock()
	c.gotHead = false
	c.mu.Unlock()
	c.copying = true
	// The body has no deadline as a whole, as with net/http, only one
	// for a stall (clientIO); the head timeout clears.
	c.dl.set(time.Time{})
	up.dl.set(time.Time{})
	c.bodyClock = stallClock{}
	c.bodyReading.Store(true)
	r, w := c.br, up.bw
	go func() {
		_, err := w.Write(c.req.raw)
		if err != nil {
			err = &writeError{err}
		} else if c.req.framing.chunked {
			err = copyChunked(w, r)
		} else {
			err = copyFixed(w, r, c.req.framing.length)
		}
		if err == nil {
			if err = w.Flush(); err != nil {
				err = &writeError{err}
			}
		}
		var we *writeError
		switch {
		case err == nil:
			// The request is out: the server has responseHeadTimeout to
			// answer (unless it did already).
			c.mu.Lock()
			if !c.gotHead {
				_ = up.nc.SetReadDeadline(time.Now().Add(responseHeadTimeout))
			}
			c.mu.Unlock()
		case !errors.As(err, &we) || errors.Is(err, os.ErrDeadlineExceeded):
			// The client's body failed, or the server took none of it for
			// IdleTimeout: the server is left waiting for the rest, so
			// end its connection (which also ends the wait for its
			// answer).
			_ = up.nc.Close()
		}
		c.body <- err
	}()
}

// stopBody waits for the body copier, if one runs, making it stop if it
// is still reading the client after bodyGrace, and returns its result.
func (c *conn) stopBody() error {
	if !c.copying {
		return nil
	}
	c.copying = false
	var err error
	select {
	case err = <-c.body:
	case <-time.After(bodyGrace):
		c.bodyReading.Store(false)
		c.dl.set(time.Now())
		if up := c.up; up != nil {
			_ = up.nc.Close()
		}
		err = <-c.body
	}
	c.bodyReading.Store(false)
	if !c.bodyClock.at.IsZero() {
		// The copier moved the read deadline: c.dl's is the one to keep.
		_ = c.nc.SetReadDeadline(c.dl.at)
	}
	return err
}

// awaitBody waits for the rest of a request body after its response; a
// server that answered without reading it all would read the rest as its
// next request, so a body that does not end promptly ends the connection.
func (c *conn) awaitBody() bool {
	if err := c.stopBody(); err != nil {
		var we *writeError
		if !errors.As(err, &we) {
			c.p.log.Debug("http proxy: request body", "src", c.info.src, "err", err)
		}
		c.closeUpstream()
		return false
	}
	return true
}

// tunnel carries bytes both ways after a protocol switch or CONNECT,
// until both sides are done; a side's end is passed on as a half-close,
// a failure ends both.
func (c *conn) tunnel(up *upConn) {
	c.dl.set(time.Time{})
	up.dl.set(time.Time{})
	// A tunnel may be quiet as long as it likes.
	_ = c.nc.SetWriteDeadline(time.Time{})
	_ = up.nc.SetWriteDeadline(time.Time{})
	c.writeClock, up.writeClock = stallClock{}, stallClock{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// What the client sent after the head, then the rest straight
		// from its connection, past clientIO.
		if err := writeBuffered(up.nc, c.br); err != nil {
			c.kill()
			return
		}
		if _, err := io.Copy(up.nc, c.nc); err != nil {
			c.kill()
			return
		}
		closeWrite(up.nc)
	}()
	if _, err := up.br.WriteTo(c.nc); err != nil {
		c.kill()
	} else {
		closeWrite(c.nc)
	}
	<-done
}

// writeBuffered writes what br holds to w.
func writeBuffered(w io.Writer, br *bufio.Reader) error {
	b, _ := br.Peek(br.Buffered())
	if len(b) == 0 {
		return nil
	}
	_, err := w.Write(b)
	_, _ = br.Discard(len(b))
	return err
}

func closeWrite(nc net.Conn) {
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
