package node

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/aegis-cni/aegis/e2e/netns"
)

// Pod is a pod of the node: its own namespace, wired by the CNI chain.
type Pod struct {
	Namespace   string
	Name        string
	Labels      map[string]string
	ContainerID string
	NS          *netns.NS
	IP          netip.Addr
	Result      types.Result
	// AddTook is how long the CNI ADD of the whole chain took.
	AddTook time.Duration
}

// Addr is the pod's IP with a port.
func (p *Pod) Addr(port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }

// PodManifest renders a Pod manifest with labels and named container ports
// ("http:8080/TCP").
func PodManifest(namespace, name string, labels map[string]string, ports ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n", name, namespace)
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		fmt.Fprintf(&b, "    %s: %q\n", k, labels[k])
	}
	fmt.Fprintf(&b, "spec:\n  containers:\n  - name: main\n    image: scratch\n")
	if len(ports) > 0 {
		b.WriteString("    ports:\n")
		for _, p := range ports {
			var name, proto string
			var port int
			fmt.Sscanf(strings.NewReplacer(":", " ", "/", " ").Replace(p), "%s %d %s", &name, &port, &proto)
			fmt.Fprintf(&b, "    - name: %s\n      containerPort: %d\n      protocol: %s\n", name, port, proto)
		}
	}
	return b.String()
}

// NamespaceManifest renders a Namespace with labels.
func NamespaceManifest(name string, labels map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", name)
	if len(labels) > 0 {
		b.WriteString("  labels:\n")
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			fmt.Fprintf(&b, "    %s: %q\n", k, labels[k])
		}
	}
	return b.String()
}

func (n *Node) runtimeConf(p *Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NS.Path,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
}

// NewPod creates the pod's namespace and runs CNI ADD through the
// conflist. The pod's manifest should already be applied when its labels
// matter (as the kubelet learns a pod from the API before creating it).
func (n *Node) NewPod(namespace, name string, labels map[string]string) *Pod {
	n.t.Helper()
	p, err := n.TryNewPod(namespace, name, labels)
	if err != nil {
		n.dumpLogs()
		n.t.Fatalf("CNI ADD %s/%s: %v", namespace, name, err)
	}
	return p
}

// TryNewPod is NewPod returning the ADD error instead of failing.
func (n *Node) TryNewPod(namespace, name string, labels map[string]string) (*Pod, error) {
	p := &Pod{Namespace: namespace, Name: name, Labels: labels, ContainerID: netns.Name("ctr") + netns.Name("")}
	p.NS = netns.New(n.t, "pod")
	n.t.Cleanup(func() { _ = n.DelPod(p) })
	var res types.Result
	err := n.NS.Do(func() (err error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		start := time.Now()
		res, err = n.cni.AddNetworkList(ctx, n.ConfList, n.runtimeConf(p))
		p.AddTook = time.Since(start)
		return err
	})
	if err != nil {
		return p, err
	}
	p.Result = res
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return p, err
	}
	for _, ipc := range cur.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok {
			p.IP = ip
		}
	}
	if !p.IP.IsValid() {
		return p, fmt.Errorf("%w: %+v", errNoIP, res)
	}
	return p, nil
}

// DelPod runs CNI DEL for the pod (idempotent).
func (n *Node) DelPod(p *Pod) error {
	return n.NS.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return n.cni.DelNetworkList(ctx, n.ConfList, n.runtimeConf(p))
	})
}

// CheckPod runs CNI CHECK for the pod.
func (n *Node) CheckPod(p *Pod) error {
	return n.NS.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return n.cni.CheckNetworkList(ctx, n.ConfList, n.runtimeConf(p))
	})
}

// GC runs CNI GC with the given pods as the valid attachments.
func (n *Node) GC(valid ...*Pod) error {
	var atts []types.GCAttachment
	for _, p := range valid {
		atts = append(atts, types.GCAttachment{ContainerID: p.ContainerID, IfName: "eth0"})
	}
	return n.NS.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		return n.cni.GCNetworkList(ctx, n.ConfList, &libcni.GCArgs{ValidAttachments: atts})
	})
}

// Outside is a host outside the cluster, on TEST-NET-1, behind the node's
// uplink.
type Outside struct {
	NS    *netns.NS
	Addrs []string
}

// AddOutside creates an outside host; its first address is in
// 192.0.2.0/24 (the node's uplink is 192.0.2.1), the others anywhere in
// TEST-NET. The host routes the pod CIDR through the node. Call it once
// per node, and on an Azure node before the first pod: azure-vnet finds
// its master interface by the uplink's subnet.
func (n *Node) AddOutside(t testing.TB, addrs ...string) *Outside {
	t.Helper()
	o := &Outside{NS: netns.New(t, "out"), Addrs: addrs}
	netns.Veth(t, n.NS, "uplink0", "192.0.2.1/24", o.NS, "eth0", addrs[0]+"/24")
	for _, a := range addrs[1:] {
		o.NS.MustExec(t, "ip", "addr", "add", a+"/24", "dev", "eth0")
		if !strings.HasPrefix(a, "192.0.2.") {
			// Another TEST-NET: the node reaches it through this host.
			n.NS.MustExec(t, "ip", "route", "add", a+"/32", "via", addrs[0])
		}
	}
	o.NS.MustExec(t, "ip", "route", "add", "10.244.0.0/16", "via", "192.0.2.1")
	n.uplinkPeer = addrs[0]
	if n.azure {
		n.startAzure(t)
	}
	return o
}
