package dnsproxy

import (
	"bufio"
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"

	"github.com/aegis-cni/aegis/daemon/observe"
)

func TestEventFramesRoundTrip(t *testing.T) {
	dnsEv := observe.DNSEvent{
		Time: time.Unix(1700000000, 123456789), Src: podAddr, Dst: serverAddr, SrcIdentity: podID, DstIdentity: serverID,
		Proto: 17, Verdict: flow.Verdict_FORWARDED, Cookie: 10, Response: true, Query: "www.microsoft.com.",
		Qtypes: []string{"A"}, Rcode: 3, IPs: []string{"203.0.113.20", "2001:db8::1"}, TTL: 60,
		CNAMEs: []string{"edge.example.net."}, Rrtypes: []string{"CNAME", "A", "TYPE65280"}, Latency: 1234 * time.Microsecond,
	}
	v6 := observe.DNSEvent{Time: time.Unix(0, 1), Src: netip.MustParseAddrPort("[fd00::3]:5353"), Verdict: flow.Verdict_DROPPED, Query: "x."}
	http := observe.HTTPEvent{Time: time.Unix(1, 0), Method: "GET", URL: "http://a/b", Code: 403}
	httpFull := observe.HTTPEvent{Time: time.Unix(1700000000, 5), Src: podAddr, Dst: serverAddr, SrcIdentity: podID, DstIdentity: serverID,
		Verdict: flow.Verdict_FORWARDED, Direction: flow.TrafficDirection_INGRESS, Cookie: 12, Response: true, Method: "PROPFIND",
		URL: "http://api.example.test:8080/v1/x?y=1", Protocol: "HTTP/1.1", Code: 207, Latency: 3 * time.Millisecond}
	// The last, with both kinds set, is of no binary kind: a JSON frame.
	in := []observe.L7Event{{DNS: &dnsEv}, {HTTP: &http}, {DNS: &v6}, {HTTP: &httpFull}, {DNS: &dnsEv, HTTP: &http}}
	var stream []byte
	for i := range in {
		var err error
		if stream, err = appendFrame(stream, &in[i]); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(bytes.NewReader(stream))
	var buf []byte
	for i, want := range in {
		got, b, err := readFrame(r, buf)
		buf = b
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if want.DNS != nil {
			if got.DNS == nil || !got.DNS.Time.Equal(want.DNS.Time) {
				t.Fatalf("frame %d: %+v, want %+v", i, got.DNS, want.DNS)
			}
			g, w := *got.DNS, *want.DNS
			g.Time, w.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("frame %d:\n got %+v\nwant %+v", i, g, w)
			}
		} else {
			if got.HTTP == nil || !got.HTTP.Time.Equal(want.HTTP.Time) {
				t.Fatalf("frame %d: %+v, want %+v", i, got.HTTP, want.HTTP)
			}
			g, w := *got.HTTP, *want.HTTP
			g.Time, w.Time = time.Time{}, time.Time{}
			if !reflect.DeepEqual(g, w) {
				t.Errorf("frame %d:\n got %+v\nwant %+v", i, g, w)
			}
		}
	}
	if _, _, err := readFrame(r, buf); err == nil {
		t.Error("read past the end of the stream")
	}
	// Every truncation of a DNS frame is an error, not a panic or a
	// half-filled event.
	one, _ := appendFrame(nil, &in[0])
	for n := 1; n < len(one); n++ {
		if _, _, err := readFrame(bufio.NewReader(bytes.NewReader(one[:n])), nil); err == nil {
			t.Fatalf("frame cut at %d of %d bytes decoded", n, len(one))
		}
	}
	// The same for an HTTP frame.
	one, _ = appendFrame(nil, &in[3])
	for n := 1; n < len(one); n++ {
		if _, _, err := readFrame(bufio.NewReader(bytes.NewReader(one[:n])), nil); err == nil {
			t.Fatalf("http frame cut at %d of %d bytes decoded", n, len(one))
		}
	}
	one, _ = appendFrame(nil, &in[0])
	// A payload cut short inside an intact frame.
	var d observe.DNSEvent
	if err := decodeDNSEvent(one[2:len(one)-3], &d); err == nil {
		t.Error("a short payload decoded")
	}
	// An older proxy's JSON frame of an HTTP event still reads.
	old := `{"http":{"Method":"GET","URL":"http://a/","Code":200}}`
	if got, _, err := readFrame(bufio.NewReader(strings.NewReader("j"+string(rune(len(old)))+old)), nil); err != nil || got.HTTP == nil || got.HTTP.Code != 200 {
		t.Errorf("json frame: %+v, %v", got.HTTP, err)
	}
	if _, _, err := readFrame(bufio.NewReader(strings.NewReader("x\x01a")), nil); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("unknown frame kind: %v", err)
	}
}

func TestEventsBacklogBounded(t *testing.T) {
	var e Events
	e.Emit(observe.L7Event{DNS: &observe.DNSEvent{Query: "nobody.listens."}})
	if e.lost.Load() != 1 {
		t.Errorf("an event without followers: lost %d", e.lost.Load())
	}
	f, cancel := e.subscribe()
	defer cancel()
	ev := observe.L7Event{DNS: &observe.DNSEvent{Query: strings.Repeat("a", 200) + "."}}
	n := 0
	for e.lost.Load() == 1 && n < 2*maxPending {
		e.Emit(ev)
		n++
	}
	if e.lost.Load() != 2 || len(f.take(nil)) > maxPending {
		t.Fatalf("a follower that does not read: lost %d after %d events", e.lost.Load(), n)
	}
	select {
	case <-f.ready:
	default:
		t.Error("the follower was not told events wait")
	}
	// Taken, the backlog has room again.
	e.Emit(ev)
	if e.lost.Load() != 2 {
		t.Error("an emptied backlog still loses events")
	}
}

// FuzzReadFrame feeds aegisd's reader of the proxy's event stream
// arbitrary bytes: it errs or decodes, never panics, and what it decodes
// encodes back to a frame that decodes the same.
func FuzzReadFrame(f *testing.F) {
	dnsEv := observe.DNSEvent{Time: time.Unix(5, 0), Src: podAddr, Query: "a.", IPs: []string{"192.0.2.1"}}
	httpEv := observe.HTTPEvent{Time: time.Unix(6, 0), Dst: serverAddr, Method: "GET", URL: "http://x/", Code: 200}
	for _, ev := range []observe.L7Event{{DNS: &dnsEv}, {HTTP: &httpEv}} {
		b, err := appendFrame(nil, &ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("j\x02{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		ev, _, err := readFrame(r, nil)
		if err != nil || (ev.DNS == nil && ev.HTTP == nil) || (ev.DNS != nil && ev.HTTP != nil) {
			return
		}
		again, err := appendFrame(nil, &ev)
		if err != nil {
			return // over the frame bound, say
		}
		ev2, _, err := readFrame(bufio.NewReader(bytes.NewReader(again)), nil)
		if err != nil {
			t.Fatalf("re-encoded frame does not decode: %v", err)
		}
		if !reflect.DeepEqual(ev, ev2) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, ev2)
		}
	})
}
