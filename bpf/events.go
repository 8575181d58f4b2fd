package bpf

import (
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
)

// Flow event types (events.h).
const (
	EventDrop     = 1
	EventNew      = 2
	EventTCPFlags = 3
	EventSummary  = 4
)

// Connection states in flow events (conntrack.h).
const (
	CTNew         = 1
	CTEstablished = 2
	CTReply       = 3
)

// FlowEvent is one datapath event, decoded.
type FlowEvent struct {
	Time        time.Time
	Type        uint8
	Dropped     bool
	Reason      uint8 // a Hubble DropReason number when Dropped
	Dir         uint8 // the endpoint's direction: 0 ingress, 1 egress
	Ifindex     uint32
	SrcIdentity uint32
	DstIdentity uint32
	Cookie      uint32 // the rule that decided, 0 for none
	Src, Dst    netip.AddrPort
	Proto       uint8
	TCPFlags    uint8
	CTState     uint8
	Len         uint32
	Packets     uint64 // summaries: totals of the connection so far
	Bytes       uint64
}

// FlowEventSize is the size of one raw event in the ring.
const FlowEventSize = int(unsafe.Sizeof(datapathFlowEvent{}))

// Clock turns the datapath's monotonic timestamps into wall-clock time.
type Clock struct{ offset time.Duration }

// NewClock measures the offset between the two clocks now.
func NewClock() Clock {
	return Clock{offset: time.Duration(time.Now().UnixNano() - int64(monotonicNow()))}
}

// Wall converts a bpf_ktime_get_ns() value.
func (c Clock) Wall(mono uint64) time.Time { return time.Unix(0, int64(mono)+int64(c.offset)) }

// DecodeFlowEvent decodes a raw ring record.
func DecodeFlowEvent(raw []byte, clock Clock) (FlowEvent, error) {
	if len(raw) < FlowEventSize {
		return FlowEvent{}, fmt.Errorf("decode flow event: %d bytes, want %d", len(raw), FlowEventSize)
	}
	// The ring holds the C struct as is (same host, same layout): copy its
	// bytes into the Go twin instead of decoding field by field, which
	// matters at a million events a second.
	var e datapathFlowEvent
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), FlowEventSize), raw)
	return FlowEvent{
		Time:        clock.Wall(e.TsNs),
		Type:        e.Type,
		Dropped:     e.Verdict == 2,
		Reason:      e.Reason,
		Dir:         e.Dir,
		Ifindex:     e.Ifindex,
		SrcIdentity: e.SrcIdentity,
		DstIdentity: e.DstIdentity,
		Cookie:      e.Cookie,
		Src:         netip.AddrPortFrom(addr4(e.Saddr), be16(e.Sport)),
		Dst:         netip.AddrPortFrom(addr4(e.Daddr), be16(e.Dport)),
		Proto:       e.Proto,
		TCPFlags:    e.TcpFlags,
		CTState:     e.CtState,
		Len:         e.Len,
		Packets:     e.Packets,
		Bytes:       e.Bytes,
	}, nil
}

// EventReader opens the flow-event ring for reading.
func (m *Maps) EventReader() (*ringbuf.Reader, error) {
	r, err := ringbuf.NewReader(m.Events)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring: %w", err)
	}
	return r, nil
}
