package azurecns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-container-networking/cns"
	cnscli "github.com/Azure/azure-container-networking/cns/client"
	"github.com/Azure/azure-container-networking/cns/types"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The end-to-end test runs the real azure-vnet v1.7.0 binary. Build it (and
// the stand-in) with scripts/build-azure-vnet.sh; AZURE_VNET_BIN overrides
// where the test looks for it, AZURE_CNS_STANDIN_BIN where it looks for the
// stand-in (default: built from this module into a temp dir).
const (
	envAzureVnet = "AZURE_VNET_BIN"
	envStandin   = "AZURE_CNS_STANDIN_BIN"
	envHelper    = "AEGIS_AZV_HELPER" // re-exec of this test binary as the CNI runner
)

// The test topology. Every address outside the pod CIDR is TEST-NET-1.
const (
	podCIDR     = "10.244.1.0/24"
	nodeIP      = "192.0.2.1"
	outsideIP   = "192.0.2.2"
	hostSubnet  = "192.0.2.0/24"
	uplink      = "eth0" // the node's primary NIC, as on an AKS node
	outsideLink = "ext0"
	podName     = "azv-e2e-pod"
	podNS       = "default"

	// The conflist: transparent mode with CNS IPAM in overlay mode, as AKS
	// writes it (cni/azure-linux-swift-overlay.conflist in the ACN repo,
	// without the portmap plugin). "v4overlay" and "overlay" take the same
	// path in v1.7.0.
	confList = `{"cniVersion":"0.3.0","name":"azure","plugins":[` +
		`{"type":"azure-vnet","mode":"transparent","ipsToRouteViaHost":["169.254.20.10"],` +
		`"ipam":{"type":"azure-cns","mode":"v4overlay"}}]}`
)

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) != "" {
		os.Exit(cniHelper())
	}
	os.Exit(m.Run())
}

// ---------------------------------------------------------------------------
// The stand-in against Azure's own CNS client (no root needed).

func TestStandinWithCNSClient(t *testing.T) {
	state := filepath.Join(t.TempDir(), "cns.json")
	srv, cli := startStandin(t, Config{
		PodCIDR:     netip.MustParsePrefix(podCIDR),
		HostIP:      netip.MustParsePrefix(nodeIP + "/24"),
		HostGateway: netip.MustParseAddr(outsideIP),
		StatePath:   state,
	})
	ctx := context.Background()

	req := func(ctr, name string) cns.IPConfigsRequest {
		oc, _ := json.Marshal(cns.KubernetesPodInfo{PodName: name, PodNamespace: podNS})
		return cns.IPConfigsRequest{
			OrchestratorContext: oc,
			PodInterfaceID:      ctr[:8] + "-eth0",
			InfraContainerID:    ctr,
		}
	}
	a, b, c := req("aaaaaaaa1111", "a"), req("bbbbbbbb2222", "b"), req("cccccccc3333", "c")

	resp, err := cli.RequestIPs(ctx, a)
	if err != nil {
		t.Fatalf("RequestIPs: %v", err)
	}
	if len(resp.PodIPInfo) != 1 {
		t.Fatalf("RequestIPs: %d PodIPInfo, want 1", len(resp.PodIPInfo))
	}
	got := resp.PodIPInfo[0]
	want := cns.PodIpInfo{
		PodIPConfig: cns.IPSubnet{IPAddress: "10.244.1.1", PrefixLength: 24},
		NetworkContainerPrimaryIPConfig: cns.IPConfiguration{
			IPSubnet:         cns.IPSubnet{IPAddress: "10.244.1.0", PrefixLength: 24},
			GatewayIPAddress: "169.254.1.1",
		},
		HostPrimaryIPInfo: cns.HostIPInfo{Gateway: outsideIP, PrimaryIP: nodeIP, Subnet: hostSubnet},
		NICType:           cns.InfraNIC,
	}
	if g, w := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", want); g != w {
		t.Fatalf("PodIpInfo\n got %s\nwant %s", g, w)
	}

	// Idempotent per pod interface ID.
	again, err := cli.RequestIPs(ctx, a)
	if err != nil || again.PodIPInfo[0].PodIPConfig.IPAddress != "10.244.1.1" {
		t.Fatalf("second RequestIPs for the same interface: %+v, %v", again, err)
	}
	rb, err := cli.RequestIPs(ctx, b)
	if err != nil || rb.PodIPInfo[0].PodIPConfig.IPAddress != "10.244.1.2" {
		t.Fatalf("RequestIPs for a second pod: %+v, %v", rb, err)
	}
	// The legacy single-IP API, which azure-vnet falls back to on a 404.
	legacy := cns.IPConfigRequest{OrchestratorContext: c.OrchestratorContext, PodInterfaceID: c.PodInterfaceID, InfraContainerID: c.InfraContainerID}
	rc, err := cli.RequestIPAddress(ctx, legacy)
	if err != nil || rc.PodIpInfo.PodIPConfig.IPAddress != "10.244.1.3" {
		t.Fatalf("RequestIPAddress: %+v, %v", rc, err)
	}
	if n := assigned(t, cli); n != 3 {
		t.Fatalf("%d assigned IPs, want 3", n)
	}

	// The state file survives a restart.
	if allocs, err := ReadState(state); err != nil || len(allocs) != 3 {
		t.Fatalf("state file: %v, %v", allocs, err)
	}
	srv2, err := New(srv.Config())
	if err != nil || len(srv2.Allocations()) != 3 {
		t.Fatalf("reloading state: %v allocations, %v", srv2.Allocations(), err)
	}

	// Release, twice (DEL may be repeated), and through the legacy API.
	for i := 0; i < 2; i++ {
		if err := cli.ReleaseIPs(ctx, a); err != nil {
			t.Fatalf("ReleaseIPs #%d: %v", i+1, err)
		}
	}
	if err := cli.ReleaseIPAddress(ctx, legacy); err != nil {
		t.Fatalf("ReleaseIPAddress: %v", err)
	}
	if n := assigned(t, cli); n != 1 {
		t.Fatalf("%d assigned IPs after releases, want 1", n)
	}
	// A released IP is handed out again.
	if r, err := cli.RequestIPs(ctx, req("dddddddd4444", "d")); err != nil || r.PodIPInfo[0].PodIPConfig.IPAddress != "10.244.1.1" {
		t.Fatalf("RequestIPs after release: %+v, %v", r, err)
	}

	// Requests CNS rejects.
	noCtx := a
	noCtx.OrchestratorContext = nil
	if _, err := cli.RequestIPs(ctx, noCtx); err == nil {
		t.Fatal("RequestIPs without orchestrator context succeeded")
	}
	noID := a
	noID.PodInterfaceID = ""
	if _, err := cli.RequestIPs(ctx, noID); err == nil {
		t.Fatal("RequestIPs without pod interface ID succeeded")
	}

	// Overlay pods have no network container.
	if _, err := cli.GetNetworkContainer(ctx, a.OrchestratorContext); !cnscli.IsNotFound(err) {
		t.Fatalf("GetNetworkContainer: %v, want UnknownContainerID", err)
	}
	if _, err := cli.GetAllNetworkContainers(ctx, a.OrchestratorContext); !cnscli.IsNotFound(err) {
		t.Fatalf("GetAllNetworkContainers: %v, want UnknownContainerID", err)
	}
}

func TestStandinExhaustion(t *testing.T) {
	_, cli := startStandin(t, Config{
		PodCIDR: netip.MustParsePrefix("10.244.9.0/30"), // two usable addresses
		HostIP:  netip.MustParsePrefix(nodeIP + "/24"),
	})
	ctx := context.Background()
	for i, want := range []string{"10.244.9.1", "10.244.9.2", ""} {
		oc, _ := json.Marshal(cns.KubernetesPodInfo{PodName: fmt.Sprint("p", i), PodNamespace: podNS})
		r, err := cli.RequestIPs(ctx, cns.IPConfigsRequest{OrchestratorContext: oc, PodInterfaceID: fmt.Sprintf("%08d-eth0", i)})
		switch {
		case want == "" && err == nil:
			t.Fatalf("request %d: got %+v from an exhausted pool", i, r)
		case want == "" && !strings.Contains(err.Error(), "no free IP"):
			t.Fatalf("request %d: %v, want no free IP", i, err)
		case want != "" && (err != nil || r.PodIPInfo[0].PodIPConfig.IPAddress != want):
			t.Fatalf("request %d: %+v, %v; want %s", i, r, err, want)
		}
	}
}

func startStandin(t *testing.T, cfg Config) (*Server, *cnscli.Client) {
	t.Helper()
	cfg.Logf = t.Logf
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	cli, err := cnscli.New(hs.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return srv, cli
}

func assigned(t *testing.T, cli *cnscli.Client) int {
	t.Helper()
	ips, err := cli.GetIPAddressesMatchingStates(context.Background(), types.Assigned)
	if err != nil {
		t.Fatalf("GetIPAddressesMatchingStates: %v", err)
	}
	return len(ips)
}

// ---------------------------------------------------------------------------
// The real azure-vnet, in network namespaces.

// TestAzureVnetTransparentOverlay runs azure-vnet v1.7.0 ADD and DEL in
// transparent overlay mode, in a node network namespace, against the
// stand-in, and checks the pod's networking and its connectivity to a host
// outside the node.
//
//	outside netns            node netns                         pod netns
//	ext0 192.0.2.2/24 ==== eth0 192.0.2.1/24   azvXXXXXXXXXXX ==== eth0 10.244.1.x
//	10.244.1.0/24 via .1    stand-in on 127.0.0.1:10090         default via 169.254.1.1
//
// azure-vnet keeps its state in hard-coded host paths (/var/run/azure-vnet.json,
// /var/run/azure-vnet/azure-vnet.lock, /var/log/azure-vnet.log). The test
// runs it from a re-exec of this binary in a private mount namespace
// (ip netns exec makes one) with /var/run and /var/log bind-mounted from the
// test's temp dir, so nothing is written to the host's.
func TestAzureVnetTransparentOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and runs Azure CNI in them")
	}
	azureVnet := azureVnetBin(t)
	for _, tool := range []string{"ip", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2 / procps)", tool)
		}
	}
	standin := standinBin(t)
	tmp := t.TempDir()

	node := newNetns(t, "azn")
	outside := newNetns(t, "azo")
	pod := newNetns(t, "azp")

	// The node's uplink into the outside namespace. No default route: the
	// node can reach nothing but 192.0.2.0/24 (azure-vnet's telemetry and
	// wireserver calls fail fast).
	node.mustRun(t, "ip", "link", "add", uplink, "type", "veth", "peer", "name", outsideLink, "netns", outside.name)
	node.mustRun(t, "ip", "addr", "add", nodeIP+"/24", "dev", uplink)
	node.mustRun(t, "ip", "link", "set", uplink, "up")
	outside.mustRun(t, "ip", "addr", "add", outsideIP+"/24", "dev", outsideLink)
	outside.mustRun(t, "ip", "link", "set", outsideLink, "up")
	// The VNet's route for the node's pod CIDR (Azure programs this).
	outside.mustRun(t, "ip", "route", "add", podCIDR, "via", nodeIP)
	// An AKS node forwards; azure-vnet turns forwarding on only for IPv6 and
	// transparent-vlan, not for IPv4 transparent mode.
	node.mustRun(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	iptablesBefore := node.iptablesSave(t)

	// The stand-in, inside the node netns on azure-vnet's default CNS URL.
	cnsState := filepath.Join(tmp, "cns-state.json")
	cnsLog := startStandinProcess(t, node, standin,
		"--listen", DefaultListen, "--pod-cidr", podCIDR,
		"--host-ip", nodeIP+"/24", "--host-gateway", outsideIP, "--state", cnsState)

	// ADD.
	iso := filepath.Join(tmp, "azure-vnet-root") // stands in for /var/run and /var/log
	rt := helperParams{
		BinDir:      filepath.Dir(azureVnet),
		CacheDir:    filepath.Join(tmp, "libcni-cache"),
		Isolate:     iso,
		ConfList:    confList,
		ContainerID: "aegisazv" + randHex(8),
		NetNS:       pod.path,
		IfName:      "eth0",
		Args:        [][2]string{{"K8S_POD_NAMESPACE", podNS}, {"K8S_POD_NAME", podName}},
	}
	out := runCNI(t, node, "ADD", rt)
	t.Logf("ADD result: %s", out.Stdout)

	// The result: what azure-vnet prints for cniVersion 0.3.0.
	var res struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []map[string]any
		IPs        []struct {
			Version   string
			Address   string
			Gateway   string
			Interface *int
		}
		Routes []struct{ Dst, GW string }
	}
	if err := json.Unmarshal([]byte(out.Stdout), &res); err != nil {
		t.Fatalf("ADD result: %v", err)
	}
	if res.CNIVersion != "0.3.0" {
		t.Errorf("result cniVersion %q, want 0.3.0", res.CNIVersion)
	}
	if len(res.Interfaces) != 1 || len(res.Interfaces[0]) != 1 || res.Interfaces[0]["name"] != "eth0" {
		t.Errorf(`result interfaces %v, want [{"name":"eth0"}] (no mac, no sandbox)`, res.Interfaces)
	}
	if len(res.IPs) != 1 || res.IPs[0].Gateway != "169.254.1.1" || res.IPs[0].Interface != nil {
		t.Errorf("result ips %+v, want one with gateway 169.254.1.1 and no interface index", res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst != "0.0.0.0/0" || res.Routes[0].GW != "169.254.1.1" {
		t.Errorf("result routes %+v, want [0.0.0.0/0 via 169.254.1.1]", res.Routes)
	}

	// The stand-in handed out exactly one IP, for this container's eth0.
	allocs, err := ReadState(cnsState)
	if err != nil || len(allocs) != 1 {
		t.Fatalf("stand-in allocations after ADD: %+v, %v\n%s", allocs, err, cnsLog)
	}
	podIP := allocs[0].IP
	if !netip.MustParsePrefix(podCIDR).Contains(podIP) {
		t.Fatalf("pod IP %s not in %s", podIP, podCIDR)
	}
	if allocs[0].PodInterfaceID != rt.ContainerID[:8]+"-eth0" || allocs[0].PodName != podName || allocs[0].PodNamespace != podNS {
		t.Errorf("allocation %+v: want interface %s-eth0 of %s/%s", allocs[0], rt.ContainerID[:8], podNS, podName)
	}
	if len(res.IPs) == 1 && res.IPs[0].Address != podIP.String()+"/24" {
		t.Errorf("result address %s, want %s/24", res.IPs[0].Address, podIP)
	}

	// The pod: its IP on eth0, default route via 169.254.1.1, and a
	// neighbour entry for 169.254.1.1 pointing at the host veth.
	if addrs := pod.ipv4Addrs(t, "eth0"); len(addrs) != 1 || addrs[0] != podIP.String()+"/24" {
		t.Errorf("pod eth0 addresses %v, want [%s/24]", addrs, podIP)
	}
	podRoutes := pod.routes(t)
	if !hasRoute(podRoutes, "default", "169.254.1.1", "eth0") || !hasRoute(podRoutes, "169.254.1.1", "", "eth0") {
		t.Errorf("pod routes %+v: want default via 169.254.1.1 dev eth0 and 169.254.1.1 dev eth0", podRoutes)
	}
	if hasRoute(podRoutes, podCIDR, "", "eth0") {
		t.Errorf("pod routes %+v: azure-vnet should have removed the kernel's subnet route", podRoutes)
	}

	// The node: host veth azv + sha1("<namespace>.<pod>")[:11], MAC
	// aa:aa:aa:aa:aa:aa, a /32 route to the pod, proxy ARP on.
	sum := sha1.Sum([]byte(podNS + "." + podName))
	hostVeth := "azv" + hex.EncodeToString(sum[:])[:11]
	var vethMAC string
	for _, l := range node.links(t) {
		if strings.HasPrefix(l.Name, "azv") {
			if l.Name != hostVeth {
				t.Errorf("host veth %s, want %s", l.Name, hostVeth)
			}
			vethMAC = l.Address
		}
	}
	if vethMAC == "" {
		t.Fatalf("no azv* host veth in the node netns: %+v", node.links(t))
	}
	if vethMAC != "aa:aa:aa:aa:aa:aa" {
		t.Errorf("host veth MAC %s, want aa:aa:aa:aa:aa:aa", vethMAC)
	}
	if !hasRoute(node.routes(t), podIP.String(), "", hostVeth) {
		t.Errorf("node routes %+v: want %s dev %s", node.routes(t), podIP, hostVeth)
	}
	if v := strings.TrimSpace(node.mustRun(t, "cat", "/proc/sys/net/ipv4/conf/"+hostVeth+"/proxy_arp")); v != "1" {
		t.Errorf("proxy_arp on %s = %s, want 1", hostVeth, v)
	}
	if after := node.iptablesSave(t); after != iptablesBefore {
		t.Errorf("azure-vnet changed the node's iptables:\nbefore:\n%s\nafter:\n%s", iptablesBefore, after)
	}

	// Nothing written to the host's /var/run or /var/log: what azure-vnet
	// wrote is in the isolated tree.
	for _, f := range []string{"run/azure-vnet.json", "run/azure-vnet/azure-vnet.lock", "log/azure-vnet.log"} {
		if _, err := os.Stat(filepath.Join(iso, f)); err != nil {
			t.Errorf("azure-vnet did not write %s in the isolated tree: %v", f, err)
		}
	}
	t.Logf("azure-vnet wrote (host path -> isolated copy): %v", listFiles(iso))

	// Traffic. The pod's 169.254.1.1 neighbour entry is NUD_PROBE, not
	// permanent: the host veth must answer its ARP probes by proxy ARP,
	// which the kernel does only for a destination it has a route to via
	// another interface. An AKS node has a default route; this node has
	// none, so it gets a route for 169.254.1.1.
	node.mustRun(t, "ip", "route", "add", "169.254.1.1/32", "dev", uplink)

	// pod -> outside, and the outside host sees the pod's own IP (no SNAT).
	seen := tcpRoundTrip(t, pod, outside, outsideIP)
	if seen != podIP.String() {
		t.Errorf("outside host saw the pod as %s, want %s", seen, podIP)
	}
	// outside -> pod.
	if seen := tcpRoundTrip(t, outside, pod, podIP.String()); seen != outsideIP {
		t.Errorf("pod saw the outside host as %s, want %s", seen, outsideIP)
	}
	// The pod's gateway resolves to the host veth (checked after traffic:
	// without the route above the entry would have gone FAILED, losing
	// its lladdr).
	if n := pod.neighMAC(t, "169.254.1.1"); n != vethMAC {
		t.Errorf("pod neighbour 169.254.1.1 -> %q, want host veth MAC %s", n, vethMAC)
	}

	// DEL.
	out = runCNI(t, node, "DEL", rt)
	if allocs, err := ReadState(cnsState); err != nil || len(allocs) != 0 {
		t.Errorf("stand-in allocations after DEL: %+v, %v\n%s", allocs, err, cnsLog)
	}
	if hasRoute(node.routes(t), podIP.String(), "", hostVeth) {
		t.Errorf("node route %s dev %s still there after DEL", podIP, hostVeth)
	}
	// azure-vnet v1.7.0 leaves the veth pair to the runtime in transparent
	// mode (TransparentEndpointClient.DeleteEndpoints is a no-op): the pair
	// goes with the pod's network namespace.
	if node.hasLink(t, hostVeth) {
		t.Logf("after DEL the host veth %s is still there, as azure-vnet v1.7.0 leaves it to the runtime", hostVeth)
	}
	// DEL again: CNI requires it to succeed.
	runCNI(t, node, "DEL", rt)

	// The runtime removes the pod netns; the veth pair goes with it.
	pod.delete()
	deadline := time.Now().Add(10 * time.Second)
	for node.hasLink(t, hostVeth) {
		if time.Now().After(deadline) {
			t.Fatalf("host veth %s still in the node netns 10s after the pod netns was deleted", hostVeth)
		}
		time.Sleep(100 * time.Millisecond)
	}

	log := cnsLog.String()
	for _, call := range []string{"POST " + cns.RequestIPConfigs, "POST " + cns.ReleaseIPConfigs} {
		if !strings.Contains(log, call) {
			t.Errorf("stand-in never saw %s:\n%s", call, log)
		}
	}
}

func azureVnetBin(t *testing.T) string {
	t.Helper()
	p := os.Getenv(envAzureVnet)
	if p == "" {
		cache := os.Getenv("AEGIS_CACHE")
		if cache == "" {
			cache = "/var/cache/aegis"
		}
		p = filepath.Join(cache, "azure-vnet-v1.7.0", "azure-vnet")
	}
	if st, err := os.Stat(p); err != nil || st.Mode()&0o111 == 0 {
		t.Skipf("azure-vnet is not built at %s (set %s, or run scripts/build-azure-vnet.sh)", p, envAzureVnet)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

func standinBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envStandin); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", envStandin, p, err)
		}
		return p
	}
	p := filepath.Join(t.TempDir(), "azure-cns-standin")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", p, "./cmd/azure-cns-standin")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in: %v\n%s", err, out)
	}
	return p
}

// syncBuffer collects a process's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startStandinProcess runs the stand-in binary inside ns and waits until it
// listens; it is stopped (by its PID) at cleanup.
func startStandinProcess(t *testing.T, ns *netNS, bin string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.name, bin}, args...)...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(unix.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	buf := &syncBuffer{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			fmt.Fprintln(buf, sc.Text())
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(ready) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("stand-in exited: %v\n%s", err, buf)
	case <-time.After(30 * time.Second):
		t.Fatalf("stand-in not listening after 30s\n%s", buf)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stand-in log:\n%s", buf)
		}
	})
	return buf
}

// ---------------------------------------------------------------------------
// Running azure-vnet through libcni, inside the node netns, in a private
// mount namespace.

type helperParams struct {
	Command     string
	BinDir      string
	CacheDir    string
	Isolate     string
	ConfList    string
	ContainerID string
	NetNS       string
	IfName      string
	Args        [][2]string
	ParentMntNS string // the test process's mount namespace, which the helper must not be in
}

type helperResult struct {
	Stdout string // what the plugin printed, verbatim
	Error  string
}

// runCNI re-executes this test binary inside the node netns (ip netns exec
// also gives it a mount namespace of its own) to run one libcni command.
func runCNI(t *testing.T, node *netNS, command string, p helperParams) helperResult {
	t.Helper()
	p.Command = command
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if p.ParentMntNS, err = os.Readlink("/proc/self/ns/mnt"); err != nil {
		t.Fatal(err)
	}
	params, _ := json.Marshal(p)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", node.name, self)
	cmd.Env = append(os.Environ(), envHelper+"="+string(params))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res helperResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("CNI %s helper: %v (%v)\nstdout:\n%s\nstderr:\n%s%s", command, runErr, err, stdout.String(), stderr.String(), azureVnetLog(p.Isolate))
	}
	if res.Error != "" || runErr != nil {
		t.Fatalf("CNI %s: %s (%v)\nstderr:\n%s%s", command, res.Error, runErr, stderr.String(), azureVnetLog(p.Isolate))
	}
	return res
}

func azureVnetLog(iso string) string {
	b, err := os.ReadFile(filepath.Join(iso, "log", "azure-vnet.log"))
	if err != nil {
		return ""
	}
	if len(b) > 20000 {
		b = b[len(b)-20000:]
	}
	return "\nazure-vnet.log (tail):\n" + string(b)
}

// recordingExec runs plugins like libcni's default and keeps their stdout.
type recordingExec struct {
	*invoke.DefaultExec
	stdout []byte
}

func (e *recordingExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	out, err := e.DefaultExec.ExecPlugin(ctx, path, stdin, env)
	e.stdout = out
	return out, err
}

// cniHelper is main() of the re-executed test binary.
func cniHelper() int {
	res := helperResult{}
	if err := cniHelperRun(&res); err != nil {
		res.Error = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if res.Error != "" {
		return 1
	}
	return 0
}

func cniHelperRun(res *helperResult) error {
	var p helperParams
	if err := json.Unmarshal([]byte(os.Getenv(envHelper)), &p); err != nil {
		return fmt.Errorf("params: %w", err)
	}
	if err := isolateMounts(p.Isolate, p.ParentMntNS); err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes([]byte(p.ConfList))
	if err != nil {
		return err
	}
	rec := &recordingExec{DefaultExec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}}
	cninet := libcni.NewCNIConfigWithCacheDir([]string{p.BinDir}, p.CacheDir, rec)
	rt := &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.NetNS, IfName: p.IfName, Args: p.Args}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch p.Command {
	case "ADD":
		_, err = cninet.AddNetworkList(ctx, list, rt)
	case "DEL":
		err = cninet.DelNetworkList(ctx, list, rt)
	default:
		err = fmt.Errorf("unknown command %q", p.Command)
	}
	res.Stdout = string(rec.stdout)
	return err
}

// isolateMounts gives azure-vnet private copies of the host paths it
// writes: /var/run (state file, lock dir, telemetry socket) and /var/log
// (its log), keeping /run/netns visible for the pod's netns. It refuses to
// run in the test process's mount namespace (ip netns exec gives it one of
// its own).
func isolateMounts(root, parentMntNS string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if parentMntNS == "" || self == parentMntNS {
		return fmt.Errorf("refusing to bind-mount over /var/run and /var/log in the test's mount namespace %s (run via ip netns exec)", self)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	run, logDir := filepath.Join(root, "run"), filepath.Join(root, "log")
	for _, d := range []string{filepath.Join(run, "netns"), logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if _, err := os.Stat("/run/netns"); err == nil {
		if err := unix.Mount("/run/netns", filepath.Join(run, "netns"), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind /run/netns: %w", err)
		}
	}
	if err := unix.Mount(run, "/var/run", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on /var/run: %w", run, err)
	}
	if err := unix.Mount(logDir, "/var/log", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on /var/log: %w", logDir, err)
	}
	return nil
}

func listFiles(root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasPrefix(rel, "run/netns/") {
			return nil
		}
		out = append(out, "/var/"+rel)
		return nil
	})
	return out
}

// ---------------------------------------------------------------------------
// Network namespaces.

type netNS struct {
	name string
	path string
}

func newNetns(t *testing.T, prefix string) *netNS {
	t.Helper()
	ns := &netNS{name: prefix + randHex(6)}
	if out, err := run(30*time.Second, "ip", "netns", "add", ns.name); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", ns.name, err, out)
	}
	ns.path = "/run/netns/" + ns.name
	t.Cleanup(ns.delete)
	ns.mustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

func (ns *netNS) delete() { _, _ = run(30*time.Second, "ip", "netns", "del", ns.name) }

func (ns *netNS) mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(30*time.Second, "ip", append([]string{"netns", "exec", ns.name, name}, args...)...)
	if err != nil {
		t.Fatalf("in %s: %s %s: %v\n%s", ns.name, name, strings.Join(args, " "), err, out)
	}
	return out
}

func run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func (ns *netNS) ipJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := ns.mustRun(t, "ip", append([]string{"-j"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("ip -j %v: %v\n%s", args, err, out)
	}
}

type link struct {
	Name    string `json:"ifname"`
	Address string `json:"address"`
	MTU     int    `json:"mtu"`
}

func (ns *netNS) links(t *testing.T) []link {
	var l []link
	ns.ipJSON(t, &l, "link", "show")
	return l
}

func (ns *netNS) hasLink(t *testing.T, name string) bool {
	for _, l := range ns.links(t) {
		if l.Name == name {
			return true
		}
	}
	return false
}

func (ns *netNS) ipv4Addrs(t *testing.T, dev string) []string {
	var ifs []struct {
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	ns.ipJSON(t, &ifs, "addr", "show", "dev", dev)
	var out []string
	for _, i := range ifs {
		for _, a := range i.AddrInfo {
			if a.Family == "inet" {
				out = append(out, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
			}
		}
	}
	return out
}

type route struct {
	Dst     string `json:"dst"`
	Gateway string `json:"gateway"`
	Dev     string `json:"dev"`
}

func (ns *netNS) routes(t *testing.T) []route {
	var r []route
	ns.ipJSON(t, &r, "-4", "route", "show")
	return r
}

func hasRoute(rs []route, dst, gw, dev string) bool {
	for _, r := range rs {
		if r.Dst == dst && r.Gateway == gw && r.Dev == dev {
			return true
		}
	}
	return false
}

func (ns *netNS) neighMAC(t *testing.T, ip string) string {
	var n []struct {
		Dst    string `json:"dst"`
		LLAddr string `json:"lladdr"`
	}
	ns.ipJSON(t, &n, "neigh", "show")
	for _, e := range n {
		if e.Dst == ip {
			return e.LLAddr
		}
	}
	return ""
}

// iptablesSave is the netns's ruleset without comments and counters, or ""
// when iptables-save is not installed.
func (ns *netNS) iptablesSave(t *testing.T) string {
	if _, err := exec.LookPath("iptables-save"); err != nil {
		return ""
	}
	var keep []string
	for _, l := range strings.Split(ns.mustRun(t, "iptables-save"), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.Index(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// inNetns runs fn on an OS thread switched into ns. Sockets made there stay
// in ns after the thread switches back.
func inNetns(ns *netNS, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(ns.path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go discards it when this goroutine ends.
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// tcpRoundTrip connects from client to a listener in server on ip and
// exchanges a line each way; it returns the client address the server saw.
func tcpRoundTrip(t *testing.T, client, server *netNS, ip string) string {
	t.Helper()
	var ln *net.TCPListener
	if err := inNetns(server, func() error {
		l, err := net.Listen("tcp4", net.JoinHostPort(ip, "0"))
		if err == nil {
			ln = l.(*net.TCPListener)
		}
		return err
	}); err != nil {
		t.Fatalf("listen in %s on %s: %v", server.name, ip, err)
	}
	defer ln.Close()
	_ = ln.SetDeadline(time.Now().Add(20 * time.Second))
	token := randHex(8)
	type served struct {
		peer string
		err  error
	}
	srvc := make(chan served, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvc <- served{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != token {
			err = fmt.Errorf("server got %q, want %q", line, token)
		}
		if err == nil {
			_, err = fmt.Fprintf(c, "%s back\n", token)
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		srvc <- served{peer: host, err: err}
	}()

	var conn net.Conn
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		err = inNetns(client, func() error {
			var e error
			conn, e = net.DialTimeout("tcp4", ln.Addr().String(), 3*time.Second)
			return e
		})
		if err == nil {
			break
		}
		t.Logf("%s -> %s attempt %d: %v", client.name, ln.Addr(), attempt, err)
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%s cannot connect to %s: %v", client.name, ln.Addr(), err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "%s\n", token); err != nil {
		t.Fatalf("write to %s: %v", ln.Addr(), err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || strings.TrimSpace(reply) != token+" back" {
		t.Fatalf("reply from %s: %q, %v", ln.Addr(), reply, err)
	}
	s := <-srvc
	if s.err != nil {
		t.Fatalf("server in %s: %v", server.name, s.err)
	}
	t.Logf("TCP %s -> %s ok, server saw %s", client.name, ln.Addr(), s.peer)
	return s.peer
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
