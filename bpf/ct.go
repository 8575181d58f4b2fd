package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// CTEntry is one conntrack entry, decoded for humans and the GC.
type CTEntry struct {
	Ifindex        uint32 // host veth of the endpoint that tracks it
	Src, Dst       netip.AddrPort
	Proto          uint8
	Scope          string // "ingress" or "egress": the endpoint direction that allowed it
	Expires        time.Duration
	PacketsFwd     uint64
	BytesFwd       uint64
	PacketsRev     uint64
	BytesRev       uint64
	SrcIdentity    uint32
	DstIdentity    uint32
	Cookie         uint32
	PolicyRevision uint32
	FlagsFwd       uint8
	FlagsRev       uint8
	Closing        bool
}

// monotonicNow is the clock bpf_ktime_get_ns reads.
func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func be16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func addr4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// ListCT dumps live conntrack entries (expired ones are skipped).
func (m *Maps) ListCT() ([]CTEntry, error) {
	now := monotonicNow()
	var out []CTEntry
	var k datapathCtKey
	var v datapathCtEntry
	it := m.CT.Iterate()
	for it.Next(&k, &v) {
		if v.ExpiresNs < now {
			continue
		}
		scope := "ingress"
		if v.Scope == 1 {
			scope = "egress"
		}
		a := netip.AddrPortFrom(addr4(k.AddrA), be16(k.PortA))
		b := netip.AddrPortFrom(addr4(k.AddrB), be16(k.PortB))
		if v.A_isSrc == 0 {
			a, b = b, a
		}
		out = append(out, CTEntry{
			Ifindex:        k.Ifindex,
			Src:            a,
			Dst:            b,
			Proto:          k.Proto,
			Scope:          scope,
			Expires:        time.Duration(v.ExpiresNs - now),
			PacketsFwd:     v.PacketsFwd,
			BytesFwd:       v.BytesFwd,
			PacketsRev:     v.PacketsRev,
			BytesRev:       v.BytesRev,
			SrcIdentity:    v.SrcIdentity,
			DstIdentity:    v.DstIdentity,
			Cookie:         v.Cookie,
			PolicyRevision: v.PolicyRev,
			FlagsFwd:       v.FlagsFwd,
			FlagsRev:       v.FlagsRev,
			Closing:        v.Closing != 0,
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	return out, nil
}

// GCConntrack removes expired entries; the LRU would evict them anyway
// under pressure, but expired entries would otherwise crowd out live ones.
func (m *Maps) GCConntrack() (int, error) {
	now := monotonicNow()
	var expired []datapathCtKey
	var k datapathCtKey
	var v datapathCtEntry
	it := m.CT.Iterate()
	for it.Next(&k, &v) {
		if v.ExpiresNs < now {
			expired = append(expired, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("scan conntrack: %w", err)
	}
	n := 0
	for i := range expired {
		if err := m.CT.Delete(&expired[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("delete conntrack entry: %w", err)
		}
		n++
	}
	return n, nil
}

// Counter is packets and bytes summed over CPUs.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// CounterKey is (reason, direction); reason 0 is forwarded traffic.
type CounterKey struct {
	Reason uint8
	Dir    uint8
}

// ReadCounters sums the per-CPU forward and drop counters.
func (m *Maps) ReadCounters() (map[CounterKey]Counter, error) {
	out := map[CounterKey]Counter{}
	var per []datapathCounter
	for idx := uint32(0); idx < 512; idx++ {
		if err := m.Counters.Lookup(idx, &per); err != nil {
			return nil, fmt.Errorf("read counter %d: %w", idx, err)
		}
		var sum Counter
		for _, c := range per {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		if sum.Packets > 0 {
			out[CounterKey{Reason: uint8(idx >> 1), Dir: uint8(idx & 1)}] = sum
		}
	}
	return out, nil
}

// LostEvents is how many flow events the ring had no room for.
func (m *Maps) LostEvents() (uint64, error) {
	per, err := m.LostEventsPerCPU()
	if err != nil {
		return 0, err
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum, nil
}

// LostEventsPerCPU is LostEvents by the CPU the datapath ran on.
func (m *Maps) LostEventsPerCPU() ([]uint64, error) {
	var per []uint64
	if err := m.Lost.Lookup(uint32(0), &per); err != nil {
		return nil, fmt.Errorf("read lost events: %w", err)
	}
	return per, nil
}
