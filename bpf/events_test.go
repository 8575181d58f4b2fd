package bpf_test

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// emitNew runs the pinned from_pod program through BPF_PROG_TEST_RUN on n
// UDP packets of distinct connections (source ports from 40000+first) from an endpoint on ifindex 1 (the
// test run's device): each is a new connection, so each writes an event.
// Only this datapath's private maps see them.
func emitNew(t *testing.T, paths bpf.Paths, m *bpf.Maps, first, n int) {
	t.Helper()
	if err := m.SetEndpoint(1, bpf.EndpointInfo{Identity: 300, EndpointID: 1}); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.LoadPinnedProgram(paths.Program(bpf.ProgFromPod), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	for i := range n {
		p := make([]byte, 14+20+8)
		binary.BigEndian.PutUint16(p[12:], 0x0800)
		ip := p[14:]
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], 28)
		copy(ip[12:], []byte{10, 9, 0, 2})
		copy(ip[16:], []byte{198, 51, 100, 7})
		binary.BigEndian.PutUint16(ip[20:], uint16(40000+first+i))
		binary.BigEndian.PutUint16(ip[22:], 9)
		binary.BigEndian.PutUint16(ip[24:], 8)
		if _, err := prog.Run(&ebpf.RunOptions{Data: p}); err != nil {
			t.Fatalf("test run from_pod: %v", err)
		}
	}
}

func pending(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	rd.SetDeadline(time.Now())
	n := 0
	var rec ringbuf.Record
	for rd.ReadInto(&rec) == nil {
		n++
	}
	return n
}

// TestFlowRingResize loads the datapath, leaves events in its ring, and
// loads it again with another ring size: the new ring is pinned, and what
// the old one still held is counted lost.
func TestFlowRingResize(t *testing.T) {
	netns.RequireRoot(t)
	paths := bpf.Paths{Root: netns.BPFRoot(t)}
	dp, _, err := bpf.Load(paths, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if got := dp.Events.MaxEntries(); got != bpf.DefaultFlowRingSize {
		t.Fatalf("ring of %d bytes, want the default %d", got, bpf.DefaultFlowRingSize)
	}
	emitNew(t, paths, dp.Maps, 0, 10)

	dp2, linkErrs, err := bpf.Load(paths, bpf.Options{FlowRingSize: 64 << 10})
	if err != nil || len(linkErrs) != 0 {
		t.Fatalf("load with a 64 KiB ring: %v %v", err, linkErrs)
	}
	defer dp2.Close()
	if got := dp2.Events.MaxEntries(); got != 64<<10 {
		t.Fatalf("ring of %d bytes after resizing, want %d", got, 64<<10)
	}
	pinned, err := ebpf.LoadPinnedMap(paths.Maps()+"/"+bpf.MapEvents, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if pinned.MaxEntries() != 64<<10 {
		t.Fatalf("pinned ring of %d bytes, want the new one", pinned.MaxEntries())
	}
	if lost, err := dp2.LostEvents(); err != nil || lost != 10 {
		t.Fatalf("lost %d (%v), want the 10 events left in the old ring", lost, err)
	}

	// Same size again: the ring and what it holds stay.
	emitNew(t, paths, dp2.Maps, 10, 3)
	dp3, _, err := bpf.Load(paths, bpf.Options{FlowRingSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer dp3.Close()
	if n := pending(t, dp3.Events); n != 3 {
		t.Fatalf("%d events in the kept ring, want 3", n)
	}
	if lost, _ := dp3.LostEvents(); lost != 10 {
		t.Fatalf("lost %d after a reload of the same size, want 10", lost)
	}

	if _, _, err := bpf.Load(paths, bpf.Options{FlowRingSize: 100000}); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Fatalf("a ring of 100000 bytes: %v, want a power-of-two error", err)
	}
	if err := bpf.CheckFlowRingSize(uint32(os.Getpagesize()) / 2); err == nil {
		t.Fatal("half a page accepted")
	}
}

// TestFlowEventsOff: with flow events off the datapath writes none and
// counts none lost, and its counters still count every packet.
func TestFlowEventsOff(t *testing.T) {
	netns.RequireRoot(t)
	paths := bpf.Paths{Root: netns.BPFRoot(t)}
	dp, _, err := bpf.Load(paths, bpf.Options{NoFlowEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	emitNew(t, paths, dp.Maps, 0, 5)
	if n := pending(t, dp.Events); n != 0 {
		t.Fatalf("%d events written with flow events off", n)
	}
	cs, err := dp.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if got := cs[bpf.CounterKey{Reason: bpf.ReasonForwarded, Dir: 1}].Packets; got != 5 {
		t.Fatalf("forwarded egress packets counted %d, want 5", got)
	}
	if lost, _ := dp.LostEvents(); lost != 0 {
		t.Fatalf("lost %d with flow events off", lost)
	}

	// On again (the default): the same packets of new connections write events.
	dp2, _, err := bpf.Load(paths, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	emitNew(t, paths, dp2.Maps, 5, 5)
	if n := pending(t, dp2.Events); n != 5 {
		t.Fatalf("%d events written with flow events on again, want 5", n)
	}
}
