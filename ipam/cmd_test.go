package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestAdd(t *testing.T) {
	stdin := encode(t, netconf(t, map[string]any{"routes": []map[string]string{{"dst": "0.0.0.0/0"}}}))
	res, err := add(cmdArgs(stdin, "c1", "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(res)
	want := `{"cniVersion":"1.1.0","ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1"}],"routes":[{"dst":"0.0.0.0/0"}]}`
	if string(data) != want {
		t.Errorf("result\n%s\nwant\n%s", data, want)
	}
}

// The result goes to stdout in the version the configuration asked for.
func TestAddPrintsRequestedVersion(t *testing.T) {
	for _, v := range supportedVersions.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			conf := netconf(t, nil)
			conf["cniVersion"] = v
			out, err := captureStdout(t, func() error { return cmdAdd(cmdArgs(encode(t, conf), "c1", "eth0")) })
			if err != nil {
				t.Fatal(err)
			}
			var res struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Version string `json:"version"`
					Address string `json:"address"`
				} `json:"ips"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("stdout is not a result: %v\n%s", err, out)
			}
			if res.CNIVersion != v || len(res.IPs) != 1 || res.IPs[0].Address != "10.244.1.2/24" {
				t.Errorf("stdout: %s", out)
			}
			if strings.HasPrefix(v, "0.3.") && res.IPs[0].Version != "4" {
				t.Errorf("a %s result needs the ip version: %s", v, out)
			}
		})
	}
}

func TestAddIsIdempotent(t *testing.T) {
	stdin := encode(t, netconf(t, nil))
	first := mustAdd(t, stdin, "c1", "eth0")
	other := mustAdd(t, stdin, "c2", "eth0")
	again := mustAdd(t, stdin, "c1", "eth0")
	if again.Address.String() != first.Address.String() {
		t.Errorf("repeated ADD gave %s, first gave %s", again.Address.String(), first.Address.String())
	}
	second := mustAdd(t, stdin, "c1", "net1")
	for _, ipc := range []string{other.Address.String(), second.Address.String()} {
		if ipc == first.Address.String() {
			t.Errorf("%s given twice", ipc)
		}
	}
}

func TestDel(t *testing.T) {
	stdin := encode(t, netconf(t, nil))
	mustAdd(t, stdin, "c1", "eth0")
	mustAdd(t, stdin, "c1", "net1")
	for i := range 2 {
		if err := cmdDel(cmdArgs(stdin, "c1", "eth0")); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if err := cmdCheck(cmdArgs(stdin, "c1", "eth0")); err == nil {
		t.Error("CHECK passed after DEL")
	}
	if err := cmdCheck(cmdArgs(stdin, "c1", "net1")); err != nil {
		t.Errorf("DEL of eth0 released net1: %v", err)
	}
	if err := cmdDel(cmdArgs(stdin, "never-added", "eth0")); err != nil {
		t.Errorf("DEL of an unknown container: %v", err)
	}
}

func TestCheck(t *testing.T) {
	conf := netconf(t, nil)
	stdin := encode(t, conf)
	ipc := mustAdd(t, stdin, "c1", "eth0")
	if err := cmdCheck(cmdArgs(stdin, "c1", "eth0")); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	withPrev := func(addr string) []byte {
		conf["prevResult"] = map[string]any{"cniVersion": "1.1.0", "ips": []map[string]string{{"address": addr}}}
		return encode(t, conf)
	}
	if err := cmdCheck(cmdArgs(withPrev(ipc.Address.String()), "c1", "eth0")); err != nil {
		t.Errorf("CHECK against the ADD result: %v", err)
	}
	err := cmdCheck(cmdArgs(withPrev("10.244.1.77/24"), "c1", "eth0"))
	if err == nil || !strings.Contains(err.Error(), "not in prevResult") {
		t.Errorf("CHECK against another address: %v", err)
	}
	if err := cmdCheck(cmdArgs(stdin, "c2", "eth0")); err == nil || !strings.Contains(err.Error(), "no address reserved") {
		t.Errorf("CHECK of a container without an address: %v", err)
	}
}

func TestGC(t *testing.T) {
	conf := netconf(t, nil)
	stdin := encode(t, conf)
	keep := []string{mustAdd(t, stdin, "c1", "eth0").Address.IP.String(), mustAdd(t, stdin, "c3", "eth0").Address.IP.String()}
	mustAdd(t, stdin, "c1", "net1")
	mustAdd(t, stdin, "c2", "eth0")
	dir := filepath.Join(conf["ipam"].(map[string]any)["dataDir"].(string), "net")
	for name, content := range map[string]string{
		"10.244.1.200": "",   // a crash between creating and writing the file
		"10.244.1.201": "c3", // host-local's format before ifname: c3 is valid
		"10.244.1.202": "c9",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	keep = append(keep, "10.244.1.201")

	conf["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c3", "ifname": "eth0"}}
	if err := cmdGC(cmdArgs(encode(t, conf), "", "")); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := reservations(t, dir); !slices.Equal(got, sorted(keep)) {
		t.Errorf("after GC: %v, want %v", got, sorted(keep))
	}
	if err := cmdCheck(cmdArgs(stdin, "c1", "eth0")); err != nil {
		t.Errorf("GC released a valid attachment: %v", err)
	}
	// The store still works: the lock and round-robin state are untouched.
	mustAdd(t, stdin, "c4", "eth0")

	delete(conf, "cni.dev/valid-attachments")
	if err := cmdGC(cmdArgs(encode(t, conf), "", "")); err != nil {
		t.Fatalf("GC with no valid attachments: %v", err)
	}
	if got := reservations(t, dir); len(got) != 0 {
		t.Errorf("GC with no valid attachments kept %v", got)
	}
}

// reservations lists the addresses reserved in dir.
func reservations(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return sorted(out)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestStatus(t *testing.T) {
	conf := netconf(t, nil)
	if err := cmdStatus(cmdArgs(encode(t, conf), "", "")); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	dataDir := conf["ipam"].(map[string]any)["dataDir"].(string)
	if ents, _ := os.ReadDir(filepath.Join(dataDir, "net")); len(ents) != 0 {
		t.Errorf("STATUS left %d files behind", len(ents))
	}

	// A path under a regular file cannot be created, even by root.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, ipam := range map[string]map[string]any{
		"data dir not writable":        {"dataDir": filepath.Join(file, "aegis-ipam")},
		"pod CIDR not yet handed over": {"podCIDR": nil, "podCIDRFile": filepath.Join(t.TempDir(), "podcidr")},
	} {
		t.Run(name, func(t *testing.T) {
			err := cmdStatus(cmdArgs(encode(t, netconf(t, ipam)), "", ""))
			if code(err) != types.ErrPluginNotAvailable {
				t.Errorf("STATUS = %v (code %d), want code %d", err, code(err), types.ErrPluginNotAvailable)
			}
		})
	}
	if os.Geteuid() != 0 {
		ro := t.TempDir()
		if err := os.Chmod(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		err := cmdStatus(cmdArgs(encode(t, netconf(t, map[string]any{"dataDir": ro})), "", ""))
		if code(err) != types.ErrPluginNotAvailable {
			t.Errorf("STATUS on a read-only data dir = %v", err)
		}
	}
}

func TestExhaustion(t *testing.T) {
	for _, tc := range []struct {
		name string
		ipam map[string]any
		n    int
	}{
		{"/30", map[string]any{"podCIDR": "10.244.1.0/30"}, 1}, // .1 is the gateway, .3 broadcast
		{"range", map[string]any{"rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.12"}, 3},
		{"IPv6 /126", map[string]any{"podCIDR": "fd00:10:244:1::/126"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdin := encode(t, netconf(t, tc.ipam))
			for i := range tc.n {
				mustAdd(t, stdin, fmt.Sprint("c", i), "eth0")
			}
			_, err := addIP(stdin, "full", "eth0")
			if code(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "pod CIDR exhausted") {
				t.Fatalf("ADD in a full range = %v (code %d)", err, code(err))
			}
			if err := cmdDel(cmdArgs(stdin, "c0", "eth0")); err != nil {
				t.Fatal(err)
			}
			mustAdd(t, stdin, "full", "eth0")
		})
	}
}

func TestConcurrentAdds(t *testing.T) {
	stdin := encode(t, netconf(t, nil))
	got := make([]string, 20)
	run := func(id func(i int) string) {
		var wg sync.WaitGroup
		for i := range got {
			wg.Go(func() {
				ipc, err := addIP(stdin, id(i), "eth0")
				if err != nil {
					t.Errorf("ADD %s: %v", id(i), err)
					return
				}
				got[i] = ipc.Address.String()
			})
		}
		wg.Wait()
	}

	run(func(i int) string { return fmt.Sprint("c", i) })
	first := slices.Clone(got)
	if u := slices.Compact(sorted(first)); len(u) != len(first) {
		t.Fatalf("20 containers got %d distinct addresses: %v", len(u), first)
	}
	run(func(i int) string { return fmt.Sprint("c", i) })
	if !slices.Equal(got, first) {
		t.Errorf("concurrent repeated ADDs changed addresses:\n%v\n%v", first, got)
	}
	// A runtime retrying while the first ADD is still running.
	run(func(int) string { return "same" })
	if u := slices.Compact(sorted(got)); len(u) != 1 {
		t.Errorf("one container got %d addresses: %v", len(u), u)
	}
}

// The node agent hands the pod CIDR over in a file, possibly after the
// runtime first asks.
func TestPodCIDRFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "podcidr")
	stdin := encode(t, netconf(t, map[string]any{"podCIDR": nil, "podCIDRFile": path}))
	if _, err := addIP(stdin, "c1", "eth0"); code(err) != types.ErrTryAgainLater {
		t.Errorf("ADD before the file exists = %v (code %d)", err, code(err))
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := addIP(stdin, "c1", "eth0"); code(err) != types.ErrTryAgainLater {
		t.Errorf("ADD with the file empty = %v (code %d)", err, code(err))
	}
	if err := os.WriteFile(path, []byte("10.244.7.0/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := mustAdd(t, stdin, "c1", "eth0").Address.String(); got != "10.244.7.2/24" {
		t.Errorf("ADD = %s", got)
	}
	if err := os.WriteFile(path, []byte("10.244.7.0/24,fd00::/64"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := addIP(stdin, "c2", "eth0")
	if code(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "ipam.podCIDRFile "+path+": invalid CIDR") {
		t.Errorf("ADD with two CIDRs in the file = %v (code %d)", err, code(err))
	}
}
