package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The UDP path moves datagrams in batches with its own recvmmsg and
// sendmmsg on sockets Go's poller does not know (udp.go says why). The
// calls never block (MSG_DONTWAIT) and are made as raw system calls: a
// batch's send runs the receivers' softirqs inline and can take tens of
// microseconds, long enough for the Go runtime to hand the thread's
// processor to another thread if it were told the call had begun.

// inBatch is a reusable set of receive buffers.
type inBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	bufs  [][]byte
	oob   [][]byte
}

func newInBatch(count, size, oobSize int) *inBatch {
	b := &inBatch{
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

// recv reads up to a batch of the datagrams waiting on fd: 0 and EAGAIN
// when none waits.
func (b *inBatch) recv(fd int) (int, error) {
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

// data is datagram i's payload, truncated says whether it was longer than
// its buffer, control is its control messages.
func (b *inBatch) data(i int) []byte    { return b.bufs[i][:b.hdrs[i].Len] }
func (b *inBatch) truncated(i int) bool { return b.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }
func (b *inBatch) control(i int) []byte { return b.oob[i][:b.hdrs[i].Hdr.Controllen] }

// from is datagram i's sender, false when it is not IPv4.
func (b *inBatch) from(i int) (netip.AddrPort, bool) {
	sa := &b.names[i]
	if b.hdrs[i].Hdr.Namelen < unix.SizeofSockaddrInet4 || sa.Family != unix.AF_INET {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), true
}

// outBatch gathers datagrams for one socket, to send in as few calls as
// the kernel takes them.
type outBatch struct {
	payloads [][]byte
	to       []netip.AddrPort // zero: the socket's connected peer
	hdrs     []unix.Mmsghdr
	iovs     []unix.Iovec
	names    []unix.RawSockaddrInet4
}

func (b *outBatch) add(payload []byte, to netip.AddrPort) {
	if len(payload) == 0 {
		return
	}
	b.payloads = append(b.payloads, payload)
	b.to = append(b.to, to)
}

func (b *outBatch) len() int { return len(b.payloads) }

// sendWait bounds how long a send waits for room in a full socket buffer
// (a veth's peer behind), each time it finds none.
const sendWait = 100 // ms

// send writes the datagrams gathered on fd and empties b, keeping its
// memory. It returns the first error that stopped it; the datagrams not
// sent by then are dropped, as a full network would drop them.
func (b *outBatch) send(fd int) error {
	defer b.reset()
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

func (b *outBatch) reset() {
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
