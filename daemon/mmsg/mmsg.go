// Package mmsg moves IPv4 UDP datagrams in batches, with recvmmsg and
// sendmmsg on sockets Go's poller does not know: the DNS proxy's UDP loop
// (dnsproxy/udp.go says why it owns its sockets) and the benchmark's relay
// that bounds it. The calls never block (MSG_DONTWAIT) and are made as raw
// system calls: a batch's send runs the receivers' softirqs inline and can
// take tens of microseconds, long enough for the Go runtime to hand the
// thread's processor to another thread if it were told the call had begun.
package mmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// In is a reusable set of receive buffers.
type In struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte
	oob   [][]byte
}

// NewIn makes count buffers of size bytes, each with oobSize bytes for
// control messages.
func NewIn(count, size, oobSize int) *In {
	b := &In{
		hdrs:  make([]unix.Mmsghdr, count),
		iovs:  make([]unix.Iovec, count),
		names: make([]unix.RawSockaddrInet4, count),
		bufs:  make([][]byte, count),
		oob:   make([][]byte, count),
	}
	for i := range count {
		b.bufs[i] = make([]byte, size)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(size)
		h := &b.hdrs[i].Hdr
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		if oobSize > 0 {
			b.oob[i] = make([]byte, oobSize)
			h.Control = &b.oob[i][0]
		}
	}
	return b
}

// Recv reads up to a batch of the datagrams waiting on fd: 0 and EAGAIN
// when none waits.
func (b *In) Recv(fd int) (int, error) {
	for i := range b.hdrs {
		h := &b.hdrs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.SetControllen(len(b.oob[i]))
		h.Flags = 0
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(len(b.hdrs)), unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// Data is datagram i's payload, Truncated says whether it was longer than
// its buffer, Control is its control messages.
func (b *In) Data(i int) []byte    { return b.bufs[i][:b.hdrs[i].Len] }
func (b *In) Truncated(i int) bool { return b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }
func (b *In) Control(i int) []byte { return b.oob[i][:b.hdrs[i].Hdr.Controllen] }

// From is datagram i's sender, false when it is not IPv4.
func (b *In) From(i int) (netip.AddrPort, bool) {
	sa := &b.names[i]
	if b.hdrs[i].Hdr.Namelen < unix.SizeofSockaddrInet4 || sa.Family != unix.AF_INET {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), true
}

// Out gathers datagrams for one socket, to send in as few calls as
// the kernel takes them.
type Out struct {
	payloads [][]byte
	to       []netip.AddrPort // zero: the socket's connected peer
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	names    []unix.RawSockaddrInet4
}

// Add queues payload for to (zero: the socket's connected peer).
func (b *Out) Add(payload []byte, to netip.AddrPort) {
	if len(payload) == 0 {
		return
	}
	b.payloads = append(b.payloads, payload)
	b.to = append(b.to, to)
}

// Len is how many datagrams are queued.
func (b *Out) Len() int { return len(b.payloads) }

// sendWait bounds how long a send waits for room in a full socket buffer
// (a veth's peer behind), each time it finds none.
const sendWait = 100 // ms

// Send writes the datagrams gathered on fd and empties b, keeping its
// memory. It returns the first error that stopped it; the datagrams not
// sent by then are dropped, as a full network would drop them.
func (b *Out) Send(fd int) error {
	defer b.Reset()
	n := len(b.payloads)
	if n == 0 {
		return nil
	}
	b.hdrs = grow(b.hdrs, n)
	b.iovs = grow(b.iovs, n)
	b.names = grow(b.names, n)
	for i, p := range b.payloads {
		b.iovs[i].Base = &p[0]
		b.iovs[i].SetLen(len(p))
		h := &b.hdrs[i].Hdr
		*h = unix.Msghdr{Iov: &b.iovs[i]}
		h.SetIovlen(1)
		if to := b.to[i]; to.IsValid() {
			if !to.Addr().Is4() {
				return fmt.Errorf("send to %s: not IPv4", to)
			}
			b.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Port: htons(to.Port()), Addr: to.Addr().As4()}
			h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
			h.Namelen = unix.SizeofSockaddrInet4
		}
	}
	for sent, waits := 0, 0; sent < n; {
		k, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[sent])), uintptr(n-sent), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == 0:
			sent += int(k)
		case errno == unix.EINTR:
		case errno == unix.EAGAIN && waits < 3:
			waits++
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(fds, sendWait); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("wait for room to send: %w", err)
			}
		default:
			return errno
		}
	}
	return nil
}

// Reset drops the datagrams queued, keeping the memory.
func (b *Out) Reset() {
	clear(b.payloads)
	b.payloads, b.to = b.payloads[:0], b.to[:0]
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n, 2*n)
	}
	return s[:n]
}

// A sockaddr's port is in network order in memory; Port reads it as a
// native uint16.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

func htons(p uint16) uint16 {
	var out uint16
	b := (*[2]byte)(unsafe.Pointer(&out))
	b[0], b[1] = byte(p>>8), byte(p)
	return out
}

// OrigDst reads IP_ORIGDSTADDR from a datagram's control messages: the
// address and port it was sent to, on a transparent socket.
func OrigDst(oob []byte) (netip.AddrPort, bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return netip.AddrPort{}, false
		}
		if h.Level == unix.SOL_IP && h.Type == unix.IP_ORIGDSTADDR && len(data) >= 8 {
			port := binary.BigEndian.Uint16(data[2:4])
			addr := netip.AddrFrom4([4]byte(data[4:8]))
			return netip.AddrPortFrom(addr, port), true
		}
		oob = rest
	}
	return netip.AddrPort{}, false
}
