package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/cilium/ebpf"
)

// ipcacheStaticPrefix is the family byte and padding ahead of the address
// in an ipcache key (IPCACHE_STATIC_PREFIX in ipcache.h).
const ipcacheStaticPrefix = 32

func ipcacheKey(p netip.Prefix) datapathIpcacheKey {
	p = p.Masked()
	k := datapathIpcacheKey{Prefixlen: uint32(ipcacheStaticPrefix + p.Bits())}
	if p.Addr().Is4() {
		k.Family = 4
		a := p.Addr().As4()
		copy(k.Addr[:], a[:])
	} else {
		k.Family = 6
		a := p.Addr().As16()
		copy(k.Addr[:], a[:])
	}
	return k
}

func ipcachePrefix(k datapathIpcacheKey) netip.Prefix {
	bits := int(k.Prefixlen) - ipcacheStaticPrefix
	if k.Family == 4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

// ListIPCache dumps the ipcache: prefix to identity.
func (m *Maps) ListIPCache() (map[netip.Prefix]uint32, error) {
	out := map[netip.Prefix]uint32{}
	var k datapathIpcacheKey
	var v datapathIpcacheEntry
	it := m.IPCache.Iterate()
	for it.Next(&k, &v) {
		out[ipcachePrefix(k)] = v.Identity
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	return out, nil
}

// IPCacheWriter keeps the ipcache equal to a desired content, writing
// only differences; it keeps a shadow of the map so a sync does not read
// the whole map back.
type IPCacheWriter struct {
	maps *Maps
	have map[netip.Prefix]uint32
}

// NewIPCacheWriter starts from what the pinned map holds now.
func NewIPCacheWriter(m *Maps) (*IPCacheWriter, error) {
	have, err := m.ListIPCache()
	if err != nil {
		return nil, err
	}
	return &IPCacheWriter{maps: m, have: have}, nil
}

// Sync makes the ipcache equal to want: new and changed prefixes are
// written before stale ones are removed, so an address never falls back to
// world while it moves from one identity to another.
func (w *IPCacheWriter) Sync(want map[netip.Prefix]uint32) (SyncStats, error) {
	var st SyncStats
	var keys []datapathIpcacheKey
	var vals []datapathIpcacheEntry
	var changed []netip.Prefix
	for p, id := range want {
		p = p.Masked()
		if cur, ok := w.have[p]; ok && cur == id {
			continue
		}
		keys = append(keys, ipcacheKey(p))
		vals = append(vals, datapathIpcacheEntry{Identity: id})
		changed = append(changed, p)
	}
	n, err := putAll(w.maps.IPCache, keys, vals)
	st.Updated += n
	if err != nil {
		w.resync()
		return st, fmt.Errorf("update ipcache: %w", err)
	}
	for _, p := range changed {
		w.have[p] = want[p]
	}
	var stale []datapathIpcacheKey
	var gone []netip.Prefix
	for p := range w.have {
		if _, ok := want[p]; !ok {
			stale = append(stale, ipcacheKey(p))
			gone = append(gone, p)
		}
	}
	n, err = deleteAll(w.maps.IPCache, stale)
	st.Deleted += n
	if err != nil {
		w.resync()
		return st, fmt.Errorf("delete from ipcache: %w", err)
	}
	for _, p := range gone {
		delete(w.have, p)
	}
	return st, nil
}

// Put writes one prefix.
func (w *IPCacheWriter) Put(p netip.Prefix, id uint32) error {
	p = p.Masked()
	if cur, ok := w.have[p]; ok && cur == id {
		return nil
	}
	k, v := ipcacheKey(p), datapathIpcacheEntry{Identity: id}
	if err := w.maps.IPCache.Put(&k, &v); err != nil {
		return fmt.Errorf("update ipcache %s: %w", p, err)
	}
	w.have[p] = id
	return nil
}

// Remove deletes one prefix; a missing one is success.
func (w *IPCacheWriter) Remove(p netip.Prefix) error {
	p = p.Masked()
	k := ipcacheKey(p)
	if err := w.maps.IPCache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete ipcache %s: %w", p, err)
	}
	delete(w.have, p)
	return nil
}

// Len is how many prefixes the ipcache holds.
func (w *IPCacheWriter) Len() int { return len(w.have) }

func (w *IPCacheWriter) resync() {
	if have, err := w.maps.ListIPCache(); err == nil {
		w.have = have
	}
}

// SyncStats counts what a sync wrote.
type SyncStats struct {
	Updated int
	Deleted int
}

// putAll writes in one batch where the map type supports it, else one by
// one. Either way every element is written or an error says which failed.
func putAll[K, V any](m *ebpf.Map, keys []K, vals []V) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := m.BatchUpdate(keys, vals, nil)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return n, err
	}
	for i := range keys {
		if err := m.Put(&keys[i], &vals[i]); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

func deleteAll[K any](m *ebpf.Map, keys []K) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := m.BatchDelete(keys, nil)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return n, err
	}
	done := 0
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return done, err
		}
		done++
	}
	return done, nil
}

// LookupIPCache answers what the datapath answers for addr: the identity of
// the longest prefix holding it, world when none does.
func (m *Maps) LookupIPCache(addr netip.Addr) uint32 {
	var v datapathIpcacheEntry
	// By pointer: cilium/ebpf marshals a struct value by reflection, a
	// pointer to a fixed-size struct without it; the DNS and HTTP proxies
	// look up twice per request.
	k := ipcacheKey(netip.PrefixFrom(addr, addr.BitLen()))
	if err := m.IPCache.Lookup(&k, &v); err != nil {
		return policy.IdentityWorld
	}
	return v.Identity
}
