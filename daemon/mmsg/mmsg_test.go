package mmsg

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSocket is a non-blocking IPv4 UDP socket bound to a free loopback
// port, closed at cleanup.
func udpSocket(t *testing.T) (int, netip.AddrPort) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, netip.AddrPortFrom(netip.AddrFrom4(sa.(*unix.SockaddrInet4).Addr), uint16(sa.(*unix.SockaddrInet4).Port))
}

func TestBatchRoundTrip(t *testing.T) {
	a, aAddr := udpSocket(t)
	b, bAddr := udpSocket(t)
	in := NewIn(4, 8, 0)
	if n, err := in.Recv(b); n != 0 || err != unix.EAGAIN {
		t.Fatalf("empty socket: %d, %v; want 0, EAGAIN", n, err)
	}

	var out Out
	out.Add([]byte("one"), bAddr)
	out.Add(nil, bAddr) // nothing to send: not queued
	out.Add([]byte("two"), bAddr)
	out.Add([]byte("longer than eight"), bAddr)
	if out.Len() != 3 {
		t.Fatalf("queued %d, want 3", out.Len())
	}
	if err := out.Send(a); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Fatalf("queue after send: %d, want 0", out.Len())
	}

	n, err := in.Recv(b)
	if err != nil || n != 3 {
		t.Fatalf("recv: %d, %v; want 3 datagrams", n, err)
	}
	for i, want := range []string{"one", "two", "longer t"} {
		if got := string(in.Data(i)); got != want {
			t.Errorf("datagram %d: %q, want %q", i, got, want)
		}
		if from, ok := in.From(i); !ok || from != aAddr {
			t.Errorf("datagram %d from %v (%v), want %v", i, from, ok, aAddr)
		}
		if got, want := in.Truncated(i), i == 2; got != want {
			t.Errorf("datagram %d truncated %v, want %v", i, got, want)
		}
	}

	// A socket connected to its peer sends to it with no address.
	if err := unix.Connect(a, &unix.SockaddrInet4{Addr: bAddr.Addr().As4(), Port: int(bAddr.Port())}); err != nil {
		t.Fatal(err)
	}
	out.Add([]byte("peer"), netip.AddrPort{})
	if err := out.Send(a); err != nil {
		t.Fatal(err)
	}
	if n, err := in.Recv(b); err != nil || n != 1 || string(in.Data(0)) != "peer" {
		t.Fatalf("connected send: %d, %v, %q", n, err, in.Data(0))
	}

	out.Add([]byte("v6"), netip.MustParseAddrPort("[::1]:53"))
	if err := out.Send(a); err == nil {
		t.Fatal("send to an IPv6 address: no error")
	}
}

func TestOrigDst(t *testing.T) {
	// One control message: IP_ORIGDSTADDR with a sockaddr_in.
	sa := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: [4]byte{10, 0, 0, 10}}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], 53)
	data := (*[unix.SizeofSockaddrInet4]byte)(unsafe.Pointer(&sa))[:]
	oob := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_IP, unix.IP_ORIGDSTADDR
	h.SetLen(unix.CmsgLen(len(data)))
	copy(oob[unix.CmsgLen(0):], data)

	got, ok := OrigDst(oob)
	if want := netip.MustParseAddrPort("10.0.0.10:53"); !ok || got != want {
		t.Fatalf("OrigDst: %v, %v; want %v", got, ok, want)
	}
	if _, ok := OrigDst(nil); ok {
		t.Error("OrigDst of no control messages: found one")
	}
	if _, ok := OrigDst(oob[:5]); ok {
		t.Error("OrigDst of a cut control message: found one")
	}
	h.Type = unix.IP_TTL
	if _, ok := OrigDst(oob); ok {
		t.Error("OrigDst of another control message: found one")
	}
}
