package l7proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Message heads. The proxy forwards a request head as it read it, so it
// parses only what it must know: the request line and Host for the rules
// and the flow, the fields that frame the body (RFC 9112 6) and those that
// say whether the connection lasts. It parses strictly, and refuses what a
// server could read differently (a bare LF, a folded line, a space before
// a colon, two differing lengths): a head the proxy and the server split
// differently would let a request past the rules inside another's body.

// statusError is a request the proxy refuses itself, with code.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &statusError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

var (
	errHeadTooLarge = &statusError{code: http.StatusRequestHeaderFieldsTooLarge, msg: "request head too large"}
	// maxLeadingEmpty bounds the empty lines skipped before a request line
	// (RFC 9112 2.2 lets a server skip some).
	maxLeadingEmpty = 4
)

// readHead appends to buf a head from br: its lines through the empty one
// that ends it, minus empty lines before its first. More than max bytes is
// errHeadTooLarge. The lines are checked by the parsers.
func readHead(br *bufio.Reader, buf []byte, max int) ([]byte, error) {
	first, skipped := true, 0
	lineStart := len(buf)
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max {
			return buf, errHeadTooLarge
		}
		buf = append(buf, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return buf, err
		}
		line := buf[lineStart:]
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			if !first {
				return buf, nil
			}
			if skipped++; skipped > maxLeadingEmpty {
				return buf, badRequest("empty lines instead of a request")
			}
			buf = buf[:lineStart]
			continue
		}
		first = false
		lineStart = len(buf)
	}
}

// lines iterates over the lines of a head without their line ends: CRLF,
// or with lenient (responses: a client's parser takes those) a bare LF too.
type lines struct {
	b       []byte
	lenient bool
}

// next returns the next line; ok false at the end, err for a bad ending.
func (l *lines) next() (line []byte, ok bool, err error) {
	if len(l.b) == 0 {
		return nil, false, nil
	}
	i := bytes.IndexByte(l.b, '\n')
	if i < 0 {
		return nil, false, errors.New("line without an end")
	}
	line, l.b = l.b[:i], l.b[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	} else if !l.lenient {
		return nil, false, errors.New("line ended by a bare LF")
	}
	return line, true, nil
}

// tchar marks the characters of a token (RFC 9110 5.6.2).
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// isCTL: control characters, which no part of a head may hold but a
// field value's tabs.
func isCTL(c byte) bool { return c < ' ' || c == 0x7f }

// field splits a header field line into its name and its value without
// surrounding whitespace. A line starting with whitespace (an obsolete
// fold), a name that is no token (whitespace before the colon included)
// or a control character in the value is an error.
func field(line []byte) (name, value []byte, err error) {
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		return nil, nil, fmt.Errorf("header line %q without a colon", clip(line))
	}
	name = line[:colon]
	if !isToken(name) {
		return nil, nil, fmt.Errorf("header name %q is not a token", clip(name))
	}
	value = trimOWS(line[colon+1:])
	for _, c := range value {
		if isCTL(c) && c != '\t' {
			return nil, nil, fmt.Errorf("header %s: control character %#x in its value", name, c)
		}
	}
	return name, value, nil
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// clip shortens what an error message quotes.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// parseLength parses a Content-Length value: decimal digits only.
func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// eachToken calls f with each element of a comma-separated list.
func eachToken(b []byte, f func([]byte)) {
	for len(b) > 0 {
		var t []byte
		if i := bytes.IndexByte(b, ','); i >= 0 {
			t, b = b[:i], b[i+1:]
		} else {
			t, b = b, nil
		}
		if t = trimOWS(t); len(t) > 0 {
			f(t)
		}
	}
}

// framing is what a head says of its body and its connection.
type framing struct {
	length  int64 // Content-Length; -1 when absent
	chunked bool  // Transfer-Encoding ends with chunked
	te      bool  // Transfer-Encoding present
	close   bool  // the sender ends the connection after this message
}

// connection reads the Connection header's close and keep-alive options.
func connection(v []byte, close, keepAlive *bool) {
	eachToken(v, func(t []byte) {
		if asciiEqualFold(t, "close") {
			*close = true
		} else if asciiEqualFold(t, "keep-alive") {
			*keepAlive = true
		}
	})
}

// requestHead is a parsed request head. Its byte slices point into raw.
type requestHead struct {
	raw    []byte // as received, request line through the empty line
	target []byte
	proto  string // HTTP/1.1 or HTTP/1.0
	// url is "http://" + host + the target, for the flow; view's Host and
	// Path are parts of it where they can be.
	url            string
	view           Request
	framing        framing
	expectContinue bool
	// upgrade: the request asks to switch protocols (Upgrade); h2c: to
	// HTTP/2 among them, which the proxy does not pass on (withoutUpgrade).
	upgrade, h2c bool
	connect      bool // CONNECT: an unframed 2xx answer makes the connection a tunnel
}

// hasBody reports whether a body follows the head.
func (h *requestHead) hasBody() bool { return h.framing.chunked || h.framing.length > 0 }

// method interns the common methods, so that they cost no allocation.
func method(b []byte) string {
	switch string(b) {
	case "GET":
		return http.MethodGet
	case "HEAD":
		return http.MethodHead
	case "POST":
		return http.MethodPost
	case "PUT":
		return http.MethodPut
	case "PATCH":
		return http.MethodPatch
	case "DELETE":
		return http.MethodDelete
	case "OPTIONS":
		return http.MethodOptions
	case "CONNECT":
		return http.MethodConnect
	}
	return string(b)
}

// parseRequestHead parses raw, a head readHead read, into h (whose
// slices it reuses). An error is a *statusError: the status to answer.
func parseRequestHead(raw []byte, h *requestHead) error {
	fields := h.view.Header[:0]
	*h = requestHead{raw: raw, framing: framing{length: -1}}
	h.view.Header = fields
	ls := lines{b: raw}
	line, ok, err := ls.next()
	if err != nil || !ok {
		return badRequest("request line: %v", err)
	}
	// method SP request-target SP HTTP-version (RFC 9112 3)
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return badRequest("malformed request line %q", clip(line))
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return badRequest("malformed request line %q", clip(line))
	}
	m, target, version := line[:sp1], line[sp1+1:sp1+1+sp2], line[sp1+2+sp2:]
	if !isToken(m) {
		return badRequest("method %q is not a token", clip(m))
	}
	if len(target) == 0 {
		return badRequest("empty request target")
	}
	for _, c := range target {
		if isCTL(c) || c == ' ' {
			return badRequest("control character %#x in the request target", c)
		}
	}
	switch string(version) {
	case "HTTP/1.1":
		h.proto = "HTTP/1.1"
	case "HTTP/1.0":
		h.proto = "HTTP/1.0"
	default:
		if len(version) == 8 && string(version[:5]) == "HTTP/" && isDigit(version[5]) && version[6] == '.' && isDigit(version[7]) {
			return &statusError{code: http.StatusHTTPVersionNotSupported, msg: fmt.Sprintf("version %s not supported", version)}
		}
		return badRequest("malformed version %q", clip(version))
	}
	h.view.Method, h.target = method(m), target
	h.connect = h.view.Method == http.MethodConnect

	var host, length, te []byte
	var hosts, lengths, tes int
	var closeOpt, keepAlive bool
	for {
		line, ok, err := ls.next()
		if err != nil {
			return badRequest("%v", err)
		}
		if !ok {
			return badRequest("head without its empty line")
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badRequest("folded header line")
		}
		name, value, err := field(line)
		if err != nil {
			return badRequest("%v", err)
		}
		// The rules see the fields net/http's server left in a Request's
		// Header: not Host, not Transfer-Encoding.
		switch {
		case asciiEqualFold(name, "host"):
			host, hosts = value, hosts+1
			continue
		case asciiEqualFold(name, "transfer-encoding"):
			te, tes = value, tes+1
			continue
		case asciiEqualFold(name, "content-length"):
			if lengths > 0 && !bytes.Equal(value, length) {
				return badRequest("conflicting Content-Length %q and %q", clip(length), clip(value))
			}
			length, lengths = value, lengths+1
		case asciiEqualFold(name, "connection"):
			connection(value, &closeOpt, &keepAlive)
		case asciiEqualFold(name, "expect"):
			h.expectContinue = asciiEqualFold(value, "100-continue")
		case asciiEqualFold(name, "upgrade"):
			h.upgrade = true
			eachToken(value, func(t []byte) {
				if i := bytes.IndexByte(t, '/'); i >= 0 {
					t = t[:i]
				}
				h.h2c = h.h2c || asciiEqualFold(trimOWS(t), "h2c")
			})
		}
		h.view.Header = append(h.view.Header, Field{Name: name, Value: value})
	}
	if lengths > 0 {
		n, ok := parseLength(length)
		if !ok {
			return badRequest("Content-Length %q is not a length", clip(length))
		}
		h.framing.length = n
	}
	if tes > 0 {
		switch {
		case h.proto == "HTTP/1.0":
			// RFC 9112 6.1: an HTTP/1.0 sender does not chunk; the
			// server might or might not.
			return badRequest("Transfer-Encoding in an HTTP/1.0 request")
		case tes > 1 || !asciiEqualFold(te, "chunked"):
			return &statusError{code: http.StatusNotImplemented, msg: fmt.Sprintf("transfer encoding %q not supported", clip(te))}
		case lengths > 0:
			return badRequest("both Transfer-Encoding and Content-Length")
		}
		h.framing.chunked, h.framing.te = true, true
	}
	h.framing.close = closeOpt || h.proto == "HTTP/1.0" && !keepAlive
	if hosts > 1 {
		return badRequest("%d Host headers", hosts)
	}
	if hosts == 0 && h.proto == "HTTP/1.1" && !h.connect {
		return badRequest("HTTP/1.1 request without Host")
	}
	if !validHost(host) {
		return badRequest("Host %q is not a host", clip(host))
	}
	return h.setURL(host, hosts > 0)
}

// withoutUpgrade returns a copy of the head raw without its Upgrade
// fields. After an h2c upgrade the server would read requests in HTTP/2
// frames, which the proxy cannot judge; without the field it answers in
// HTTP/1.1, as a client asking for h2c accepts (Envoy drops the field
// too). Connection may still name Upgrade: a field that is not there.
func withoutUpgrade(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	for first, rest := true, raw; len(rest) > 0; first = false {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		if !first {
			if colon := bytes.IndexByte(line, ':'); colon >= 0 && asciiEqualFold(line[:colon], "upgrade") {
				continue
			}
		}
		out = append(out, line...)
	}
	return out
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// validHost checks the characters of a Host value (RFC 3986 authority:
// reg-name, IP literal, port).
func validHost(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-._~%!$&'()*+,;=:[]@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// setURL sets the flow's URL and the rules' host and path from the target
// (RFC 9112 3.2): origin form "/path?query", asterisk form, authority form
// (CONNECT) or absolute form, whose authority is the host. An absolute
// form's authority must be the Host field's value, if there is one: the
// server is to go by the authority (RFC 9112 3.2.2), but servers and
// applications that go by the field exist, and the proxy forwards both as
// they came, so the rules must judge the one host both name.
func (h *requestHead) setURL(host []byte, hasHost bool) error {
	t := h.target
	if bytes.IndexByte(t, '#') >= 0 {
		// RFC 9112 3.2 has no fragment in a request target; a server
		// that drops it serves "/admin" of "/admin#.png".
		return badRequest("fragment in the request target %q", clip(t))
	}
	switch {
	case t[0] == '/' || len(t) == 1 && t[0] == '*':
		path := t
		if i := bytes.IndexByte(t, '?'); i >= 0 {
			path = t[:i]
		}
		var b strings.Builder
		b.Grow(len("http://") + len(host) + len(t))
		b.WriteString("http://")
		b.Write(host)
		b.Write(t)
		h.url = b.String()
		hostEnd := len("http://") + len(host)
		h.view.Host = h.url[len("http://"):hostEnd]
		h.view.Path = h.url[hostEnd : hostEnd+len(path)]
		if bytes.IndexByte(path, '%') >= 0 {
			p, err := url.PathUnescape(h.view.Path)
			if err != nil {
				return badRequest("request target: %v", err)
			}
			h.view.Path = p
		}
		if t[0] == '/' {
			return checkPath(h.view.Path)
		}
	case h.connect:
		if !validHost(t) {
			return badRequest("CONNECT to %q, not an authority", clip(t))
		}
		h.url = "http://" + string(t)
		h.view.Host, h.view.Path = h.url[len("http://"):], ""
	default:
		u, err := url.ParseRequestURI(string(t))
		if err != nil {
			return badRequest("request target: %v", err)
		}
		if u.Host == "" {
			return badRequest("request target %q without a host", clip(t))
		}
		if hasHost && !asciiEqualFold(host, u.Host) {
			return badRequest("request target for %q with Host %q", clip([]byte(u.Host)), clip(host))
		}
		h.url = "http://" + u.Host + u.RequestURI()
		h.view.Host, h.view.Path = u.Host, u.Path
		return checkPath(u.Path)
	}
	return nil
}

// checkPath refuses a (decoded) path a server may read as another path
// than the one the rules judge, since the proxy forwards it as it came:
// one with a dot segment, which a server removing them (RFC 3986 5.2.4)
// resolves, so that "/public/../admin" would pass a rule for "/public/.*"
// (a backslash separates segments for some servers, and %2F for servers
// that decode first); one with a control character, which a server in C
// may end the path at ("/secret%00.txt" under a rule for ".*\.txt").
// Clients remove dot segments before they send a request.
func checkPath(p string) error {
	seg := 0
	for i := 0; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			if isCTL(c) {
				return badRequest("control character %#x in the decoded path", c)
			}
			if c != '/' && c != '\\' {
				continue
			}
		}
		if s := p[seg:i]; s == "." || s == ".." {
			return badRequest("dot segment %q in the path %q", s, clip([]byte(p)))
		}
		seg = i + 1
	}
	return nil
}

// responseHead is a parsed response head.
type responseHead struct {
	raw     []byte
	code    int
	framing framing
}

// parseResponseHead parses a response head; an error makes it 502.
func parseResponseHead(raw []byte, h *responseHead) error {
	*h = responseHead{raw: raw, framing: framing{length: -1}}
	ls := lines{b: raw, lenient: true}
	line, ok, err := ls.next()
	if err != nil || !ok {
		return fmt.Errorf("status line: %v", err)
	}
	// HTTP-version SP 3DIGIT SP [reason-phrase] (RFC 9112 4); a missing
	// reason's space too, as clients take it.
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[7] != '0' && line[7] != '1' || line[8] != ' ' ||
		!isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) || len(line) > 12 && line[12] != ' ' {
		return fmt.Errorf("malformed status line %q", clip(line))
	}
	h.code = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if h.code < 100 {
		return fmt.Errorf("status %d", h.code)
	}
	http10 := line[7] == '0'
	var length []byte
	var lengths int
	var closeOpt, keepAlive bool
	for {
		line, ok, err := ls.next()
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("head without its empty line")
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return errors.New("folded header line")
		}
		name, value, err := field(line)
		if err != nil {
			return err
		}
		switch {
		case asciiEqualFold(name, "content-length"):
			if lengths > 0 && !bytes.Equal(value, length) {
				return fmt.Errorf("conflicting Content-Length %q and %q", clip(length), clip(value))
			}
			length, lengths = value, lengths+1
		case asciiEqualFold(name, "transfer-encoding"):
			// The final coding decides: chunked, or the body lasts
			// until the connection closes (RFC 9112 6.3).
			h.framing.te = true
			eachToken(value, func(t []byte) { h.framing.chunked = asciiEqualFold(t, "chunked") })
		case asciiEqualFold(name, "connection"):
			connection(value, &closeOpt, &keepAlive)
		}
	}
	if lengths > 0 {
		if h.framing.te {
			// Forwarded as is, it would frame differently for clients
			// that take one or the other.
			return errors.New("both Transfer-Encoding and Content-Length")
		}
		n, ok := parseLength(length)
		if !ok {
			return fmt.Errorf("Content-Length %q is not a length", clip(length))
		}
		h.framing.length = n
	}
	h.framing.close = closeOpt || http10 && !keepAlive
	return nil
}
