package l7proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
)

// The loop's own cases; TestFraming runs every framing case in it too.

// loopPeer serves GET /slow after a pause past loopPatience, /big as 4
// MiB, /parts as a body of a fixed length in three writes, anything else
// as its path.
func loopPeer(t *testing.T, parts chan string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(loopPatience + 300*time.Millisecond)
			io.WriteString(w, "slow")
		case "/big":
			w.Header().Set("Content-Length", fmt.Sprint(4<<20))
			w.Write(bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16))
		case "/parts":
			w.Header().Set("Content-Length", fmt.Sprint(len("one\ntwo\nthree\n")))
			for p := range parts {
				io.WriteString(w, p)
				w.(http.Flusher).Flush()
			}
		default:
			io.WriteString(w, r.URL.Path)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// roundTrip sends GET path on c and reads the response.
func roundTrip(t *testing.T, c net.Conn, br *bufio.Reader, path string) (int, string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// TestLoopServes: requests on a kept-alive connection after its first go
// through the loop, allowed and denied ones alike answered as on a
// goroutine, each with its events.
func TestLoopServes(t *testing.T) {
	p, events := eventProxy(t)
	c := through(t, p, freeAddr(t, "127.0.0.2"), loopPeer(t, nil))
	br := bufio.NewReader(c)
	var want []string
	for i := range 40 {
		path := "/" + strings.Repeat("a", i%5+1)
		if i == 20 {
			path = "/403"
		}
		code, body := roundTrip(t, c, br, path)
		switch {
		case path == "/403" && (code != 403 || body != "Access denied\r\n"):
			t.Errorf("GET /403: %d %q, want 403 Access denied", code, body)
		case path != "/403" && (code != 200 || body != path):
			t.Errorf("GET %s: %d %q", path, code, body)
		}
		if path == "/403" {
			want = append(want, "DROPPED GET http://x/403 0", "DROPPED GET http://x/403 403")
		} else {
			want = append(want, "FORWARDED GET http://x"+path+" 200")
		}
	}
	// Every allowed request but the first went through the loop: the
	// denied one went back to a goroutine, which answered it and gave
	// the connection back.
	if got := p.looped.Load(); got != 38 {
		t.Errorf("the loop forwarded %d requests, want 38", got)
	}
	if got := p.adopted.Load(); got != 2 {
		t.Errorf("the loop took the connection %d times, want 2", got)
	}
	var got []string
	for _, ev := range events() {
		got = append(got, fmt.Sprintf("%s %s %s %d", ev.Verdict, ev.Method, ev.URL, ev.Code))
		if ev.Direction != flow.TrafficDirection_EGRESS || ev.Cookie != 1 || ev.Protocol != "HTTP/1.1" || ev.Response && ev.Latency <= 0 {
			t.Errorf("event %+v", ev)
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestLoopHandsBack: responses the loop does not finish (slow, larger
// than the client takes at once, in parts) reach the client whole, and
// the connection goes on.
func TestLoopHandsBack(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	parts := make(chan string)
	c := through(t, p, freeAddr(t, "127.0.0.2"), loopPeer(t, parts))
	br := bufio.NewReader(c)
	roundTrip(t, c, br, "/first")
	if code, body := roundTrip(t, c, br, "/slow"); code != 200 || body != "slow" {
		t.Errorf("GET /slow: %d %q", code, body)
	}
	if code, body := roundTrip(t, c, br, "/after"); code != 200 || body != "/after" {
		t.Errorf("GET /after: %d %q", code, body)
	}

	// The client takes its time: the socket's buffers fill.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(200 * time.Millisecond)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(b, bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16)) {
		t.Fatalf("GET /big: %d bytes (%v), want %d", len(b), err, 4<<20)
	}

	// A body of a known length written in parts comes part by part.
	roundTrip(t, c, br, "/again")
	io.WriteString(c, "GET /parts HTTP/1.1\r\nHost: x\r\n\r\n")
	var body io.Reader
	for i, part := range []string{"one\n", "two\n", "three\n"} {
		parts <- part
		if i == 0 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body = resp.Body
		}
		got := make([]byte, len(part))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(body, got); err != nil || string(got) != part {
			t.Fatalf("part %q: got %q (%v)", part, got, err)
		}
	}
	close(parts)
	if code, body := roundTrip(t, c, br, "/last"); code != 200 || body != "/last" {
		t.Errorf("GET /last: %d %q", code, body)
	}
	if p.adopted.Load() < 3 {
		t.Errorf("the loop took the connection %d times, want it back after each", p.adopted.Load())
	}
}

// TestLoopIdle: a connection idle in the loop ends after IdleTimeout.
func TestLoopIdle(t *testing.T) {
	p := stallProxy(t)
	c := through(t, p, freeAddr(t, "127.0.0.2"), loopPeer(t, nil))
	roundTrip(t, c, bufio.NewReader(c), "/a")
	start := time.Now()
	ended(t, c, stallIdle+loopSweep+time.Second)
	if d := time.Since(start); d < stallIdle-50*time.Millisecond {
		t.Errorf("ended after %s, before IdleTimeout %s", d, stallIdle)
	}
	if p.adopted.Load() != 1 {
		t.Errorf("adopted %d, want 1", p.adopted.Load())
	}
}

// TestLoopShutdown: shutdown ends the connections idle in the loop.
func TestLoopShutdown(t *testing.T) {
	p := newTestProxy(t, func(netip.Addr) (bool, error) { return false, nil }, nil)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	c := through(t, p, freeAddr(t, "127.0.0.2"), loopPeer(t, nil))
	roundTrip(t, c, bufio.NewReader(c), "/a")
	p.shutdown()
	ended(t, c, time.Second)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the connection is still counted after its end")
	}
}

// FuzzHeadEnd: the loop finds the end of a head where readHead does.
func FuzzHeadEnd(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET / HTTP/1.1\nHost: x\n\nrest", "\r\nGET /", "HTTP/1.1 200 OK\r\n\r", "a\r\r\n\r\n", "x\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := headEnd(b)
		head, err := readHead(bufio.NewReaderSize(bytes.NewReader(b), 16), nil, 1<<20)
		switch {
		case n == -2:
			if !(b[0] == '\n' || len(b) > 1 && b[0] == '\r' && b[1] == '\n') {
				t.Fatalf("headEnd(%q) = -2 without an empty first line", b)
			}
		case n == -1:
			if err == nil {
				t.Fatalf("headEnd(%q) = -1, readHead read %q", b, head)
			}
		default:
			if err != nil || !bytes.Equal(head, b[:n]) {
				t.Fatalf("headEnd(%q) = %d, readHead read %q (%v)", b, n, head, err)
			}
		}
	})
}
