package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// buildPlugin builds aegis-ipam into a temporary CNI bin directory.
func buildPlugin(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("builds the binary; skipped in -short")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		tb.Skip("no go toolchain in PATH to build the plugin")
	}
	bin := filepath.Join(tb.TempDir(), "aegis-ipam")
	if out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		tb.Fatalf("build aegis-ipam: %v\n%s", err, out)
	}
	return bin
}

// TestBinary drives the built plugin the way a runtime does, through
// environment and stdin, to check what main wires.
func TestBinary(t *testing.T) {
	bin := buildPlugin(t)
	ctx := context.Background()
	run := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}}
	args := func(cmd string) *invoke.Args {
		return &invoke.Args{Command: cmd, ContainerID: "c1", NetNS: "/var/run/netns/c1", IfName: "eth0", Path: filepath.Dir(bin)}
	}

	vi, err := invoke.GetVersionInfo(ctx, bin, run)
	if err != nil {
		t.Fatal(err)
	}
	if got := vi.SupportedVersions(); !slices.Equal(got, supportedVersions.SupportedVersions()) {
		t.Errorf("VERSION: %v", got)
	}

	conf := netconf(t, nil)
	stdin := encode(t, conf)
	res, err := invoke.ExecPluginWithResult(ctx, bin, stdin, args("ADD"), run)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.244.1.2/24" {
		t.Fatalf("ADD result %v, %v", res, err)
	}
	for _, cmd := range []string{"CHECK", "STATUS", "DEL", "DEL", "GC"} {
		if err := invoke.ExecPluginWithoutResult(ctx, bin, stdin, args(cmd), run); err != nil {
			t.Errorf("%s: %v", cmd, err)
		}
	}

	conf["ipam"].(map[string]any)["podCIDR"] = "x"
	err = invoke.ExecPluginWithoutResult(ctx, bin, encode(t, conf), args("ADD"), run)
	if code(err) != types.ErrInvalidNetworkConfig || err.Error() != `parse config: ipam.podCIDR: invalid CIDR "x"` {
		t.Errorf("ADD with a bad podCIDR = %v (code %d)", err, code(err))
	}
}
