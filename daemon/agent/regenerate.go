package agent

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/endpoint"
	"github.com/aegis-cni/aegis/daemon/identity"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// view is what the last successful regeneration built, kept so endpoint
// fast paths can act without rebuilding it.
type view struct {
	pods       *podIndex
	compiled   *policy.Result
	fp         [32]byte
	identities []policy.Identity
	byKey      map[string]uint32             // label key or CIDR key to identity
	named      map[uint32][]policy.NamedPort // union per identity
	ipcache    map[netip.Prefix]uint32       // what the ipcache holds
	background map[netip.Addr]uint32         // non-endpoint owners of addresses (remote pods, node)
	users      map[uint32]int                // local endpoints per identity
	entries    map[policy.Key]policy.Entry
	enforce    map[uint32]bpf.Enforcement
}

// regenerate recomputes identities, ipcache and policy and writes their
// difference into the maps. On any error nothing further is written and
// the maps keep their last good state.
func (a *Agent) regenerate() (err error) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	start := time.Now()
	defer func() {
		st := RegenStatusFrom(start, err)
		a.mu.Lock()
		a.lastRegen = st
		a.mu.Unlock()
		if err != nil {
			a.log.Error("regeneration failed; last good state stays in force", "err", err)
		}
	}()

	a.mu.Lock()
	snap := a.snap
	a.mu.Unlock()
	if snap == nil {
		return errNotReady("waiting for the first snapshot of the policy source")
	}
	prev := a.view
	pods := prev.pods
	if pods == nil || pods.gen != snap.Generation {
		pods = newPodIndex(snap)
	}

	// Label sets of local endpoints first, then of remote pods.
	eps := a.eps.List()
	var labels []identity.Labels
	epKeys := make([]string, len(eps))
	namedByKey := map[string][]policy.NamedPort{}
	localPods := map[string]bool{}
	for i, ep := range eps {
		l := pods.labels(ep.PodNamespace, ep.PodName)
		labels = append(labels, l)
		epKeys[i] = l.Key()
		namedByKey[epKeys[i]] = append(namedByKey[epKeys[i]], pods.namedPorts(ep.PodNamespace, ep.PodName)...)
		localPods[ep.PodNamespace+"/"+ep.PodName] = true
	}
	type remote struct {
		key string
		ips []netip.Addr
	}
	var remotes []remote
	for _, p := range pods.remote {
		if localPods[p.Namespace+"/"+p.Name] {
			continue
		}
		l := pods.labels(p.Namespace, p.Name)
		labels = append(labels, l)
		remotes = append(remotes, remote{key: l.Key(), ips: podIPs(p)})
		namedByKey[l.Key()] = append(namedByKey[l.Key()], pods.namedPorts(p.Namespace, p.Name)...)
	}

	var svcNames []string
	for _, svc := range pods.services {
		svcNames = append(svcNames, svc.name)
	}
	byKey, all, err := a.ids.Sync(labels, pods.cidrs, svcNames)
	if err != nil {
		return err
	}

	ipc := make(map[netip.Prefix]uint32, len(pods.cidrs)+len(eps)+len(remotes))
	background := map[netip.Addr]uint32{}
	for _, p := range pods.cidrs {
		ipc[p] = byKey[identity.CIDRKey(p)]
	}
	for _, r := range remotes {
		for _, ip := range r.ips {
			ipc[netip.PrefixFrom(ip, ip.BitLen())] = byKey[r.key]
			background[ip] = byKey[r.key]
		}
	}
	for _, ip := range a.nodeIPs() {
		ipc[netip.PrefixFrom(ip, ip.BitLen())] = policy.IdentityHost
		background[ip] = policy.IdentityHost
	}
	for _, svc := range pods.services {
		for _, ip := range svc.clusterIPs {
			ipc[netip.PrefixFrom(ip, ip.BitLen())] = byKey[identity.ServiceKey(svc.name)]
		}
	}
	users := map[uint32]int{}
	epIdentity := make([]uint32, len(eps))
	for i, ep := range eps {
		id := byKey[epKeys[i]]
		epIdentity[i] = id
		users[id]++
		for _, ip := range ep.IPs {
			ipc[netip.PrefixFrom(ip, ip.BitLen())] = id
		}
	}
	local := slices.Sorted(maps.Keys(users))
	named := map[uint32][]policy.NamedPort{}
	for k, ports := range namedByKey {
		if len(ports) > 0 {
			named[byKey[k]] = append(named[byKey[k]], ports...)
		}
	}

	// Compiling is the expensive step; its inputs are the policies, the
	// identities (numbers are never reused, so the set of numbers stands
	// for their labels), the local ones and the named ports.
	tCompile := time.Now()
	fp := compileFingerprint(snap.Generation, all, local, named)
	res, entries, enforce := prev.compiled, prev.entries, prev.enforce
	if res == nil || fp != prev.fp {
		res, err = policy.Compile(policy.Input{Identities: all, Local: local, NamedPorts: named, NetworkPolicies: snap.NetworkPolicies, CiliumPolicies: pods.cilium}, a.jar)
		if err != nil {
			return fmt.Errorf("compile policy: %w", err)
		}
		res.AddServices(serviceBackends(pods.services, byKey, ipc))
		// The proxy learns the DNS rules before any redirect to it exists.
		if p := a.dnsProxy.Load(); p != nil {
			if err := (*p).SetPolicy(res); err != nil {
				// The proxy refuses what it has no rules for; the rest
				// of the policy must not wait for it.
				a.log.Error("dns proxy: push rules", "err", err)
			}
		}
		entries, enforce = flatten(res)
	}

	// Addresses first: a new pod's IP must carry its identity before any
	// entry names it.
	tIPCache := time.Now()
	if _, err := a.ipcache.Sync(ipc); err != nil {
		return err
	}
	moveEndpoints := func() error {
		for i, ep := range eps {
			if err := a.setEndpointIdentity(ep, epIdentity[i]); err != nil {
				return err
			}
		}
		return nil
	}
	tApply := time.Now()
	st, err := a.writer.Apply(entries, enforce, moveEndpoints)
	if err != nil {
		return err
	}
	a.log.Debug("regenerated", "compiled", res != prev.compiled, "entries", len(entries), "written", st.Updated, "deleted", st.Deleted,
		"derive", tCompile.Sub(start), "compile", tIPCache.Sub(tCompile), "ipcache", tApply.Sub(tIPCache), "apply", time.Since(tApply))

	a.view = view{pods: pods, compiled: res, fp: fp, identities: all, byKey: byKey, named: named, ipcache: ipc,
		background: background, users: users, entries: entries, enforce: enforce}
	a.publishNames(&a.view, a.eps.List())
	a.mu.Lock()
	a.source.Applied = snap.Generation
	a.compiled = res
	a.identities = all
	a.ipcacheSize = len(ipc)
	a.mu.Unlock()
	return nil
}

// setEndpointIdentity points an endpoint's map entry at id, unless the
// endpoint was deleted or re-added since the caller listed it (its own
// request regenerates then).
func (a *Agent) setEndpointIdentity(ep endpoint.Endpoint, id uint32) error {
	a.epMu.Lock()
	defer a.epMu.Unlock()
	cur, ok := a.eps.Get(ep.Key())
	if !ok || cur.HostIfindex != ep.HostIfindex {
		return nil
	}
	if cur.Identity == id && a.endpointInMap(cur) {
		return nil
	}
	if err := a.dp.SetEndpoint(uint32(cur.HostIfindex), bpf.EndpointInfo{Identity: id, EndpointID: cur.ID}); err != nil {
		return err
	}
	cur.Identity = id
	return a.eps.Put(&cur)
}

func flatten(res *policy.Result) (map[policy.Key]policy.Entry, map[uint32]bpf.Enforcement) {
	entries := map[policy.Key]policy.Entry{}
	enforce := map[uint32]bpf.Enforcement{}
	for id, ip := range res.Identities {
		for k, e := range ip.Entries {
			entries[k] = e
		}
		if ip.IngressEnforced || ip.EgressEnforced {
			enforce[id] = bpf.Enforcement{Ingress: ip.IngressEnforced, Egress: ip.EgressEnforced,
				IngressCookie: ip.IngressDefault, EgressCookie: ip.EgressDefault}
		}
	}
	return entries, enforce
}

// compileFingerprint hashes what Compile depends on besides the policies'
// content (which the generation stands for).
func compileFingerprint(gen uint64, ids []policy.Identity, local []uint32, named map[uint32][]policy.NamedPort) [32]byte {
	h := sha256.New()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], gen)
	h.Write(b[:])
	for _, id := range ids {
		binary.LittleEndian.PutUint32(b[:4], id.ID)
		h.Write(b[:4])
	}
	h.Write([]byte{0xff})
	for _, id := range local {
		binary.LittleEndian.PutUint32(b[:4], id)
		h.Write(b[:4])
	}
	for _, id := range slices.Sorted(maps.Keys(named)) {
		fmt.Fprintf(h, "|%d:%v", id, named[id])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// endpointInMap says whether the endpoints map already carries ep as is.
func (a *Agent) endpointInMap(ep endpoint.Endpoint) bool {
	info, ok := a.dp.LookupEndpoint(uint32(ep.HostIfindex))
	return ok && info.Identity == ep.Identity && info.EndpointID == ep.ID
}

// nodeIPs are the addresses that carry the host identity: configured, or
// every address of this namespace's interfaces.
func (a *Agent) nodeIPs() []netip.Addr {
	if len(a.cfg.NodeIPs) > 0 {
		return a.cfg.NodeIPs
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		a.log.Warn("list node addresses", "err", err)
		return nil
	}
	var out []netip.Addr
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// serviceBackends gives each service port's backends their identities.
// A backend address is a pod's (its /32 in the ipcache) or outside the
// cluster (world).
func serviceBackends(svcs []service, byKey map[string]uint32, ipc map[netip.Prefix]uint32) []policy.Service {
	var out []policy.Service
	for _, svc := range svcs {
		ps := policy.Service{Identity: byKey[identity.ServiceKey(svc.name)]}
		for _, sp := range svc.ports {
			p := policy.ServicePort{Proto: sp.proto, Port: sp.port}
			for _, b := range sp.backends {
				id, ok := ipc[netip.PrefixFrom(b.addr, b.addr.BitLen())]
				if !ok {
					id = policy.IdentityWorld
				}
				p.Backends = append(p.Backends, policy.ServiceBackend{Identity: id, Port: b.port})
			}
			ps.Ports = append(ps.Ports, p)
		}
		out = append(out, ps)
	}
	return out
}
