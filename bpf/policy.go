package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/aegis-cni/aegis/daemon/policy"
)

// policyStaticPrefix is the bits of a policy key that always match in
// full (POLICY_STATIC_PREFIX in policy.h); the port prefix follows.
const policyStaticPrefix = 80

func policyKey(k policy.Key) datapathPolicyKey {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Port)
	return datapathPolicyKey{
		Prefixlen: uint32(policyStaticPrefix) + uint32(k.PortPrefixLen),
		LocalId:   k.Local,
		RemoteId:  k.Remote,
		Dir:       uint8(k.Dir),
		Proto:     k.Proto,
		Dport:     binary.NativeEndian.Uint16(port[:]),
	}
}

func fromPolicyKey(k datapathPolicyKey) policy.Key {
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], k.Dport)
	return policy.Key{
		Local:         k.LocalId,
		Remote:        k.RemoteId,
		Dir:           policy.Direction(k.Dir),
		Proto:         k.Proto,
		Port:          binary.BigEndian.Uint16(port[:]),
		PortPrefixLen: uint8(k.Prefixlen - policyStaticPrefix),
	}
}

func policyValue(e policy.Entry) datapathPolicyEntry {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], e.ProxyPort)
	return datapathPolicyEntry{Action: uint8(e.Action), ProxyPort: binary.NativeEndian.Uint16(port[:]), Cookie: e.Cookie}
}

func fromPolicyValue(v datapathPolicyEntry) policy.Entry {
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], v.ProxyPort)
	return policy.Entry{Action: policy.Action(v.Action), ProxyPort: binary.BigEndian.Uint16(port[:]), Cookie: v.Cookie}
}

// Enforcement says per local identity whether a direction is default deny,
// and the cookie of the policy whose default deny it is (named by drops no
// rule decided).
type Enforcement struct {
	Ingress       bool
	Egress        bool
	IngressCookie uint32
	EgressCookie  uint32
}

// ListPolicy dumps the policy map.
func (m *Maps) ListPolicy() (map[policy.Key]policy.Entry, error) {
	out := map[policy.Key]policy.Entry{}
	var k datapathPolicyKey
	var v datapathPolicyEntry
	it := m.Policy.Iterate()
	for it.Next(&k, &v) {
		out[fromPolicyKey(k)] = fromPolicyValue(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list policy: %w", err)
	}
	return out, nil
}

// ListEnforcement dumps which identities are default deny in which direction.
func (m *Maps) ListEnforcement() (map[uint32]Enforcement, error) {
	out := map[uint32]Enforcement{}
	var k uint32
	var v datapathEnforcement
	it := m.Enforce.Iterate()
	for it.Next(&k, &v) {
		out[k] = Enforcement{Ingress: v.Ingress != 0, Egress: v.Egress != 0, IngressCookie: v.IngressCookie, EgressCookie: v.EgressCookie}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list enforcement: %w", err)
	}
	return out, nil
}

// PolicyRevision reads the revision the datapath judges connections by.
func (m *Maps) PolicyRevision() (uint32, error) {
	var rev uint32
	if err := m.PolicyRev.Lookup(uint32(0), &rev); err != nil {
		return 0, fmt.Errorf("read policy revision: %w", err)
	}
	return rev, nil
}

// PolicyWriter applies compiled policy to the maps incrementally. It keeps
// a shadow of what it wrote so a change costs only its difference.
type PolicyWriter struct {
	maps    *Maps
	entries map[policy.Key]policy.Entry
	enforce map[uint32]Enforcement
}

// NewPolicyWriter starts from what the pinned maps hold now (after a
// restart, the previous daemon's policy stays in force until replaced).
func NewPolicyWriter(m *Maps) (*PolicyWriter, error) {
	entries, err := m.ListPolicy()
	if err != nil {
		return nil, err
	}
	enforce, err := m.ListEnforcement()
	if err != nil {
		return nil, err
	}
	return &PolicyWriter{maps: m, entries: entries, enforce: enforce}, nil
}

// Apply makes the maps hold exactly want and enforce, in an order that never
// lets through traffic that neither the old nor the new policy allows:
//  1. new and changed entries (allows of the new policy; a deny replaces an
//     allow atomically per key) and enforcement flags (switched on once the
//     new entries are in place; switched off only where the new policy
//     selects nothing, which allows all);
//  2. between, if not nil: the caller moves endpoints to new identities
//     here, while the entries of both old and new identities are present;
//  3. stale entries removed;
//  4. the revision bumped, so established connections are judged again.
func (w *PolicyWriter) Apply(want map[policy.Key]policy.Entry, enforce map[uint32]Enforcement, between func() error) (SyncStats, error) {
	var st SyncStats
	var keys []datapathPolicyKey
	var vals []datapathPolicyEntry
	for k, e := range want {
		if cur, ok := w.entries[k]; ok && cur == e {
			continue
		}
		keys = append(keys, policyKey(k))
		vals = append(vals, policyValue(e))
	}
	n, err := putAll(w.maps.Policy, keys, vals)
	st.Updated += n
	if err != nil {
		w.resync()
		return st, fmt.Errorf("update policy: %w", err)
	}
	for k, e := range want {
		w.entries[k] = e
	}

	for id, e := range enforce {
		if cur, ok := w.enforce[id]; ok && cur == e {
			continue
		}
		v := datapathEnforcement{Ingress: b2u(e.Ingress), Egress: b2u(e.Egress), IngressCookie: e.IngressCookie, EgressCookie: e.EgressCookie}
		if err := w.maps.Enforce.Put(id, &v); err != nil {
			w.resync()
			return st, fmt.Errorf("set enforcement of identity %d: %w", id, err)
		}
		w.enforce[id] = e
		st.Updated++
	}
	for id := range w.enforce {
		if _, ok := enforce[id]; ok {
			continue
		}
		if err := w.maps.Enforce.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			w.resync()
			return st, fmt.Errorf("clear enforcement of identity %d: %w", id, err)
		}
		delete(w.enforce, id)
		st.Deleted++
	}

	if between != nil {
		if err := between(); err != nil {
			return st, err
		}
	}

	var stale []datapathPolicyKey
	for k := range w.entries {
		if _, ok := want[k]; !ok {
			stale = append(stale, policyKey(k))
		}
	}
	n, err = deleteAll(w.maps.Policy, stale)
	st.Deleted += n
	if err != nil {
		w.resync()
		return st, fmt.Errorf("delete stale policy: %w", err)
	}
	for _, k := range stale {
		delete(w.entries, fromPolicyKey(k))
	}
	if st.Updated+st.Deleted > 0 {
		if err := w.bumpRevision(); err != nil {
			return st, err
		}
	}
	return st, nil
}

// resync reloads the shadow after a failed write, so the next Apply
// computes its difference against what the maps really hold.
func (w *PolicyWriter) resync() {
	if entries, err := w.maps.ListPolicy(); err == nil {
		w.entries = entries
	}
	if enforce, err := w.maps.ListEnforcement(); err == nil {
		w.enforce = enforce
	}
}

func (w *PolicyWriter) bumpRevision() error {
	rev, err := w.maps.PolicyRevision()
	if err != nil {
		return err
	}
	if err := w.maps.PolicyRev.Put(uint32(0), rev+1); err != nil {
		return fmt.Errorf("bump policy revision: %w", err)
	}
	return nil
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// LookupPolicy returns the entry the datapath's first lookup finds for k's
// port: the longest port prefix matching it in k's (local, remote,
// direction, protocol) group.
func (m *Maps) LookupPolicy(k policy.Key) (policy.Entry, bool) {
	key := policyKey(policy.Key{Local: k.Local, Remote: k.Remote, Dir: k.Dir, Proto: k.Proto, Port: k.Port, PortPrefixLen: 16})
	var v datapathPolicyEntry
	if err := m.Policy.Lookup(&key, &v); err != nil {
		return policy.Entry{}, false
	}
	return fromPolicyValue(v), true
}
