package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func conf(t testing.TB, cidr, extra string) []byte {
	dir := t.TempDir()
	return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"net","ipam":{"type":"aegis-ipam","podCIDR":%q,"dataDir":%q%s}}`, cidr, dir, extra))
}

// add runs cmdAdd with stdout captured and returns the allocated address.
func add(t testing.TB, stdin []byte, id string) (string, error) {
	t.Helper()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	err := cmdAdd(&skel.CmdArgs{ContainerID: id, IfName: "eth0", StdinData: stdin})
	w.Close()
	os.Stdout = old
	var res current.Result
	if jerr := json.NewDecoder(r).Decode(&res); jerr != nil && err == nil {
		return "", fmt.Errorf("decode result: %w", jerr)
	}
	if err != nil {
		return "", err
	}
	return res.IPs[0].Address.String(), nil
}

func TestAddIdempotentDelCheckGC(t *testing.T) {
	stdin := conf(t, "10.244.1.0/29", "")
	a, err := add(t, stdin, "c1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := add(t, stdin, "c1")
	if err != nil || again != a {
		t.Fatalf("repeated ADD: %s, %v; want %s", again, err, a)
	}
	b, _ := add(t, stdin, "c2")
	if b == a {
		t.Fatalf("two containers got %s", a)
	}
	if err := cmdCheck(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := cmdDel(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}); err != nil {
		t.Fatal(err)
	}
	if err := cmdDel(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if err := cmdCheck(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: stdin}); err == nil {
		t.Fatal("CHECK passed after DEL")
	}
	// GC keeps only c3.
	add(t, stdin, "c3")
	var nc map[string]any
	json.Unmarshal(stdin, &nc)
	nc["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "c3", "ifname": "eth0"}}
	gcIn, _ := json.Marshal(nc)
	if err := cmdGC(&skel.CmdArgs{StdinData: gcIn}); err != nil {
		t.Fatal(err)
	}
	if err := cmdCheck(&skel.CmdArgs{ContainerID: "c2", IfName: "eth0", StdinData: stdin}); err == nil {
		t.Error("GC kept c2")
	}
	if err := cmdCheck(&skel.CmdArgs{ContainerID: "c3", IfName: "eth0", StdinData: stdin}); err != nil {
		t.Errorf("GC removed c3: %v", err)
	}
}

func TestExhaustion(t *testing.T) {
	stdin := conf(t, "10.244.1.0/30", "") // one usable address besides the gateway
	if _, err := add(t, stdin, "c1"); err != nil {
		t.Fatal(err)
	}
	_, err := add(t, stdin, "c2")
	var e *types.Error
	if err == nil || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("err = %v (%T %v)", err, err, e)
	}
}

func TestConcurrentAddsGetDistinctAddresses(t *testing.T) {
	stdin := conf(t, "10.244.1.0/24", "")
	var mu sync.Mutex
	seen := map[string]string{}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", i)
			// cmdAdd writes to stdout; allocate through the allocator path
			// without it to run in parallel.
			c, err := parseConfig(stdin)
			if err != nil {
				t.Error(err)
				return
			}
			s, err := openStore(c)
			if err != nil {
				t.Error(err)
				return
			}
			defer s.Close()
			ipc, err := allocate(s, c, id, "eth0")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := seen[ipc.Address.String()]; dup {
				t.Errorf("%s given to %s and %s", ipc.Address.String(), other, id)
			}
			seen[ipc.Address.String()] = id
		}()
	}
	wg.Wait()
}

func TestStatusAndBadConfig(t *testing.T) {
	stdin := conf(t, "10.244.1.0/24", "")
	if err := cmdStatus(&skel.CmdArgs{StdinData: stdin}); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	ro := filepath.Join(t.TempDir(), "ro")
	os.MkdirAll(filepath.Join(ro, "net"), 0o500)
	if os.Geteuid() != 0 {
		bad := []byte(strings.Replace(string(stdin), `"dataDir":"`, `"dataDir":"`+ro+`","x":"`, 1))
		if err := cmdStatus(&skel.CmdArgs{StdinData: bad}); err == nil {
			t.Error("STATUS passed on a read-only data dir")
		}
	}
	for _, tc := range []struct{ stdin, want string }{
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"x"}}`, `ipam.podCIDR: invalid CIDR "x"`},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{}}`, "ipam.podCIDR (or ipam.podCIDRFile) is required"},
		{`{"cniVersion":"1.1.0","name":"n"}`, "ipam section is missing"},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","gateway":"nope"}}`, `ipam.gateway: invalid IP "nope"`},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDRFile":"/nonexistent"}}`, "ipam.podCIDRFile"},
	} {
		if _, err := parseConfig([]byte(tc.stdin)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseConfig(%s) = %v, want %q", tc.stdin, err, tc.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","rangeStart":"10.0.0.5","routes":[{"dst":"0.0.0.0/0"}]}}`))
	f.Add([]byte(`{"cniVersion":"0.3.0","name":"n","ipam":{"podCIDR":"::/0","rangeEnd":"::1"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err == nil && (c.ipam == nil || len(c.rangeSet) != 1) {
			t.Fatalf("accepted without a range: %+v", c)
		}
	})
}
