package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// AzureConfList is what an AKS node with Azure CNI overlay runs:
// azure-vnet in transparent mode with CNS IPAM in overlay mode, at
// cniVersion 0.3.0, then Aegis.
const AzureConfList = `{
  "cniVersion": "0.3.0",
  "name": "azure",
  "plugins": [
    {"type": "azure-vnet", "mode": "transparent", "ipsToRouteViaHost": ["169.254.20.10"],
     "ipam": {"type": "azure-cns", "mode": "v4overlay"}},
    AEGIS_CNI_ENTRY
  ]
}`

// azureBinaries finds azure-vnet v1.7.0 and the CNS stand-in that
// scripts/build-azure-vnet.sh builds into the cache.
func azureBinaries(t testing.TB) (vnet, standin string) {
	t.Helper()
	cache := os.Getenv("AEGIS_CACHE")
	if cache == "" {
		cache = "/var/cache/aegis"
	}
	dir := filepath.Join(cache, "azure-vnet-v1.7.0")
	vnet, standin = filepath.Join(dir, "azure-vnet"), filepath.Join(dir, "azure-cns-standin")
	for _, f := range []string{vnet, standin} {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s missing: run scripts/build-azure-vnet.sh (make peers does)", f)
			}
			t.Skipf("SKIPPED: %s missing: run scripts/build-azure-vnet.sh (make peers does)", f)
		}
	}
	return vnet, standin
}

// AzureOptions makes a node whose primary plugin is the real azure-vnet.
// azure-vnet keeps state in fixed host paths (/var/run/azure-vnet.json, its
// lock, /var/log/azure-vnet.log), so it runs through a shim that gives it a
// private mount namespace with those directories bind-mounted from the
// test's own (the pods' netns files stay visible).
func AzureOptions(t testing.TB) Options {
	t.Helper()
	vnet, _ := azureBinaries(t)
	dir := t.TempDir()
	iso := filepath.Join(dir, "root")
	for _, d := range []string{"run/netns", "log"} {
		if err := os.MkdirAll(filepath.Join(iso, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	shim := fmt.Sprintf(`#!/bin/sh
# azure-vnet with /var/run and /var/log of its own (the test's %[1]s).
exec unshare --mount --propagation private /bin/sh -c '
mount --rbind /var/run/netns %[1]s/run/netns &&
mount --rbind %[1]s/run /var/run &&
mount --bind %[1]s/log /var/log &&
exec %[2]s "$@"' azure-vnet "$@"
`, iso, vnet)
	if err := os.WriteFile(filepath.Join(dir, "azure-vnet"), []byte(shim), 0o755); err != nil {
		t.Fatal(err)
	}
	return Options{ConfList: AzureConfList, ExtraPluginDirs: []string{dir}, azure: true, azureRoot: iso}
}

// startAzure prepares the node as AKS has it for azure-vnet: an uplink on
// 192.0.2.0/24 (the "VNet"), no default route (azure-vnet's code knows
// Azure's wireserver and IMDS addresses; they must fail fast), a route
// for 169.254.1.1 so the node answers the pods' proxy ARP, and the CNS
// stand-in on 127.0.0.1:10090.
func (n *Node) startAzure(t testing.TB) {
	t.Helper()
	_, standin := azureBinaries(t)
	if out, _ := n.NS.Exec(5*time.Second, "ip", "route", "show", "default"); len(out) > 0 {
		t.Fatalf("node namespace has a default route (%s); azure-vnet must not run with one", out)
	}
	n.NS.MustExec(t, "ip", "route", "add", "169.254.1.1/32", "dev", "uplink0")
	logF, err := os.Create(filepath.Join(n.Dir, "cns.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+n.NS.Path, standin, "--listen", "127.0.0.1:10090",
		"--pod-cidr", PodCIDR, "--host-ip", "192.0.2.1/24", "--host-gateway", n.uplinkPeer, "--state", filepath.Join(n.Dir, "cns-state.json"))
	cmd.Stdout, cmd.Stderr = logF, logF
	if err := cmd.Start(); err != nil {
		t.Fatalf("start CNS stand-in: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logF.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var c net.Conn
		err := n.NS.Do(func() (err error) {
			c, err = (&net.Dialer{Timeout: 200 * time.Millisecond}).DialContext(context.Background(), "tcp", "127.0.0.1:10090")
			return err
		})
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("CNS stand-in not listening on 127.0.0.1:10090 after 10s")
}
