package agent

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/endpoint"
	"github.com/aegis-cni/aegis/daemon/identity"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// desired is everything one regeneration derives from the source and the
// endpoints before it touches a map.
type desired struct {
	labels     []identity.Labels
	endpoints  []endpoint.Endpoint
	epLabels   []identity.Labels // per endpoint, same order
	remote     []remotePod
	namedPorts map[string][]policy.NamedPort // by label key
}

type remotePod struct {
	labels identity.Labels
	ips    []netip.Addr
}

// regenerate recomputes identities, ipcache and policy and writes their
// difference into the maps. On any error nothing further is written and
// the maps keep their last good state.
func (a *Agent) regenerate() (err error) {
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
	d := a.derive(snap)

	cidrs := policy.CIDRs(snap.NetworkPolicies)
	keys, err := a.ids.Sync(d.labels, cidrs)
	if err != nil {
		return err
	}
	all := a.ids.All()

	ipc := map[netip.Prefix]uint32{}
	for _, p := range cidrs {
		ipc[p] = keys[identity.CIDRKey(p)]
	}
	for _, rp := range d.remote {
		for _, ip := range rp.ips {
			ipc[netip.PrefixFrom(ip, ip.BitLen())] = keys[rp.labels.Key()]
		}
	}
	for _, ip := range a.nodeIPs() {
		ipc[netip.PrefixFrom(ip, ip.BitLen())] = policy.IdentityHost
	}
	localSet := map[uint32]bool{}
	epIdentity := make([]uint32, len(d.endpoints))
	for i, ep := range d.endpoints {
		id := keys[d.epLabels[i].Key()]
		epIdentity[i] = id
		localSet[id] = true
		for _, ip := range ep.IPs {
			ipc[netip.PrefixFrom(ip, ip.BitLen())] = id
		}
	}
	var local []uint32
	for id := range localSet {
		local = append(local, id)
	}
	named := map[uint32][]policy.NamedPort{}
	for k, ports := range d.namedPorts {
		named[keys[k]] = append(named[keys[k]], ports...)
	}

	res, err := policy.Compile(policy.Input{Identities: all, Local: local, NamedPorts: named, NetworkPolicies: snap.NetworkPolicies}, a.jar)
	if err != nil {
		return fmt.Errorf("compile policy: %w", err)
	}
	entries := map[policy.Key]policy.Entry{}
	enforce := map[uint32]bpf.Enforcement{}
	for id, ip := range res.Identities {
		for k, e := range ip.Entries {
			entries[k] = e
		}
		if ip.IngressEnforced || ip.EgressEnforced {
			enforce[id] = bpf.Enforcement{Ingress: ip.IngressEnforced, Egress: ip.EgressEnforced}
		}
	}

	// Addresses first: a new pod's IP must carry its identity before any
	// entry names it.
	if _, err := a.dp.SyncIPCache(ipc); err != nil {
		return err
	}
	moveEndpoints := func() error {
		a.epMu.Lock()
		defer a.epMu.Unlock()
		for i, ep := range d.endpoints {
			cur, ok := a.eps.Get(ep.Key())
			if !ok || cur.HostIfindex != ep.HostIfindex {
				continue // deleted or re-added since derive: its own request regenerates
			}
			if cur.Identity == epIdentity[i] && a.endpointInMap(cur) {
				continue
			}
			if err := a.dp.SetEndpoint(uint32(cur.HostIfindex), bpf.EndpointInfo{Identity: epIdentity[i], EndpointID: cur.ID}); err != nil {
				return err
			}
			cur.Identity = epIdentity[i]
			if err := a.eps.Put(&cur); err != nil {
				return err
			}
		}
		return nil
	}
	if _, err := a.writer.Apply(entries, enforce, moveEndpoints); err != nil {
		return err
	}

	a.mu.Lock()
	a.source.Applied = snap.Generation
	a.compiled = res
	a.identities = all
	a.ipcache = ipc
	a.mu.Unlock()
	return nil
}

// endpointInMap says whether the endpoints map already carries ep as is.
func (a *Agent) endpointInMap(ep endpoint.Endpoint) bool {
	info, ok := a.dp.LookupEndpoint(uint32(ep.HostIfindex))
	return ok && info.Identity == ep.Identity && info.EndpointID == ep.ID
}

// derive collects label sets and addresses from the snapshot and endpoints.
func (a *Agent) derive(snap *manifests.Snapshot) desired {
	d := desired{namedPorts: map[string][]policy.NamedPort{}}
	nsLabels := map[string]map[string]string{}
	for _, ns := range snap.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	labelsOf := func(namespace string, pod *corev1.Pod) identity.Labels {
		l := identity.Labels{Namespace: namespace, NamespaceLabels: map[string]string{}}
		for k, v := range nsLabels[namespace] {
			l.NamespaceLabels[k] = v
		}
		// Kubernetes sets this label on every namespace; selectors rely on it.
		l.NamespaceLabels["kubernetes.io/metadata.name"] = namespace
		if pod != nil {
			l.Pod = pod.Labels
		}
		return l
	}
	pods := map[string]*corev1.Pod{}
	for _, p := range snap.Pods {
		pods[p.Namespace+"/"+p.Name] = p
	}
	addPorts := func(l identity.Labels, pod *corev1.Pod) {
		if pod == nil {
			return
		}
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == "" {
					continue
				}
				d.namedPorts[l.Key()] = append(d.namedPorts[l.Key()], policy.NamedPort{Name: cp.Name, Protocol: protoOf(cp.Protocol), Port: uint16(cp.ContainerPort)})
			}
		}
	}

	localPods := map[string]bool{}
	for _, ep := range a.eps.List() {
		pod := pods[ep.PodNamespace+"/"+ep.PodName]
		l := labelsOf(ep.PodNamespace, pod)
		d.endpoints = append(d.endpoints, ep)
		d.epLabels = append(d.epLabels, l)
		d.labels = append(d.labels, l)
		addPorts(l, pod)
		localPods[ep.PodNamespace+"/"+ep.PodName] = true
	}
	for _, p := range snap.Pods {
		if localPods[p.Namespace+"/"+p.Name] {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue // a pod of this node not yet created, or not yet scheduled
		}
		l := labelsOf(p.Namespace, p)
		d.labels = append(d.labels, l)
		d.remote = append(d.remote, remotePod{labels: l, ips: ips})
		addPorts(l, p)
	}
	return d
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !seen[ip] {
			seen[ip] = true
			out = append(out, ip.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

func protoOf(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolUDP:
		return policy.ProtoUDP
	case corev1.ProtocolSCTP:
		return policy.ProtoSCTP
	}
	return policy.ProtoTCP
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
