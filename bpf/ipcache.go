package bpf

import (
	"errors"
	"fmt"
	"net/netip"

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

// SyncIPCache makes the ipcache equal to want: new and changed prefixes are
// written before stale ones are removed, so an address never falls back to
// world while it moves from one identity to another.
func (m *Maps) SyncIPCache(want map[netip.Prefix]uint32) (SyncStats, error) {
	have, err := m.ListIPCache()
	if err != nil {
		return SyncStats{}, err
	}
	var st SyncStats
	var keys []datapathIpcacheKey
	var vals []datapathIpcacheEntry
	for p, id := range want {
		if cur, ok := have[p.Masked()]; ok && cur == id {
			continue
		}
		keys = append(keys, ipcacheKey(p))
		vals = append(vals, datapathIpcacheEntry{Identity: id})
	}
	n, err := putAll(m.IPCache, keys, vals)
	st.Updated += n
	if err != nil {
		return st, fmt.Errorf("update ipcache: %w", err)
	}
	var stale []datapathIpcacheKey
	for p := range have {
		if _, ok := want[p]; !ok {
			stale = append(stale, ipcacheKey(p))
		}
	}
	n, err = deleteAll(m.IPCache, stale)
	st.Deleted += n
	if err != nil {
		return st, fmt.Errorf("delete from ipcache: %w", err)
	}
	return st, nil
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
