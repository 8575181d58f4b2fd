package bpf_test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// testNode is one node namespace with one pod behind a veth whose host side
// carries the programs, and the datapath loaded on a private bpffs.
type testNode struct {
	paths   bpf.Paths
	dp      *bpf.Datapath
	node    *netns.NS
	pod     *netns.NS
	ifindex int
}

func newTestNode(t *testing.T) *testNode {
	netns.RequireRoot(t)
	tn := &testNode{paths: bpf.Paths{Root: netns.BPFRoot(t)}}
	dp, linkErrs, err := bpf.Load(tn.paths, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(linkErrs) != 0 {
		t.Fatal(linkErrs)
	}
	t.Cleanup(func() { dp.Close() })
	tn.dp = dp
	tn.node = netns.New(t, "nd")
	tn.pod = netns.New(t, "pd")
	netns.Veth(t, tn.node, "hv0", "10.9.0.1/24", tn.pod, "eth0", "10.9.0.2/24")
	if err := tn.node.Do(func() error {
		l, err := net.InterfaceByName("hv0")
		tn.ifindex = l.Index
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tn.pod.Serve(t, "tcp", "10.9.0.2:8080", "pod:")
	tn.node.Serve(t, "tcp", "10.9.0.1:9090", "node:")
	return tn
}

func (tn *testNode) attach(t *testing.T, identity uint32) {
	t.Helper()
	if err := tn.dp.SetEndpoint(uint32(tn.ifindex), bpf.EndpointInfo{Identity: identity, EndpointID: 1}); err != nil {
		t.Fatal(err)
	}
	err := tn.node.Do(func() error {
		return bpf.Attach(tn.paths, bpf.Attachment{ContainerID: "c1", IfName: "eth0", HostIfindex: tn.ifindex})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAttachEnforceDetach(t *testing.T) {
	tn := newTestNode(t)
	const pod = 300
	tn.attach(t, pod)

	// Attaching the same thing again is a no-op.
	if err := tn.node.Do(func() error {
		return bpf.Attach(tn.paths, bpf.Attachment{ContainerID: "c1", IfName: "eth0", HostIfindex: tn.ifindex})
	}); err != nil {
		t.Fatalf("second attach: %v", err)
	}

	// No policy: both directions pass.
	tn.pod.ExpectAllowed(t, "tcp", "10.9.0.1:9090")
	tn.node.ExpectAllowed(t, "tcp", "10.9.0.2:8080")

	w, err := bpf.NewPolicyWriter(tn.dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	// Default deny in both directions, nothing allowed.
	enf := map[uint32]bpf.Enforcement{pod: {Ingress: true, Egress: true}}
	if _, err := w.Apply(nil, enf, nil); err != nil {
		t.Fatal(err)
	}
	tn.pod.ExpectBlocked(t, "tcp", "10.9.0.1:9090")
	tn.node.ExpectBlocked(t, "tcp", "10.9.0.2:8080")

	// Allow egress to world on TCP 9090: the pod reaches the node (an
	// address the ipcache does not know, so world) and replies return;
	// ingress stays closed.
	want := map[policy.Key]policy.Entry{
		{Local: pod, Remote: policy.IdentityWorld, Dir: policy.Egress, Proto: policy.ProtoTCP, Port: 9090, PortPrefixLen: 16}: {Action: policy.ActionAllow, Cookie: 7},
	}
	if _, err := w.Apply(want, enf, nil); err != nil {
		t.Fatal(err)
	}
	tn.pod.ExpectAllowed(t, "tcp", "10.9.0.1:9090")
	tn.node.ExpectBlocked(t, "tcp", "10.9.0.2:8080")

	// Once the node's address has an identity, the world rule no longer
	// covers it.
	ipc, err := bpf.NewIPCacheWriter(tn.dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ipc.Sync(map[netip.Prefix]uint32{netip.MustParsePrefix("10.9.0.1/32"): 400}); err != nil {
		t.Fatal(err)
	}
	tn.pod.ExpectBlocked(t, "tcp", "10.9.0.1:9090")

	counters, err := tn.dp.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if counters[bpf.CounterKey{Reason: 133, Dir: uint8(policy.Egress)}].Packets == 0 {
		t.Errorf("no POLICY_DENIED egress drops counted: %v", counters)
	}

	// Detach: enforcement stops with the links.
	if err := bpf.Detach(tn.paths, "c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := bpf.Detach(tn.paths, "c1", "eth0"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	tn.node.ExpectAllowed(t, "tcp", "10.9.0.2:8080")
	if _, err := os.Stat(filepath.Join(tn.paths.Links(), "c1_eth0")); !os.IsNotExist(err) {
		t.Errorf("attachment directory left behind: %v", err)
	}
}

// A restarted daemon reloads the datapath: maps keep their contents and
// existing links move to the new programs, with enforcement throughout.
func TestReloadKeepsStateAndLinks(t *testing.T) {
	tn := newTestNode(t)
	const pod = 301
	tn.attach(t, pod)
	w, err := bpf.NewPolicyWriter(tn.dp.Maps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Apply(nil, map[uint32]bpf.Enforcement{pod: {Ingress: true}}, nil); err != nil {
		t.Fatal(err)
	}
	tn.node.ExpectBlocked(t, "tcp", "10.9.0.2:8080")
	tn.dp.Close()

	dp2, linkErrs, err := bpf.Load(tn.paths, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp2.Close()
	if len(linkErrs) != 0 {
		t.Fatal(linkErrs)
	}
	enf, err := dp2.ListEnforcement()
	if err != nil {
		t.Fatal(err)
	}
	if !enf[pod].Ingress {
		t.Errorf("enforcement lost across reload: %v", enf)
	}
	tn.node.ExpectBlocked(t, "tcp", "10.9.0.2:8080")
	atts, err := bpf.ListAttachments(tn.paths)
	if err != nil || len(atts) != 1 || atts[0].Ifindex != tn.ifindex {
		t.Fatalf("attachments after reload: %+v %v", atts, err)
	}
}
