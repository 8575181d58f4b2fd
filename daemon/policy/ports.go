package policy

import (
	"math/bits"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// PortPrefix is one port prefix as the policy LPM trie stores it: the top
// PrefixLen bits of Port are significant, the rest are zero.
type PortPrefix struct {
	Port      uint16
	PrefixLen uint8
}

// PortPrefixes splits the inclusive range [first, last] into the fewest
// aligned prefixes that cover exactly that range (at most 30 for 16 bits).
// An empty range (first > last) yields nil.
func PortPrefixes(first, last uint16) []PortPrefix {
	var out []PortPrefix
	// uint32 so that lo can step past 65535 without wrapping.
	lo, hi := uint32(first), uint32(last)
	for lo <= hi {
		// The largest block that starts at lo (lo's alignment) and does
		// not run past hi.
		size := uint32(1) << 16
		if lo != 0 {
			size = uint32(1) << bits.TrailingZeros32(lo)
		}
		for lo+size-1 > hi {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(lo), PrefixLen: uint8(16 - bits.TrailingZeros32(size))})
		lo += size
	}
	return out
}

// portMask is the mask of a PrefixLen-bit port prefix.
func portMask(prefixLen uint8) uint16 {
	if prefixLen >= 16 {
		return 0xffff
	}
	return uint16(uint32(0xffff) << (16 - uint32(prefixLen)))
}

// portInPrefix reports whether port p lies inside the prefix (port, prefixLen).
func portInPrefix(port uint16, prefixLen uint8, p uint16) bool {
	m := portMask(prefixLen)
	return p&m == port&m
}

// protoNumber maps a NetworkPolicy protocol to its IP protocol number;
// Kubernetes defaults an absent protocol to TCP.
func protoNumber(p *corev1.Protocol) uint8 {
	if p == nil {
		return ProtoTCP
	}
	switch *p {
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	}
	return ProtoTCP
}

// resolveNamedPort returns the port numbers that name has for proto in
// ports, sorted and unique. One identity may have several: its pods may
// disagree on the number behind a name, and a policy then allows each.
func resolveNamedPort(ports []NamedPort, name string, proto uint8) []uint16 {
	var out []uint16
	for _, np := range ports {
		if np.Name == name && np.Protocol == proto && np.Port != 0 {
			out = append(out, np.Port)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
