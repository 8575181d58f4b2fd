package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func parseHead(t testing.TB, raw string) (*requestHead, error) {
	t.Helper()
	head, err := readHead(bufio.NewReader(strings.NewReader(raw)), nil, 64<<10)
	if err != nil {
		return nil, err
	}
	var h requestHead
	return &h, parseRequestHead(head, &h)
}

func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		raw              string
		method, path     string
		host, url        string
		length           int64
		chunked, closing bool
	}{
		{raw: "GET / HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", path: "/", host: "a", url: "http://a/", length: -1},
		// Empty lines before the request line are skipped.
		{raw: "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", path: "/", host: "a", url: "http://a/", length: -1},
		{raw: "POST /a%2Fb?x=%zz HTTP/1.1\r\nhost:a:8080\r\ncontent-length: 10\r\nContent-Length: 10\r\n\r\n", method: "POST", path: "/a/b", host: "a:8080", url: "http://a:8080/a%2Fb?x=%zz", length: 10},
		{raw: "PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nConnection: keep-alive, Close\r\n\r\n", method: "PUT", path: "/u", host: "a", url: "http://a/u", length: -1, chunked: true, closing: true},
		{raw: "GET / HTTP/1.0\r\n\r\n", method: "GET", path: "/", url: "http:///", length: -1, closing: true},
		{raw: "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", method: "GET", path: "/", url: "http:///", length: -1},
		{raw: "GET http://b.example/p?q HTTP/1.1\r\nHost: B.example\r\n\r\n", method: "GET", path: "/p", host: "b.example", url: "http://b.example/p?q", length: -1},
		{raw: "GET http://b.example/p HTTP/1.0\r\n\r\n", method: "GET", path: "/p", host: "b.example", url: "http://b.example/p", length: -1, closing: true},
		// Dots that are no segment of their own, and dots in the query.
		{raw: "GET /a/.b/..c/.../d.e?x=../y HTTP/1.1\r\nHost: a\r\n\r\n", method: "GET", path: "/a/.b/..c/.../d.e", host: "a", url: "http://a/a/.b/..c/.../d.e?x=../y", length: -1},
		{raw: "CONNECT b.example:443 HTTP/1.1\r\n\r\n", method: "CONNECT", host: "b.example:443", url: "http://b.example:443", length: -1},
		{raw: "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", method: "OPTIONS", path: "*", host: "a", url: "http://a*", length: -1},
		{raw: "BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n", method: "BREW", path: "/pot", host: "a", url: "http://a/pot", length: -1},
	} {
		h, err := parseHead(t, tc.raw)
		if err != nil {
			t.Errorf("%q: %v", tc.raw, err)
			continue
		}
		if h.view.Method != tc.method || h.view.Path != tc.path || h.view.Host != tc.host || h.url != tc.url ||
			h.framing.length != tc.length || h.framing.chunked != tc.chunked || h.framing.close != tc.closing {
			t.Errorf("%q: %s %q host %q url %q length %d chunked %v close %v", tc.raw, h.view.Method, h.view.Path, h.view.Host, h.url,
				h.framing.length, h.framing.chunked, h.framing.close)
		}
		if !bytes.HasPrefix(h.raw, []byte(tc.method)) {
			t.Errorf("%q: raw %q does not start with the request line", tc.raw, h.raw)
		}
	}
}

func TestRequestHeadFields(t *testing.T) {
	h, err := parseHead(t, "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a:2 \r\nTransfer-Encoding: chunked\r\nX-Empty:\r\n\r\n")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range h.view.Header {
		got = append(got, string(f.Name)+"="+string(f.Value))
	}
	// Host and Transfer-Encoding are not in an http.Header either.
	if strings.Join(got, ",") != "X-A=1,x-a=2,X-Empty=" {
		t.Errorf("fields %v", got)
	}
}

func TestRequestHeadErrors(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		code int
	}{
		{"GET / HTTP/1.1\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400},
		{"GET / http/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505},
		{"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", 400},
		{"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 01\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", 400},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
		{"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501},
		{"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"GET a HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /%x HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"CONNECT a/b HTTP/1.1\r\n\r\n", 400},
		// An absolute form names the host the server serves (RFC 9112
		// 3.2.2), a Host field the one some servers and applications go
		// by: the rules would judge one and the server serve the other.
		{"GET http://allowed/ HTTP/1.1\r\nHost: other\r\n\r\n", 400},
		{"GET http://allowed/ HTTP/1.1\r\nHost: allowed:80\r\n\r\n", 400},
		// Dot segments: a server that removes them (RFC 3986 5.2.4) serves
		// another path than the rules judged, "/public/../admin" under a
		// rule for "/public/.*"; encoded or behind a backslash too.
		{"GET /public/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /public/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /public/..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /public\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /public/..%5cadmin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /a/. HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /a/..?q HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /./a HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET http://a/public/../admin HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		// A fragment has no place in a request (RFC 9112 3.2); a server
		// that drops it serves "/admin" of "/admin#.png".
		{"GET /admin#.png HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET http://a/admin#.png HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		// A control character decoded: a server in C ends the path at a
		// NUL, "/secret%00.txt" under a rule for ".*\\.txt".
		{"GET /secret%00.txt HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"GET /a%0d%0aX:%20y HTTP/1.1\r\nHost: a\r\n\r\n", 400},
		{"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
	} {
		_, err := parseHead(t, tc.raw)
		var se *statusError
		if !errors.As(err, &se) || se.code != tc.code {
			t.Errorf("%q: %v, want %d", tc.raw, err, tc.code)
		}
	}
	big := "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"
	if _, err := parseHead(t, big); err != errHeadTooLarge {
		t.Errorf("a head over the limit: %v, want 431", err)
	}
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		raw              string
		code             int
		length           int64
		chunked, te, end bool
		bad              bool
	}{
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", code: 200, length: 5},
		{raw: "HTTP/1.1 200\r\n\r\n", code: 200, length: -1},
		{raw: "HTTP/1.1 404 Not Found\nContent-Length: 0\n\n", code: 404, length: 0},
		{raw: "HTTP/1.0 200 OK\r\n\r\n", code: 200, length: -1, end: true},
		{raw: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", code: 200, length: 1},
		{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", code: 200, length: -1, chunked: true, te: true},
		{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", code: 200, length: -1, te: true},
		{raw: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", code: 200, length: -1, end: true},
		{raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", bad: true},
		{raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", bad: true},
		{raw: "HTTP/1.1 2000 OK\r\n\r\n", bad: true},
		{raw: "HTTP/2 200 OK\r\n\r\n", bad: true},
		{raw: "HTTP/1.1 099 x\r\n\r\n", bad: true},
	} {
		var h responseHead
		err := parseResponseHead([]byte(tc.raw), &h)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: parsed, want an error", tc.raw)
			}
			continue
		}
		if err != nil || h.code != tc.code || h.framing.length != tc.length || h.framing.chunked != tc.chunked || h.framing.te != tc.te || h.framing.close != tc.end {
			t.Errorf("%q: %d %+v %v", tc.raw, h.code, h.framing, err)
		}
	}
}

// FuzzRequestHead: what the parser takes, net/http's parser (as a server
// behind the proxy might use) takes too, and reads alike: the same
// method, host, path and body framing. A head read one way by the proxy
// and another by the server would smuggle requests past the rules.
func FuzzRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /a?b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
		"PUT /%41 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
		"GET http://x/y HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\nX: \t\x80\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: \r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		head, err := readHead(bufio.NewReaderSize(bytes.NewReader(in), 16), nil, 4096)
		if err != nil {
			return
		}
		var h requestHead
		if err := parseRequestHead(head, &h); err != nil {
			var se *statusError
			if !errors.As(err, &se) {
				t.Fatalf("%q: error %v without a status", head, err)
			}
			return
		}
		// What the server gets is the head as forwarded.
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(h.raw)))
		if err != nil {
			t.Fatalf("%q: the proxy takes it, net/http does not: %v", h.raw, err)
		}
		if r.Method != h.view.Method || r.Host != h.view.Host || r.URL.Path != h.view.Path {
			t.Fatalf("%q: net/http reads %s host %q path %q, the proxy %s host %q path %q", h.raw, r.Method, r.Host, r.URL.Path, h.view.Method, h.view.Host, h.view.Path)
		}
		length := max(h.framing.length, 0)
		if h.framing.chunked {
			length = -1
		}
		if r.ContentLength != length || (len(r.TransferEncoding) > 0) != h.framing.chunked {
			t.Fatalf("%q: net/http frames the body as length %d %v, the proxy as %+v", h.raw, r.ContentLength, r.TransferEncoding, h.framing)
		}
		if r.Close != h.framing.close {
			t.Fatalf("%q: net/http says close %v, the proxy %v", h.raw, r.Close, h.framing.close)
		}
		// The rules see the fields net/http has.
		for _, fl := range h.view.Header {
			if !slices.Contains(r.Header.Values(string(fl.Name)), string(fl.Value)) {
				t.Fatalf("%q: field %s: %q not among net/http's %q", h.raw, fl.Name, fl.Value, r.Header.Values(string(fl.Name)))
			}
		}
		// Parsing is stable: the forwarded head parses the same.
		var again requestHead
		if err := parseRequestHead(append([]byte(nil), h.raw...), &again); err != nil || again.url != h.url || again.framing != h.framing {
			t.Fatalf("%q: parsed again: %+v %v", h.raw, again.framing, err)
		}
	})
}

// FuzzChunked: a chunked body the proxy forwards is one net/http decodes,
// ending where the proxy says it ends.
func FuzzChunked(f *testing.F) {
	for _, s := range []string{"0\r\n\r\n", "3;a=b\r\nabc\r\n0\r\nT: v\r\n\r\nNEXT", "A\r\n0123456789\r\n0\r\n\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		r := bufio.NewReaderSize(bytes.NewReader(in), 16)
		if err := copyChunked(w, r); err != nil {
			return
		}
		w.Flush()
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatalf("%q: forwarded %q, not the body as sent", in, out.Bytes())
		}
		// net/http's server reads the body and its trailer from the same
		// bytes, and stops at the same place.
		req := "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + out.String() + "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
		br := bufio.NewReader(strings.NewReader(req))
		hr, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("%q: net/http: %v", out.Bytes(), err)
		}
		if _, err := io.ReadAll(hr.Body); err != nil {
			t.Fatalf("%q: net/http reads the body: %v", out.Bytes(), err)
		}
		if next, err := http.ReadRequest(br); err != nil || next.Method != "GET" {
			t.Fatalf("%q: net/http does not find the next request where the proxy does: %v", out.Bytes(), err)
		}
	})
}
