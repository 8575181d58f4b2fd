package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/netns"
	"github.com/aegis-cni/aegis/e2e/node"
)

// 50 ADDs and then DELs of half of them, all in parallel through libcni:
// the maps and pins must describe exactly the pods still present.
func TestParallelAddDel(t *testing.T) {
	n := node.New(t, node.Options{})
	n.StartDaemon()
	const total = 50
	pods := make([]*node.Pod, total)
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for i := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := n.TryNewPod("load", fmt.Sprintf("p%d", i), nil)
			pods[i] = p
			if err != nil {
				errs <- fmt.Errorf("ADD p%d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	for i := 0; i < total; i += 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.DelPod(pods[i]); err != nil {
				t.Errorf("DEL p%d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	var remaining []*node.Pod
	for i := 1; i < total; i += 2 {
		remaining = append(remaining, pods[i])
	}
	assertConsistent(t, n, remaining)

	// GC with only a few valid attachments removes the rest.
	if err := n.GC(remaining[:5]...); err != nil {
		t.Fatalf("GC: %v", err)
	}
	assertConsistent(t, n, remaining[:5])
}

// assertConsistent checks that links, endpoints map, registry and ipcache
// name exactly the given pods.
func assertConsistent(t *testing.T, n *node.Node, pods []*node.Pod) {
	t.Helper()
	paths := bpf.Paths{Root: n.BPFRoot}
	atts, err := bpf.ListAttachments(paths)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, p := range pods {
		want[bpf.AttachmentName(p.ContainerID, "eth0")] = true
	}
	if len(atts) != len(pods) {
		t.Errorf("%d attachments, want %d", len(atts), len(pods))
	}
	for _, a := range atts {
		if !want[bpf.AttachmentName(a.ContainerID, a.IfName)] {
			t.Errorf("stray attachment %s", a.ContainerID)
		}
		if a.Err != nil {
			t.Errorf("attachment %s unhealthy: %v", a.ContainerID, a.Err)
		}
	}
	eps, err := n.Client().Endpoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != len(pods) {
		t.Errorf("%d endpoints registered, want %d", len(eps), len(pods))
	}
	m, err := bpf.OpenMaps(paths)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mapEps, err := m.ListEndpoints()
	if err != nil {
		t.Fatal(err)
	}
	if len(mapEps) != len(pods) {
		t.Errorf("%d endpoints in the map, want %d", len(mapEps), len(pods))
	}
	for _, ep := range eps {
		if _, ok := mapEps[uint32(ep.HostIfindex)]; !ok {
			t.Errorf("endpoint %s has no map entry", ep.ContainerID)
		}
	}
	ipc, err := m.ListIPCache()
	if err != nil {
		t.Fatal(err)
	}
	podIPs := 0
	for pfx, id := range ipc {
		// The pods' gateway (ptp puts it on every host veth) is the host.
		if id != policy.IdentityHost && pfx.Bits() == 32 && strings.HasPrefix(pfx.Addr().String(), "10.244.1.") {
			podIPs++
		}
	}
	if podIPs != len(pods) {
		t.Errorf("%d pod addresses in the ipcache, want %d", podIPs, len(pods))
	}
}

// cniError is the error object a CNI plugin prints.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// runPlugin runs aegis-cni directly (not through libcni, which would
// reject some of the bad inputs itself) inside the node namespace.
func runPlugin(t *testing.T, n *node.Node, env []string, stdin string) (string, *cniError) {
	t.Helper()
	cmd := n.NS.Command(filepath.Join(n.Bin.Aegis, "aegis-cni"))
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	if err == nil {
		return out.String(), nil
	}
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("run aegis-cni: %v", err)
	}
	var e cniError
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		t.Fatalf("aegis-cni failed without a CNI error object: %v: %q", err, out.String())
	}
	return out.String(), &e
}

// Bad input never leaves anything behind and always names what was wrong.
func TestPluginBadInput(t *testing.T) {
	n := node.New(t, node.Options{})
	n.StartDaemon()
	pod := netns.New(t, "bad")
	// A pod namespace whose eth0 is not a veth (a second namespace's
	// loopback stands in): "prevResult with no veth".
	good := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"x","type":"aegis-cni","socket":%q,"bpfRoot":%q,"logFile":%q,
"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":%q}],"ips":[{"address":"10.244.1.77/24","interface":0}]}}`,
		n.Socket, n.BPFRoot, n.CNILog, pod.Path)
	env := func(extra ...string) []string {
		return append([]string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bad1", "CNI_NETNS=" + pod.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + n.Bin.Aegis,
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=y"}, extra...)
	}
	cases := []struct {
		name  string
		env   []string
		stdin string
		code  int
		msg   string
	}{
		{"malformed config", env(), `{"cniVersion": "1.1.0", "name": `, 6, "network config"},
		{"missing prevResult", env(), fmt.Sprintf(`{"cniVersion":"1.1.0","name":"x","type":"aegis-cni","socket":%q}`, n.Socket), 6, "must be called as a chained plugin"},
		{"unknown cniVersion", env(), `{"cniVersion":"9.9.9","name":"x","type":"aegis-cni"}`, 1, "9.9.9"},
		{"prevResult with no veth", env(), good, 7, "veth"},
		{"garbage CNI_ARGS", append(env(), "CNI_ARGS=%%%;;;==garbage"), good, 6, "CNI_ARGS"},
		{"relative socket", env(), strings.Replace(good, n.Socket, "relative.sock", 1), 6, "absolute"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, e := runPlugin(t, n, tc.env, tc.stdin)
			if e == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Errorf("error = %+v, want code %d mentioning %q", e, tc.code, tc.msg)
			}
		})
	}
	assertConsistent(t, n, nil)

	t.Run("daemon down: ADD fails with code 11 and says so", func(t *testing.T) {
		p := n.NewPod("x", "ok", nil)
		n.StopDaemon(9)
		_, err := n.TryNewPod("x", "while-down", nil)
		if err == nil || !strings.Contains(err.Error(), "aegisd is not available") {
			t.Fatalf("ADD with the daemon down: %v", err)
		}
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrTryAgainLater {
			t.Errorf("want CNI error code 11 (try again later), got %#v", err)
		}
		// DEL works with the daemon down, and the restarted daemon
		// forgets the endpoint.
		if err := n.DelPod(p); err != nil {
			t.Fatalf("DEL with the daemon down: %v", err)
		}
		n.StartDaemon()
		assertConsistent(t, n, nil)
	})
}

// AKS conflists say cniVersion 0.3.0: the chain works there too (prevResult
// in the 0.3.0 format, passed on unchanged).
func TestChainCNIVersion030(t *testing.T) {
	n := node.New(t, node.Options{ConfList: fmt.Sprintf(`{
  "cniVersion": "0.3.0",
  "name": "aegis-030",
  "plugins": [
    {"type": "ptp", "ipMasq": false,
     "ipam": {"type": "aegis-ipam", "podCIDR": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}},
    AEGIS_CNI_ENTRY
  ]
}`, node.PodCIDR, t.TempDir())})
	n.Apply("00.yaml", node.PodManifest("default", "a", map[string]string{"app": "a"})+"---\n"+node.PodManifest("default", "b", map[string]string{"app": "b"}))
	n.StartDaemon()
	a := n.NewPod("default", "a", nil)
	b := n.NewPod("default", "b", nil)
	if v := a.Result.Version(); v != "0.3.0" {
		t.Errorf("result version %s, want 0.3.0", v)
	}
	b.NS.Serve(t, "tcp", b.Addr(80), "b:")
	a.NS.ExpectAllowed(t, "tcp", b.Addr(80))
	n.Apply("10.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: b}}\n")
	a.NS.ExpectBlocked(t, "tcp", b.Addr(80))
	for _, p := range []*node.Pod{a, b} {
		if err := n.DelPod(p); err != nil {
			t.Fatal(err)
		}
	}
	assertConsistent(t, n, nil)
}
