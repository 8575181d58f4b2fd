package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/cilium/api/v1/flow"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/observe"
)

// The loop. A goroutine per connection costs Go's scheduler two waits per
// request, for the client and then for the server, each a park, a wake-up
// by the network poller and often a thread's: about a quarter of the
// proxy's CPU under the benchmark's load. Kept-alive connections between
// requests, and the plain requests that most traffic is, are served
// instead by one loop on a thread of its own over an epoll set of raw
// sockets, as a relay would be: per request one read and one write each
// way, the epoll wait shared by all.
//
// The loop serves a request only when all of it is plain: a whole head in
// what it read, no body, a method that may be sent again (forward), an
// allowed one, on a kept-alive upstream connection; and a response whose
// head is final (2xx-5xx), whose body has a length or none, and which the
// client takes as it comes. Anything else goes back to a goroutine at the
// point the loop reached, with what the loop read, and the connection's
// own code (conn.go) goes on from there as if it had read it: the loop
// adds no behaviour of its own. A connection comes to the loop after a
// request served on its goroutine (the first, which dials the server), so
// a connection of one request never moves.

const (
	// loopReadSize is the loop's read buffer, shared by its connections.
	loopReadSize = 64 << 10
	// loopPatience: a response (its head or the rest of its body) that
	// keeps the loop waiting this long goes to a goroutine, whose
	// timeouts then apply.
	loopPatience = time.Second
	// loopSweep is how often the loop looks for connections idle past
	// IdleTimeout or responses past loopPatience.
	loopSweep = 250 * time.Millisecond
	// maxLoopHead bounds a response head the loop gathers over reads.
	maxLoopHead = 16 << 10
)

// headEnd returns the length of the head b begins with, through the empty
// line that ends it, as readHead reads it: -1 while b holds only part of
// it, -2 when b begins with an empty line (readHead skips those; the loop
// leaves them to it).
func headEnd(b []byte) int {
	if len(b) > 0 && b[0] == '\n' || len(b) > 1 && b[0] == '\r' && b[1] == '\n' {
		return -2
	}
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1 // the next line
		switch {
		case i < len(b) && b[i] == '\n':
			return i + 1
		case i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n':
			return i + 2
		case i == len(b), i+1 == len(b) && b[i] == '\r':
			return -1
		}
	}
}

// prefixReader reads what the loop read of a connection before the
// connection itself.
type prefixReader struct {
	b []byte
	r io.Reader
}

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.b) > 0 {
		n := copy(b, p.b)
		p.b = p.b[n:]
		return n, nil
	}
	return p.r.Read(b)
}

func (p *prefixReader) pending() bool { return p != nil && len(p.b) > 0 }

type loop struct {
	p      *Proxy
	ep     int
	wakeFD int // eventfd: connections queued, shutdown, or stop
	mu     sync.Mutex
	queue  []*lconn
	stop   bool
	once   sync.Once
	done   chan struct{}
	// The loop thread's own.
	conns map[int32]*lconn // by either descriptor
	buf   []byte
}

// lconn is a connection the loop serves.
type lconn struct {
	c        *conn
	cfd, ufd int  // ufd -1: none (the server closed it)
	cr, ur   bool // a read may find bytes (the epoll set is edge-triggered)
	// waiting: the request went upstream and its response head is not
	// whole yet; body: response bytes still to forward.
	waiting bool
	body    int64
	// extra: the server sent more than the response; its connection
	// ends after it, as releaseBuffers ends it.
	extra bool
	pend  []byte // client bytes after the request served: pipelined
	uin   []byte // the response head so far
	ev    observe.HTTPEvent
	since time.Time // start of the wait: idle, or for the server
}

func newLoop(p *Proxy) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}); err != nil {
		unix.Close(ep)
		unix.Close(wfd)
		return nil, fmt.Errorf("epoll add: %w", err)
	}
	return &loop{p: p, ep: ep, wakeFD: wfd, done: make(chan struct{}), conns: map[int32]*lconn{}, buf: make([]byte, loopReadSize)}, nil
}

// startLoop starts the loop on first use; nil when it cannot run (the
// connections stay on their goroutines).
func (p *Proxy) startLoop() *loop {
	p.loopOnce.Do(func() {
		l, err := newLoop(p)
		if err != nil {
			p.log.Warn("http proxy: no loop, every connection keeps a goroutine", "err", err)
			return
		}
		p.loop.Store(l)
		go l.run()
	})
	return p.loop.Load()
}

// stopLoop ends the loop and the connections in it.
func (p *Proxy) stopLoop() {
	if l := p.loop.Load(); l != nil {
		l.close()
	}
}

// adopt hands a kept-alive connection waiting for its next request to the
// loop: both sockets leave Go's poller as descriptors of the loop's own.
func (p *Proxy) adopt(c *conn) bool {
	up := c.up
	if p.noLoop || up == nil || !up.used || p.closing.Load() {
		return false
	}
	if _, ok := c.nc.(*net.TCPConn); !ok {
		return false
	}
	if _, ok := up.nc.(*net.TCPConn); !ok {
		return false
	}
	l := p.startLoop()
	if l == nil {
		return false
	}
	cfd, err := dupFD(c.nc)
	if err != nil {
		return false
	}
	ufd, err := dupFD(up.nc)
	if err != nil {
		unix.Close(cfd)
		return false
	}
	c.mu.Lock()
	_ = c.nc.Close()
	_ = up.nc.Close()
	c.nc, c.up = nil, nil
	c.mu.Unlock()
	c.br.Reset(nil)
	clientReaders.Put(c.br)
	c.br, c.pre, c.dl = nil, nil, deadline{}
	p.adopted.Add(1)
	l.add(&lconn{c: c, cfd: cfd, ufd: ufd, cr: true, ur: true, since: time.Now()})
	return true
}

// dupFD is a descriptor of the connection's socket of the caller's own
// (non-blocking: the flag is the socket's, which Go set).
func dupFD(nc net.Conn) (int, error) {
	sc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := sc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// fileConn makes a loop's descriptor a net.Conn again, closing it.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	return net.FileConn(f)
}

func (l *loop) add(lc *lconn) {
	l.mu.Lock()
	if l.stop {
		l.mu.Unlock()
		unix.Close(lc.cfd)
		unix.Close(lc.ufd)
		lc.c.end()
		return
	}
	l.queue = append(l.queue, lc)
	l.mu.Unlock()
	l.wake()
}

func (l *loop) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(l.wakeFD, one[:])
}

// close stops the loop, ending its connections, and waits for it.
func (l *loop) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.stop = true
		l.mu.Unlock()
		l.wake()
		<-l.done
		unix.Close(l.ep)
		unix.Close(l.wakeFD)
	})
}

func (l *loop) run() {
	// A thread of its own: unlocked, the runtime may resume the loop on
	// another thread after each wait.
	runtime.LockOSThread()
	defer close(l.done)
	events := make([]unix.EpollEvent, 128)
	lastSweep := time.Now()
	for {
		timeout := -1
		if len(l.conns) > 0 {
			timeout = int(loopSweep / time.Millisecond)
		}
		n, err := unix.EpollWait(l.ep, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.p.log.Error("http proxy: loop", "err", err)
			l.endAll()
			return
		}
		now := time.Now()
		for _, e := range events[:max(n, 0)] {
			if e.Fd == int32(l.wakeFD) {
				if l.woken(now) {
					return
				}
				continue
			}
			lc := l.conns[e.Fd]
			if lc == nil {
				continue // ended earlier in this batch
			}
			if e.Fd == int32(lc.cfd) {
				lc.cr = true
			} else {
				lc.ur = true
			}
			l.step(lc, now)
		}
		if now.Sub(lastSweep) >= loopSweep {
			lastSweep = now
			l.sweep(now)
		}
	}
}

// woken takes the queued connections; true when the loop is to stop.
func (l *loop) woken(now time.Time) bool {
	var v [8]byte
	_, _ = unix.Read(l.wakeFD, v[:])
	l.mu.Lock()
	queue, stop := l.queue, l.stop
	l.queue = nil
	l.mu.Unlock()
	for _, lc := range queue {
		l.conns[int32(lc.cfd)], l.conns[int32(lc.ufd)] = lc, lc
		for _, fd := range []int{lc.cfd, lc.ufd} {
			if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}); err != nil {
				l.p.log.Warn("http proxy: loop: epoll add", "err", err)
				l.end(lc)
				break
			}
		}
		if l.conns[int32(lc.cfd)] == lc {
			l.step(lc, now)
		}
	}
	if stop {
		l.endAll()
		return true
	}
	if l.p.closing.Load() {
		l.sweep(now)
	}
	return false
}

// sweep ends the connections idle past IdleTimeout, or all idle ones at
// shutdown, and gives responses past loopPatience to goroutines.
func (l *loop) sweep(now time.Time) {
	closing := l.p.closing.Load()
	for fd, lc := range l.conns {
		if fd != int32(lc.cfd) {
			continue
		}
		switch {
		case lc.waiting || lc.body > 0:
			if now.Sub(lc.since) >= loopPatience {
				l.handBackResponse(lc, lc.uin)
			}
		case closing || now.Sub(lc.since) >= l.p.cfg.IdleTimeout:
			l.end(lc)
		}
	}
}

func (l *loop) endAll() {
	for fd, lc := range l.conns {
		if fd == int32(lc.cfd) {
			l.end(lc)
		}
	}
}

// step serves the connection as far as its sockets let it.
func (l *loop) step(lc *lconn, now time.Time) {
	for {
		if lc.waiting || lc.body > 0 {
			if !lc.ur {
				return
			}
			n, err := readFD(lc.ufd, l.buf)
			if err == unix.EAGAIN {
				lc.ur = false
				return
			}
			if n <= 0 || err != nil {
				// The server ended or failed: the goroutine reads that
				// end again and tells the story (a request sent again, a
				// 502, an abort).
				l.handBackResponse(lc, lc.uin)
				return
			}
			if n < len(l.buf) {
				lc.ur = false
			}
			lc.since = now
			if !l.response(lc, l.buf[:n], now) {
				return
			}
			continue
		}
		if lc.ufd >= 0 && lc.ur {
			// The server spoke between requests: it closed its end, or
			// sent what nobody asked for. Either way its connection is
			// done; the next request dials again.
			var b [1]byte
			if _, err := readFD(lc.ufd, b[:]); err == unix.EAGAIN {
				lc.ur = false
			} else {
				l.closeUpstream(lc)
			}
		}
		data := lc.pend
		if len(data) == 0 {
			if !lc.cr {
				return
			}
			n, err := readFD(lc.cfd, l.buf)
			if err == unix.EAGAIN {
				lc.cr = false
				return
			}
			if n <= 0 || err != nil {
				l.end(lc)
				return
			}
			if n < len(l.buf) {
				lc.cr = false
			}
			data = l.buf[:n]
		}
		if !l.request(lc, data, now) {
			return
		}
	}
}

// request serves the request data begins with if it is plain, and hands
// the connection back otherwise; false when the loop no longer has it.
func (l *loop) request(lc *lconn, data []byte, now time.Time) bool {
	c, p := lc.c, l.p
	end := headEnd(data)
	if end < 0 || end > p.cfg.MaxHeaderBytes || lc.ufd < 0 || p.closing.Load() {
		l.handBack(lc, data, nil, nil)
		return false
	}
	c.head = append(c.head[:0], data[:end]...)
	r := &c.req
	if parseRequestHead(c.head, r) != nil || r.hasBody() || r.upgrade || r.connect || !idempotent(r.view.Method) {
		l.handBack(lc, data, nil, nil)
		return false
	}
	d := p.m.decide(p.res.Load(), c.info.srcID, c.info.dstID, c.info.dst.Port(), &r.view)
	if !d.Allowed {
		l.handBack(lc, data, nil, nil)
		return false
	}
	// append moves the bytes as copy does: data may be pend itself.
	lc.pend = append(lc.pend[:0], data[end:]...)
	p.Allowed.Add(1)
	p.looped.Add(1)
	lc.ev = c.requestEvent(d)
	lc.ev.Verdict = flow.Verdict_FORWARDED
	lc.waiting, lc.uin, lc.since = true, lc.uin[:0], now
	n, err := writeFD(lc.ufd, c.head)
	if n == len(c.head) {
		return true
	}
	rest := c.head[max(n, 0):]
	var werr error
	if err != nil && err != unix.EAGAIN {
		rest, werr = nil, err
	}
	ev := lc.ev
	l.handBack(lc, lc.pend, nil, func(up *upConn) bool {
		up.dl.set(ev.Time.Add(responseHeadTimeout))
		err := werr
		if len(rest) > 0 {
			_, err = upWriter{up}.Write(rest)
		}
		return c.awaitResponse(ev, up, true, err)
	})
	return false
}

// response forwards what the server sent, data; false when the loop no
// longer has the connection.
func (l *loop) response(lc *lconn, data []byte, now time.Time) bool {
	c := lc.c
	if !lc.waiting {
		take := min(int64(len(data)), lc.body)
		lc.extra = int64(len(data)) > take
		lc.body -= take
		return l.toClient(lc, data[:take]) && (lc.body > 0 || l.finish(lc, now))
	}
	if len(lc.uin) > 0 {
		lc.uin = append(lc.uin, data...)
		data = lc.uin
	}
	end := headEnd(data)
	if end == -1 && len(data) <= maxLoopHead {
		if len(lc.uin) == 0 {
			lc.uin = append(lc.uin, data...)
		}
		return true
	}
	if end < 0 || parseResponseHead(data[:end], &c.resp) != nil || c.resp.code < 200 {
		l.handBackResponse(lc, data)
		return false
	}
	code, f := c.resp.code, c.resp.framing
	var length int64
	switch {
	case c.req.view.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified:
	case f.te || f.length < 0:
		l.handBackResponse(lc, data)
		return false
	default:
		length = f.length
	}
	c.respond(lc.ev, code)
	body := data[end:]
	take := min(int64(len(body)), length)
	lc.waiting, lc.extra, lc.body = false, int64(len(body)) > take, length-take
	ok := l.toClient(lc, data[:end+int(take)])
	lc.uin = lc.uin[:0]
	return ok && (lc.body > 0 || l.finish(lc, now))
}

// toClient writes b to the client; one that does not take it all at once
// gets the rest from a goroutine, which goes on with the response.
func (l *loop) toClient(lc *lconn, b []byte) bool {
	n, err := writeFD(lc.cfd, b)
	if n == len(b) {
		return true
	}
	if err != nil && err != unix.EAGAIN {
		// The client is gone: the exchange ends as abort ends it.
		l.end(lc)
		return false
	}
	c, pending, remaining, extra := lc.c, bytes.Clone(b[max(n, 0):]), lc.body, lc.extra
	l.handBack(lc, lc.pend, nil, func(up *upConn) bool {
		if _, err := c.bw.Write(pending); err != nil {
			return c.abort()
		}
		keep := c.relayBody(up, remaining)
		if extra {
			c.closeUpstream()
		}
		return keep
	})
	return false
}

// finish ends an exchange whose response went out whole, as relayBody
// ends it; false when the connection ended.
func (l *loop) finish(lc *lconn, now time.Time) bool {
	c := lc.c
	if c.resp.framing.close || c.req.framing.close || l.p.closing.Load() {
		l.end(lc)
		return false
	}
	if lc.extra {
		lc.extra = false
		l.closeUpstream(lc)
	}
	lc.since = now
	return true
}

// handBackResponse gives a goroutine the exchange under way: the response
// head awaited (uin: what came of it), or the rest of its body.
func (l *loop) handBackResponse(lc *lconn, uin []byte) {
	c, ev := lc.c, lc.ev
	if lc.waiting {
		l.handBack(lc, lc.pend, uin, func(up *upConn) bool {
			up.dl.set(ev.Time.Add(responseHeadTimeout))
			return c.awaitResponse(ev, up, true, nil)
		})
		return
	}
	remaining := lc.body
	l.handBack(lc, lc.pend, nil, func(up *upConn) bool { return c.relayBody(up, remaining) })
}

// handBack gives the connection back to a goroutine, with what the loop
// read of the client (in) and of the server (uin) and, for an exchange
// under way, the step to go on with.
func (l *loop) handBack(lc *lconn, in, uin []byte, next func(*upConn) bool) {
	in, uin = bytes.Clone(in), bytes.Clone(uin)
	for _, fd := range []int{lc.cfd, lc.ufd} {
		if fd >= 0 {
			_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, fd, nil)
			delete(l.conns, int32(fd))
		}
	}
	go lc.c.resume(lc.cfd, lc.ufd, in, uin, next)
}

func (l *loop) closeUpstream(lc *lconn) {
	if lc.ufd < 0 {
		return
	}
	delete(l.conns, int32(lc.ufd))
	unix.Close(lc.ufd)
	lc.ufd, lc.ur = -1, false
}

// end ends the connection.
func (l *loop) end(lc *lconn) {
	l.closeUpstream(lc)
	delete(l.conns, int32(lc.cfd))
	unix.Close(lc.cfd)
	lc.c.end()
}

// readFD and writeFD are raw system calls: the sockets do not block, so
// the runtime need not hand the thread's processor on for the call's
// length (entersyscall and exitsyscall, each call, with a processor
// retaken by the system monitor now and then and won back after).
func readFD(fd int, b []byte) (int, error) {
	return rawIO(unix.SYS_READ, fd, b)
}

// writeFD writes to a socket; a broken connection's SIGPIPE does not end
// a Go program for a descriptor other than 1 and 2: the write fails with
// EPIPE.
func writeFD(fd int, b []byte) (int, error) {
	return rawIO(unix.SYS_WRITE, fd, b)
}

func rawIO(trap uintptr, fd int, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	for {
		n, _, e := unix.RawSyscall(trap, uintptr(fd), uintptr(p), uintptr(len(b)))
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return -1, unix.EAGAIN
		}
		return -1, e
	}
}

// resume serves on a goroutine a connection the loop gave back.
func (c *conn) resume(cfd, ufd int, in, uin []byte, next func(*upConn) bool) {
	nc, err := fileConn(cfd)
	if err != nil {
		c.p.log.Warn("http proxy: connection back from the loop", "src", c.info.src, "err", err)
		if ufd >= 0 {
			unix.Close(ufd)
		}
		c.end()
		return
	}
	var up *upConn
	if ufd >= 0 {
		unc, err := fileConn(ufd)
		if err != nil {
			c.p.log.Warn("http proxy: upstream connection back from the loop", "dst", c.info.dst, "err", err)
			_ = nc.Close()
			c.end()
			return
		}
		up = &upConn{nc: unc, dl: deadline{nc: unc}, idle: c.p.cfg.IdleTimeout, used: true}
		if len(uin) > 0 {
			up.pre = &prefixReader{b: uin, r: unc}
		}
	}
	c.br = clientReaders.Get().(*bufio.Reader)
	var rd io.Reader = clientIO{c}
	if len(in) > 0 {
		c.pre = &prefixReader{b: in, r: rd}
		rd = c.pre
	}
	c.br.Reset(rd)
	c.mu.Lock()
	c.nc, c.dl, c.up = nc, deadline{nc: nc}, up
	c.mu.Unlock()
	// The clocks' deadlines were the old socket's.
	c.writeClock, c.bodyClock = stallClock{}, stallClock{}
	if c.p.killed.Load() {
		// Shutdown's grace ran out while the connection moved.
		c.kill()
	}
	var first func() bool
	if next != nil && up == nil {
		c.end() // not handed back so: an exchange under way has its server
		return
	}
	if next != nil {
		c.acquireBuffers()
		c.lendUpstream(up)
		first = func() bool { return next(up) }
	}
	c.serve(first)
}
