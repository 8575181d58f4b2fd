package observe

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
)

// dnsNames remembers, per pod address, the names its DNS answers gave for
// each address, so flows carry them as Hubble's source_names and
// destination_names (what `hubble observe --to-fqdn` filters on). It
// learns from the DNS proxy's answers, which reach every flow consumer
// through this observer, so it knows the names of every pod whose DNS the
// proxy sees, whether or not a toFQDNs rule selects them.
type dnsNames struct {
	mu    sync.RWMutex
	byPod map[netip.Addr]map[netip.Addr]nameEntry
	size  int
	empty atomic.Bool // nothing learned: the datapath's flows skip the lock
}

type nameEntry struct {
	names   []string
	expires time.Time
}

const (
	// namesMinTTL keeps a name at least this long: a connection opened
	// right after a short-TTL answer should still be named.
	namesMinTTL = time.Minute
	// namesMax bounds what is remembered; past it, expired entries go and
	// new ones wait for room.
	namesMax = 65536
	// namesPerIP bounds the names kept for one address.
	namesPerIP = 16
)

func newDNSNames() *dnsNames {
	n := &dnsNames{byPod: map[netip.Addr]map[netip.Addr]nameEntry{}}
	n.empty.Store(true)
	return n
}

// learn takes a DNS response flow the proxy forwarded.
func (n *dnsNames) learn(f *flow.Flow, now time.Time) {
	d := f.GetL7().GetDns()
	if n == nil || d == nil || f.GetL7().GetType() != flow.L7FlowType_RESPONSE || f.GetVerdict() != flow.Verdict_FORWARDED || len(d.GetIps()) == 0 {
		return
	}
	pod, err := netip.ParseAddr(f.GetIP().GetDestination())
	if err != nil {
		return
	}
	var buf [4]string // most chains are short: no allocation for them
	names := append(buf[:0], strings.TrimSuffix(strings.ToLower(d.GetQuery()), "."))
	for _, c := range d.GetCnames() {
		names = append(names, strings.TrimSuffix(strings.ToLower(c), "."))
	}
	ttl := max(time.Duration(d.GetTtl())*time.Second, namesMinTTL)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.size >= namesMax {
		n.sweep(now)
	}
	m := n.byPod[pod]
	if m == nil {
		m = map[netip.Addr]nameEntry{}
		n.byPod[pod] = m
	}
	for _, s := range d.GetIps() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		e, ok := m[ip]
		if !ok {
			if n.size >= namesMax {
				continue
			}
			n.size++
		}
		if ok && e.expires.After(now) && slices.Equal(e.names[:min(len(names), len(e.names))], names) {
			// The same answer again, as a pod's repeated lookups get it:
			// the merge below would make the same names.
			m[ip] = nameEntry{names: e.names, expires: now.Add(ttl)}
			continue
		}
		// A new slice each time: flows already built share the old one.
		merged := append(make([]string, 0, min(len(names)+len(e.names), max(namesPerIP, len(names)))), names...)
		for _, old := range e.names {
			if len(merged) < namesPerIP && !slices.Contains(merged, old) && e.expires.After(now) {
				merged = append(merged, old)
			}
		}
		m[ip] = nameEntry{names: merged, expires: now.Add(ttl)}
	}
	n.empty.Store(n.size == 0)
}

// sweep drops expired entries; the caller holds the lock.
func (n *dnsNames) sweep(now time.Time) {
	for pod, m := range n.byPod {
		for ip, e := range m {
			if !e.expires.After(now) {
				delete(m, ip)
				n.size--
			}
		}
		if len(m) == 0 {
			delete(n.byPod, pod)
		}
	}
}

// lookup returns the names pod was told for ip, if still valid.
func (n *dnsNames) lookup(pod, ip netip.Addr, now time.Time) []string {
	n.mu.RLock()
	e, ok := n.byPod[pod][ip]
	n.mu.RUnlock()
	if !ok || !e.expires.After(now) {
		return nil
	}
	return e.names
}

// annotate sets a flow's source and destination names as Hubble does.
func (n *dnsNames) annotate(f *flow.Flow, src, dst netip.Addr, now time.Time) {
	if s, d := n.pair(f.GetSource().GetPodName() != "", f.GetDestination().GetPodName() != "", src, dst, now); s != nil || d != nil {
		f.SourceNames, f.DestinationNames = s, d
	}
}

// pair is the names of a flow's ends, as Hubble gives them: the
// destination's from the source pod's answers, the source's from the
// destination pod's.
func (n *dnsNames) pair(srcPod, dstPod bool, src, dst netip.Addr, now time.Time) (srcNames, dstNames []string) {
	if n == nil || n.empty.Load() {
		return nil, nil
	}
	if srcPod {
		dstNames = n.lookup(src, dst, now)
	}
	if dstPod {
		srcNames = n.lookup(dst, src, now)
	}
	return srcNames, dstNames
}
