package dnsproxy

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/daemon/observe"
)

// The event stream from the proxy to aegisd is binary: at tens of
// thousands of queries a second, encoding and parsing JSON cost aegisd
// more CPU than the proxy spent proxying. A frame is a kind byte, a
// uvarint length and the payload.
const (
	eventsContentType = "application/vnd.aegis.l7-events"

	frameDNS  = 'd' // a DNS event, as appendDNSEvent writes it
	frameHTTP = 'h' // an HTTP event, as appendHTTPEvent writes it
	frameJSON = 'j' // any other L7 event, as JSON (read still: older proxies sent HTTP so)

	maxFrame = 1 << 20
)

var errShortFrame = errors.New("event frame too short")

// appendFrame appends ev as one frame.
func appendFrame(b []byte, ev *observe.L7Event) ([]byte, error) {
	switch {
	case ev.DNS != nil && ev.HTTP == nil:
		return appendBinaryFrame(b, frameDNS, func(b []byte) []byte { return appendDNSEvent(b, ev.DNS) })
	case ev.HTTP != nil && ev.DNS == nil:
		return appendBinaryFrame(b, frameHTTP, func(b []byte) []byte { return appendHTTPEvent(b, ev.HTTP) })
	}
	// Copies go to the encoder, which keeps what it is given: the binary
	// kinds' events can then stay on their callers' stacks.
	var e observe.L7Event
	if ev.DNS != nil {
		d := *ev.DNS
		e.DNS = &d
	}
	if ev.HTTP != nil {
		h := *ev.HTTP
		e.HTTP = &h
	}
	j, err := json.Marshal(&e)
	if err != nil {
		return b, fmt.Errorf("encode l7 event: %w", err)
	}
	b = append(b, frameJSON)
	b = binary.AppendUvarint(b, uint64(len(j)))
	return append(b, j...), nil
}

// appendBinaryFrame encodes a frame's payload in place after room for the
// longest length prefix, then closes the gap: the length is known only
// once the payload is.
func appendBinaryFrame(b []byte, kind byte, payload func([]byte) []byte) ([]byte, error) {
	start := len(b)
	b = append(b, kind, 0, 0, 0)
	b = payload(b)
	n := len(b) - start - 4
	if n > maxFrame {
		return b[:start], fmt.Errorf("%c event of %d bytes: over %d", kind, n, maxFrame)
	}
	var l [binary.MaxVarintLen32]byte
	ln := binary.PutUvarint(l[:], uint64(n))
	copy(b[start+1:], l[:ln])
	copy(b[start+1+ln:], b[start+4:])
	return b[:start+1+ln+n], nil
}

// readFrame reads one frame from r into buf (reused) and decodes it.
func readFrame(r *bufio.Reader, buf []byte) (observe.L7Event, []byte, error) {
	kind, err := r.ReadByte()
	if err != nil {
		return observe.L7Event{}, buf, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return observe.L7Event{}, buf, fmt.Errorf("read event frame length: %w", err)
	}
	if n > maxFrame {
		return observe.L7Event{}, buf, fmt.Errorf("event frame of %d bytes: over %d", n, maxFrame)
	}
	if uint64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return observe.L7Event{}, buf, fmt.Errorf("read event frame: %w", err)
	}
	var ev observe.L7Event
	switch kind {
	case frameDNS:
		var d observe.DNSEvent
		if err := decodeDNSEvent(buf, &d); err != nil {
			return ev, buf, err
		}
		ev.DNS = &d
	case frameHTTP:
		var h observe.HTTPEvent
		if err := decodeHTTPEvent(buf, &h); err != nil {
			return ev, buf, err
		}
		ev.HTTP = &h
	case frameJSON:
		if err := json.Unmarshal(buf, &ev); err != nil {
			return ev, buf, fmt.Errorf("decode l7 event: %w", err)
		}
	default:
		return ev, buf, fmt.Errorf("event frame of kind %q: unknown", kind)
	}
	return ev, buf, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// appendAddrPort writes an address as its 0, 4 or 16 bytes (the proxy's
// addresses come from sockets and carry no zone) and the port.
func appendAddrPort(b []byte, a netip.AddrPort) []byte {
	switch ip := a.Addr(); {
	case ip.Is4():
		a4 := ip.As4()
		b = append(append(b, 4), a4[:]...)
	case ip.Is6():
		a16 := ip.As16()
		b = append(append(b, 16), a16[:]...)
	default:
		b = append(b, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.Port())
}

// appendEnds writes what every L7 event starts with: when, and between
// which ends.
func appendEnds(b []byte, t time.Time, src, dst netip.AddrPort, srcID, dstID uint32) []byte {
	b = binary.AppendVarint(b, t.UnixNano())
	b = appendAddrPort(b, src)
	b = appendAddrPort(b, dst)
	b = binary.AppendUvarint(b, uint64(srcID))
	return binary.AppendUvarint(b, uint64(dstID))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

func appendDNSEvent(b []byte, ev *observe.DNSEvent) []byte {
	b = appendEnds(b, ev.Time, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity)
	b = append(b, ev.Proto)
	b = binary.AppendVarint(b, int64(ev.Verdict))
	b = binary.AppendUvarint(b, uint64(ev.Cookie))
	b = appendBool(b, ev.Response)
	b = appendString(b, ev.Query)
	b = appendStrings(b, ev.Qtypes)
	b = binary.AppendUvarint(b, uint64(ev.Rcode))
	b = appendStrings(b, ev.IPs)
	b = binary.AppendUvarint(b, uint64(ev.TTL))
	b = appendStrings(b, ev.CNAMEs)
	b = appendStrings(b, ev.Rrtypes)
	return binary.AppendVarint(b, int64(ev.Latency))
}

// decoder reads what appendDNSEvent wrote; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShortFrame
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShortFrame
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if uint64(len(d.b)) < n {
		d.err = errShortFrame
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) byte1() byte {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = errors.New("event field over 32 bits")
	}
	return uint32(v)
}

func (d *decoder) str() string { return string(d.bytes(d.uvarint())) }

// strs reads a list of strings; types (intern) come from a small set, and
// sharing their strings spares aegisd an allocation per record.
func (d *decoder) strs(intern bool) []string {
	n := d.uvarint()
	if n == 0 || d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShortFrame
		return nil
	}
	out := make([]string, 0, n)
	for range n {
		b := d.bytes(d.uvarint())
		if d.err != nil {
			return nil
		}
		if t, ok := dns.StringToType[string(b)]; intern && ok {
			out = append(out, dns.TypeToString[t])
		} else {
			out = append(out, string(b))
		}
	}
	return out
}

func (d *decoder) addrPort() netip.AddrPort {
	var ip netip.Addr
	switch n := d.byte1(); n {
	case 0:
	case 4:
		if b := d.bytes(4); b != nil {
			ip = netip.AddrFrom4([4]byte(b))
		}
	case 16:
		if b := d.bytes(16); b != nil {
			ip = netip.AddrFrom16([16]byte(b))
		}
	default:
		if d.err == nil {
			d.err = fmt.Errorf("event address of %d bytes", n)
		}
	}
	port := d.bytes(2)
	if d.err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, binary.BigEndian.Uint16(port))
}

// ends reads what appendEnds wrote.
func (d *decoder) ends() (t time.Time, src, dst netip.AddrPort, srcID, dstID uint32) {
	t = time.Unix(0, d.varint())
	src, dst = d.addrPort(), d.addrPort()
	return t, src, dst, d.uint32(), d.uint32()
}

func decodeDNSEvent(b []byte, ev *observe.DNSEvent) error {
	d := decoder{b: b}
	ev.Time, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity = d.ends()
	ev.Proto = d.byte1()
	ev.Verdict = flow.Verdict(d.varint())
	ev.Cookie = d.uint32()
	ev.Response = d.byte1() == 1
	ev.Query = d.str()
	ev.Qtypes = d.strs(true)
	ev.Rcode = d.uint32()
	ev.IPs = d.strs(false)
	ev.TTL = d.uint32()
	ev.CNAMEs = d.strs(false)
	ev.Rrtypes = d.strs(true)
	ev.Latency = time.Duration(d.varint())
	if d.err != nil {
		return fmt.Errorf("decode dns event: %w", d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("decode dns event: %d bytes left over", len(d.b))
	}
	return nil
}

func appendHTTPEvent(b []byte, ev *observe.HTTPEvent) []byte {
	b = appendEnds(b, ev.Time, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity)
	b = binary.AppendVarint(b, int64(ev.Verdict))
	b = binary.AppendVarint(b, int64(ev.Direction))
	b = binary.AppendUvarint(b, uint64(ev.Cookie))
	b = appendBool(b, ev.Response)
	b = appendString(b, ev.Method)
	b = appendString(b, ev.URL)
	b = appendString(b, ev.Protocol)
	b = binary.AppendUvarint(b, uint64(ev.Code))
	return binary.AppendVarint(b, int64(ev.Latency))
}

// httpWords are the methods and protocols nearly every request has:
// decoded to shared strings, they cost aegisd no allocation.
var httpWords = map[string]string{}

func init() {
	for _, w := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0"} {
		httpWords[w] = w
	}
}

func (d *decoder) word() string {
	b := d.bytes(d.uvarint())
	if w, ok := httpWords[string(b)]; ok {
		return w
	}
	return string(b)
}

func decodeHTTPEvent(b []byte, ev *observe.HTTPEvent) error {
	d := decoder{b: b}
	ev.Time, ev.Src, ev.Dst, ev.SrcIdentity, ev.DstIdentity = d.ends()
	ev.Verdict = flow.Verdict(d.varint())
	ev.Direction = flow.TrafficDirection(d.varint())
	ev.Cookie = d.uint32()
	ev.Response = d.byte1() == 1
	ev.Method = d.word()
	ev.URL = d.str()
	ev.Protocol = d.word()
	ev.Code = d.uint32()
	ev.Latency = time.Duration(d.varint())
	if d.err != nil {
		return fmt.Errorf("decode http event: %w", d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("decode http event: %d bytes left over", len(d.b))
	}
	return nil
}
