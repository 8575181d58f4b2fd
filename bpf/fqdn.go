package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// FQDNKey is one learned toFQDNs peer in the datapath: local identity,
// IPv4 address, protocol and port (0 and 0: every protocol and port).
type FQDNKey struct {
	Local uint32
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

func toFQDNKey(k FQDNKey) (datapathFqdnKey, error) {
	if !k.Addr.Is4() {
		return datapathFqdnKey{}, fmt.Errorf("fqdn entry for %s: only IPv4 addresses are enforced", k.Addr)
	}
	a := k.Addr.As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Port)
	return datapathFqdnKey{LocalId: k.Local, Addr: binary.NativeEndian.Uint32(a[:]), Proto: k.Proto, Port: binary.NativeEndian.Uint16(port[:])}, nil
}

func fromFQDNKey(k datapathFqdnKey) FQDNKey {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], k.Addr)
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], k.Port)
	return FQDNKey{Local: k.LocalId, Addr: netip.AddrFrom4(a), Proto: k.Proto, Port: binary.BigEndian.Uint16(port[:])}
}

// PutFQDN allows a learned peer, naming the rule by cookie.
func (m *Maps) PutFQDN(k FQDNKey, cookie uint32) error {
	dk, err := toFQDNKey(k)
	if err != nil {
		return err
	}
	if err := m.FQDN.Put(dk, cookie); err != nil {
		return fmt.Errorf("put fqdn entry %+v: %w", k, err)
	}
	return nil
}

// DeleteFQDN removes a learned peer; a missing one is not an error.
func (m *Maps) DeleteFQDN(k FQDNKey) error {
	dk, err := toFQDNKey(k)
	if err != nil {
		return err
	}
	if err := m.FQDN.Delete(dk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete fqdn entry %+v: %w", k, err)
	}
	return nil
}

// ListFQDN dumps the learned peers with their cookies.
func (m *Maps) ListFQDN() (map[FQDNKey]uint32, error) {
	out := map[FQDNKey]uint32{}
	var k datapathFqdnKey
	var v uint32
	it := m.FQDN.Iterate()
	for it.Next(&k, &v) {
		out[fromFQDNKey(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list fqdn entries: %w", err)
	}
	return out, nil
}

// SetProxyPorts tells the datapath where the DNS and HTTP proxies listen
// on the node (0: not running, redirected traffic is dropped as
// SOCKET_LOOKUP_FAILED).
func (m *Maps) SetProxyPorts(dns, http uint16) error {
	if err := m.Proxy.Put(uint32(0), datapathProxyConfig{DnsPort: dns, HttpPort: http}); err != nil {
		return fmt.Errorf("set proxy ports: %w", err)
	}
	return nil
}

// LookupFQDN answers what the datapath answers for a new connection that
// no policy entry decided: the cookie of the learned toFQDNs rule allowing
// local to reach addr on proto/port, if one does.
func (m *Maps) LookupFQDN(local uint32, addr netip.Addr, proto uint8, port uint16) (uint32, bool) {
	for _, k := range []FQDNKey{{Local: local, Addr: addr, Proto: proto, Port: port}, {Local: local, Addr: addr}} {
		dk, err := toFQDNKey(k)
		if err != nil {
			return 0, false
		}
		var cookie uint32
		if err := m.FQDN.Lookup(dk, &cookie); err == nil {
			return cookie, true
		}
	}
	return 0, false
}
