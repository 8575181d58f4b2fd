package fqdn

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/state"
)

// Writer is where learned peers go: the datapath's FQDN map.
type Writer interface {
	PutFQDN(k bpf.FQDNKey, cookie uint32) error
	DeleteFQDN(k bpf.FQDNKey) error
}

// Grant is what one toFQDNs rule allows for a name it matched: a protocol
// and port (0 and 0: everything), named by the rule's cookie.
type Grant struct {
	Selector string `json:"selector"`
	Proto    uint8  `json:"proto"`
	Port     uint16 `json:"port"`
	Cookie   uint32 `json:"cookie"`
}

// Learned is one address a name resolved to for a local identity.
type Learned struct {
	Local   uint32     `json:"local"`
	Source  string     `json:"source"` // the pod that asked
	Name    string     `json:"name"`
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
	Grants  []Grant    `json:"grants"`
}

type entryKey struct {
	local uint32
	name  string
	ip    netip.Addr
}

type nameKey struct {
	local uint32
	name  string
}

// Cache keeps the learned addresses and the datapath entries they grant.
// Several names (or rules) may grant the same entry; it stays until the
// last one goes.
type Cache struct {
	mu      sync.Mutex
	w       Writer
	minTTL  time.Duration
	maxIPs  int
	path    string
	entries map[entryKey]*Learned
	byName  map[nameKey]map[netip.Addr]*Learned // the entries again, for the cap per name
	refs    map[bpf.FQDNKey]map[entryKey]uint32 // cookie each entry grants it with
	dirty   bool
}

// Options configure a cache.
type Options struct {
	// MinTTL is the shortest time an address stays allowed, whatever TTL
	// the answer carried.
	MinTTL time.Duration
	// MaxIPsPerName caps the addresses kept per name and local identity;
	// the ones expiring first go.
	MaxIPsPerName int
	// Path persists the cache, so learned addresses survive restarts.
	Path string
}

// NewCache returns a cache writing to w, with what Path held loaded and
// written to the datapath again (entries that expired meanwhile are
// dropped, and so are datapath entries nothing in the file grants).
func NewCache(w Writer, opts Options, existing map[bpf.FQDNKey]uint32) (*Cache, error) {
	if opts.MaxIPsPerName <= 0 {
		opts.MaxIPsPerName = 50
	}
	c := &Cache{w: w, minTTL: opts.MinTTL, maxIPs: opts.MaxIPsPerName, path: opts.Path,
		entries: map[entryKey]*Learned{}, byName: map[nameKey]map[netip.Addr]*Learned{}, refs: map[bpf.FQDNKey]map[entryKey]uint32{}}
	var saved []Learned
	if opts.Path != "" {
		if _, err := state.ReadJSON(opts.Path, &saved); err != nil {
			return nil, fmt.Errorf("load fqdn cache: %w", err)
		}
	}
	now := time.Now()
	for i := range saved {
		l := saved[i]
		if l.Expires.Before(now) || !l.IP.IsValid() {
			continue
		}
		c.add(&l)
	}
	for k := range existing {
		if _, ok := c.refs[k]; !ok {
			if err := w.DeleteFQDN(k); err != nil {
				return nil, err
			}
		}
	}
	for k, holders := range c.refs {
		if err := w.PutFQDN(k, minCookie(holders)); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func minCookie(holders map[entryKey]uint32) uint32 {
	var best uint32
	for _, c := range holders {
		if best == 0 || c < best {
			best = c
		}
	}
	return best
}

func keysOf(l *Learned) []bpf.FQDNKey {
	out := make([]bpf.FQDNKey, 0, len(l.Grants))
	for _, g := range l.Grants {
		out = append(out, bpf.FQDNKey{Local: l.Local, Addr: l.IP, Proto: g.Proto, Port: g.Port})
	}
	return out
}

// add records l without writing the datapath; returns the keys that l
// grants that nothing granted before.
func (c *Cache) add(l *Learned) []bpf.FQDNKey {
	ek := entryKey{l.Local, l.Name, l.IP}
	var fresh []bpf.FQDNKey
	c.entries[ek] = l
	c.index(l)
	for i, k := range keysOf(l) {
		h := c.refs[k]
		if h == nil {
			h = map[entryKey]uint32{}
			c.refs[k] = h
			fresh = append(fresh, k)
		}
		h[ek] = l.Grants[i].Cookie
	}
	return fresh
}

// remove forgets an entry and deletes the datapath entries nothing else
// grants.
func (c *Cache) remove(ek entryKey) error {
	l := c.entries[ek]
	if l == nil {
		return nil
	}
	delete(c.entries, ek)
	nk := nameKey{ek.local, ek.name}
	delete(c.byName[nk], ek.ip)
	if len(c.byName[nk]) == 0 {
		delete(c.byName, nk)
	}
	var errs []error
	for _, k := range keysOf(l) {
		h := c.refs[k]
		delete(h, ek)
		if len(h) == 0 {
			delete(c.refs, k)
			errs = append(errs, c.w.DeleteFQDN(k))
		}
	}
	c.dirty = true
	return errors.Join(errs...)
}

// Learn records that name resolved to ips for local (asked by source),
// valid for ttl (at least the minimum TTL), granting what grants say, and
// writes the datapath entries before it returns: the caller releases the
// answer only then. An address learned again with the same grants only
// lives longer: the datapath is not written (a pod resolving the same
// name in a loop costs no map updates), and a changed grant is written
// before the one it replaces goes, so the address stays allowed
// throughout.
func (c *Cache) Learn(local uint32, source, name string, ips []netip.Addr, ttl time.Duration, grants []Grant) error {
	if len(grants) == 0 || len(ips) == 0 {
		return nil
	}
	ttl = max(ttl, c.minTTL)
	expires := time.Now().Add(ttl)
	name = Normalize(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	added := false
	for _, ip := range ips {
		ip = ip.Unmap()
		ek := entryKey{local, name, ip}
		old := c.entries[ek]
		if old != nil && slices.Equal(old.Grants, grants) {
			old.Expires = later(expires, old.Expires)
			old.Source = source
			continue
		}
		l := &Learned{Local: local, Source: source, Name: name, IP: ip, Expires: expires, Grants: slices.Clone(grants)}
		if old != nil {
			l.Expires = later(expires, old.Expires)
			errs = append(errs, c.replace(ek, old, l))
			continue
		}
		added = true
		for _, k := range c.add(l) {
			errs = append(errs, c.w.PutFQDN(k, minCookie(c.refs[k])))
		}
	}
	c.dirty = true
	if added {
		errs = append(errs, c.capName(local, name))
	}
	return errors.Join(errs...)
}

// replace swaps an entry for one with other grants: keys only the new
// one grants, or whose cookie changes, are written first; keys only the
// old one granted are deleted after.
func (c *Cache) replace(ek entryKey, old, l *Learned) error {
	before := map[bpf.FQDNKey]uint32{}
	oldKeys, newKeys := keysOf(old), keysOf(l)
	for _, k := range slices.Concat(oldKeys, newKeys) {
		if h := c.refs[k]; h != nil {
			before[k] = minCookie(h)
		}
	}
	for _, k := range oldKeys {
		delete(c.refs[k], ek)
	}
	c.entries[ek] = l
	c.index(l)
	for i, k := range newKeys {
		h := c.refs[k]
		if h == nil {
			h = map[entryKey]uint32{}
			c.refs[k] = h
		}
		h[ek] = l.Grants[i].Cookie
	}
	var errs []error
	for _, k := range newKeys {
		if was, ok := before[k]; !ok || was != minCookie(c.refs[k]) {
			before[k] = minCookie(c.refs[k]) // written once
			errs = append(errs, c.w.PutFQDN(k, before[k]))
		}
	}
	for _, k := range oldKeys {
		h, ok := c.refs[k]
		switch {
		case !ok:
		case len(h) == 0:
			delete(c.refs, k)
			errs = append(errs, c.w.DeleteFQDN(k))
		case before[k] != minCookie(h):
			before[k] = minCookie(h)
			errs = append(errs, c.w.PutFQDN(k, before[k]))
		}
	}
	return errors.Join(errs...)
}

func (c *Cache) index(l *Learned) {
	nk := nameKey{l.Local, l.Name}
	m := c.byName[nk]
	if m == nil {
		m = map[netip.Addr]*Learned{}
		c.byName[nk] = m
	}
	m[l.IP] = l
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// capName keeps at most maxIPs addresses for local and name.
func (c *Cache) capName(local uint32, name string) error {
	byIP := c.byName[nameKey{local, name}]
	if len(byIP) <= c.maxIPs {
		return nil
	}
	mine := slices.Collect(maps.Values(byIP))
	slices.SortFunc(mine, func(a, b *Learned) int { return a.Expires.Compare(b.Expires) })
	var errs []error
	for _, l := range mine[:len(mine)-c.maxIPs] {
		errs = append(errs, c.remove(entryKey{l.Local, l.Name, l.IP}))
	}
	return errors.Join(errs...)
}

// Sweep removes expired addresses. live reports whether a connection to an
// address is still open: such an address stays (the grace) until it is
// not. It returns how many were removed.
func (c *Cache) Sweep(now time.Time, live func(netip.Addr) bool) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	n := 0
	for ek, l := range c.entries {
		if l.Expires.After(now) {
			continue
		}
		if live != nil && live(l.IP) {
			continue
		}
		errs = append(errs, c.remove(ek))
		n++
	}
	return n, errors.Join(errs...)
}

// Expired reports whether any address has expired (so a sweep needs to
// know which connections are live).
func (c *Cache) Expired(now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.entries {
		if !l.Expires.After(now) {
			return true
		}
	}
	return false
}

// Clean forgets every address (of one local identity when local is not 0)
// and removes its datapath entries.
func (c *Cache) Clean(local uint32) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	n := 0
	for ek := range c.entries {
		if local == 0 || ek.local == local {
			errs = append(errs, c.remove(ek))
			n++
		}
	}
	return n, errors.Join(errs...)
}

// List returns the learned addresses by name, then local identity, then
// address.
func (c *Cache) List() []Learned {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Learned, 0, len(c.entries))
	for _, l := range c.entries {
		out = append(out, *l)
	}
	slices.SortFunc(out, func(a, b Learned) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Local, b.Local), a.IP.Compare(b.IP))
	})
	return out
}

// Save persists the cache if it changed since the last save.
func (c *Cache) Save() error {
	c.mu.Lock()
	if !c.dirty || c.path == "" {
		c.mu.Unlock()
		return nil
	}
	out := make([]Learned, 0, len(c.entries))
	for _, l := range c.entries {
		out = append(out, *l)
	}
	c.dirty = false
	c.mu.Unlock()
	if err := state.WriteJSON(c.path, out); err != nil {
		return fmt.Errorf("save fqdn cache: %w", err)
	}
	return nil
}
