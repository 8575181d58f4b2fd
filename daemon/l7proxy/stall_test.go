package l7proxy

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// Stalls: a connection on which nothing moves for IdleTimeout while the
// proxy waits on the client, or on the server to take a request body,
// ends; otherwise the connection, its upstream connection and the body
// copier are held for ever.

const stallIdle = 300 * time.Millisecond

func stallProxy(t *testing.T) *Proxy {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	p.cfg.IdleTimeout = stallIdle
	return p
}

// silentServer takes one connection and runs serve on it.
func silentServer(t *testing.T, serve func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// ended waits for c to end, within limit.
func ended(t *testing.T, c net.Conn, limit time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %s", limit)
	}
}

// TestBodyStalls: a request body that stops coming ends the connection.
func TestBodyStalls(t *testing.T) {
	p := stallProxy(t)
	dst := silentServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	c := through(t, p, freeAddr(t, "127.0.0.2"), dst)
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	ended(t, c, 3*time.Second)
}

// TestBodyTrickles: a body that keeps coming, however slowly, is not cut.
func TestBodyTrickles(t *testing.T) {
	p := stallProxy(t)
	dst, errc, _ := scriptedServer(t, []step{expect("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabcdef"), send(okResp)})
	c := through(t, p, freeAddr(t, "127.0.0.2"), dst)
	script := []step{send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")}
	for _, b := range "abcdef" {
		script = append(script, step{pause: stallIdle / 3}, send(string(b)))
	}
	runClient(t, c, append(script, expect(okResp)), false)
	if err := <-errc; err != nil {
		t.Error(err)
	}
}

// TestClientStopsReading: a client that stops reading its answer ends
// the connection, and with it the server's.
func TestClientStopsReading(t *testing.T) {
	p := stallProxy(t)
	done := make(chan error, 1)
	dst := silentServer(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		big := []byte(strings.Repeat("x", 64<<10))
		for {
			if _, err := c.Write(big); err != nil {
				done <- err
				return
			}
		}
	})
	c := through(t, p, freeAddr(t, "127.0.0.2"), dst)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	// The client reads nothing.
	if err := <-done; errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the proxy still holds the server's connection")
	}
}

// TestServerStopsReading: a server that takes no more of a request body
// and does not answer ends the connection.
func TestServerStopsReading(t *testing.T) {
	p := stallProxy(t)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	dst := silentServer(t, func(c net.Conn) { <-hold })
	c := through(t, p, freeAddr(t, "127.0.0.2"), dst)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
	big := []byte(strings.Repeat("x", 64<<10))
	for {
		if _, err := c.Write(big); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the proxy still holds the client's connection")
			}
			return
		}
	}
}
