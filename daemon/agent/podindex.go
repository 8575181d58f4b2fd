package agent

import (
	"net/netip"

	"github.com/aegis-cni/aegis/daemon/policy/cnp"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

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
	cilium   []*cnp.Policy          // the snapshot's Cilium policies, parsed
	cidrs    []netip.Prefix         // prefixes the policies need identities for
	services []service              // ClusterIP services with their backends
}

// service is a ClusterIP service and the endpoints behind it.
type service struct {
	name       string // namespace/name
	clusterIPs []netip.Addr
	ports      []servicePort
}

type servicePort struct {
	proto    uint8
	port     uint16
	backends []backend
}

type backend struct {
	addr netip.Addr
	port uint16
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
	x.cilium = ciliumPolicies(snap)
	x.cidrs = policy.CIDRs(snap.NetworkPolicies, x.cilium)
	x.services = servicesOf(snap)
	return x
}

// ciliumPolicies parses the snapshot's CiliumNetworkPolicies and
// CiliumClusterwideNetworkPolicies. The source validated them with the same
// parser and left out the ones it rejected, so an error here cannot
// happen; such an object would be skipped.
func ciliumPolicies(snap *manifests.Snapshot) []*cnp.Policy {
	var out []*cnp.Policy
	for _, u := range snap.Others {
		if u.GetAPIVersion() != cnp.APIVersion || (u.GetKind() != cnp.KindCNP && u.GetKind() != cnp.KindCCNP) {
			continue
		}
		if p, err := cnp.ParseUnstructured(u); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// servicesOf pairs each ClusterIP service with its EndpointSlices: a
// service port leads to every ready endpoint address on the slice port of
// the same name.
func servicesOf(snap *manifests.Snapshot) []service {
	slices := map[string][]*discoveryv1.EndpointSlice{}
	for _, es := range snap.EndpointSlices {
		if svc := es.Labels[discoveryv1.LabelServiceName]; svc != "" {
			slices[es.Namespace+"/"+svc] = append(slices[es.Namespace+"/"+svc], es)
		}
	}
	var out []service
	for _, svc := range snap.Services {
		var ips []netip.Addr
		for _, s := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
			if ip, err := netip.ParseAddr(s); err == nil && !slicesContains(ips, ip) {
				ips = append(ips, ip)
			}
		}
		if len(ips) == 0 {
			continue // headless: clients reach the pods' own addresses
		}
		name := svc.Namespace + "/" + svc.Name
		s := service{name: name, clusterIPs: ips}
		for _, sp := range svc.Spec.Ports {
			p := servicePort{proto: protoOf(sp.Protocol), port: uint16(sp.Port)}
			for _, es := range slices[name] {
				for _, ep := range es.Ports {
					if ep.Port == nil || derefString(ep.Name) != sp.Name {
						continue
					}
					for _, e := range es.Endpoints {
						if e.Conditions.Ready != nil && !*e.Conditions.Ready {
							continue
						}
						for _, a := range e.Addresses {
							if ip, err := netip.ParseAddr(a); err == nil {
								p.backends = append(p.backends, backend{addr: ip, port: uint16(*ep.Port)})
							}
						}
					}
				}
			}
			s.ports = append(s.ports, p)
		}
		out = append(out, s)
	}
	return out
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func slicesContains(ips []netip.Addr, ip netip.Addr) bool {
	for _, x := range ips {
		if x == ip {
			return true
		}
	}
	return false
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

// countCilium counts the snapshot's Cilium policies, for status.
func countCilium(snap *manifests.Snapshot) int {
	n := 0
	for _, u := range snap.Others {
		if u.GetAPIVersion() == cnp.APIVersion && (u.GetKind() == cnp.KindCNP || u.GetKind() == cnp.KindCCNP) {
			n++
		}
	}
	return n
}
