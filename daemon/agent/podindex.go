package agent

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"github.com/aegis-cni/aegis/daemon/identity"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// podIndex is what one snapshot says about pods and namespaces, built once
// per snapshot generation and shared by full regenerations and the
// endpoint fast paths, so both derive labels the same way.
type podIndex struct {
	gen      uint64
	nsLabels map[string]map[string]string
	pods     map[string]*corev1.Pod // by namespace/name
	remote   []*corev1.Pod          // pods with addresses (remote, or not yet local)
	cidrs    []netip.Prefix         // prefixes the policies need identities for
}

func newPodIndex(snap *manifests.Snapshot) *podIndex {
	x := &podIndex{gen: snap.Generation, nsLabels: map[string]map[string]string{}, pods: map[string]*corev1.Pod{}}
	for _, ns := range snap.Namespaces {
		x.nsLabels[ns.Name] = ns.Labels
	}
	for _, p := range snap.Pods {
		x.pods[p.Namespace+"/"+p.Name] = p
		if len(podIPs(p)) > 0 {
			x.remote = append(x.remote, p)
		}
	}
	x.cidrs = policy.CIDRs(snap.NetworkPolicies)
	return x
}

// labels is the identity label set of a pod: namespace, pod labels and
// namespace labels (with the name label Kubernetes sets on every
// namespace, which selectors rely on).
func (x *podIndex) labels(namespace, name string) identity.Labels {
	l := identity.Labels{Namespace: namespace, NamespaceLabels: map[string]string{}}
	for k, v := range x.nsLabels[namespace] {
		l.NamespaceLabels[k] = v
	}
	l.NamespaceLabels["kubernetes.io/metadata.name"] = namespace
	if pod := x.pods[namespace+"/"+name]; pod != nil {
		l.Pod = pod.Labels
	}
	return l
}

// namedPorts lists a pod's named container ports.
func (x *podIndex) namedPorts(namespace, name string) []policy.NamedPort {
	pod := x.pods[namespace+"/"+name]
	if pod == nil {
		return nil
	}
	var out []policy.NamedPort
	for _, c := range pod.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != "" {
				out = append(out, policy.NamedPort{Name: cp.Name, Protocol: protoOf(cp.Protocol), Port: uint16(cp.ContainerPort)})
			}
		}
	}
	return out
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !seen[ip.Unmap()] {
			seen[ip.Unmap()] = true
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
