package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// An AKS node's conflist, as Azure CNI overlay installs it.
const aksConflist = `{
  "cniVersion": "0.3.0",
  "name": "azure",
  "adapterName": "",
  "plugins": [
    {
      "type": "azure-vnet",
      "mode": "transparent",
      "ipsToRouteViaHost": ["169.254.20.10"],
      "executionMode": "v4swiftv2",
      "ipam": {
        "type": "azure-cns",
        "mode": "v4overlay"
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      },
      "snat": true
    }
  ]
}
`

var entry = map[string]any{"type": "aegis-cni", "socket": "/var/run/aegis/aegisd.sock", "bpfRoot": "/sys/fs/bpf/aegis", "logFile": "/var/log/aegis/cni.log"}

func types(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("result is not a valid conflist: %v\n%s", err, data)
	}
	var out []string
	for _, p := range cl.Plugins {
		out = append(out, p.Network.Type)
	}
	return out
}

func TestInstallUninstallRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-azure.conflist")
	if err := os.WriteFile(path, []byte(aksConflist), 0o640); err != nil {
		t.Fatal(err)
	}
	changed, err := Install(path, entry, "azure-vnet")
	if err != nil || !changed {
		t.Fatalf("install: changed=%v err=%v", changed, err)
	}
	if got := strings.Join(types(t, path), ","); got != "azure-vnet,aegis-cni,portmap" {
		t.Fatalf("plugins after install: %s", got)
	}
	data, _ := os.ReadFile(path)
	// Unknown fields and their order survive.
	for _, want := range []string{`"adapterName": ""`, `"ipsToRouteViaHost"`, `"executionMode": "v4swiftv2"`, `"snat": true`} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("install lost %s:\n%s", want, data)
		}
	}
	if bytes.Index(data, []byte(`"cniVersion"`)) > bytes.Index(data, []byte(`"plugins"`)) {
		t.Errorf("top-level keys reordered:\n%s", data)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", st.Mode().Perm())
	}
	// A second install is a no-op.
	if changed, err := Install(path, entry, "azure-vnet"); err != nil || changed {
		t.Fatalf("second install: changed=%v err=%v", changed, err)
	}
	// A changed entry is replaced in place.
	e2 := map[string]any{"type": "aegis-cni", "socket": "/run/other.sock"}
	if changed, err := Install(path, e2, "azure-vnet"); err != nil || !changed {
		t.Fatalf("update: changed=%v err=%v", changed, err)
	}
	if got := strings.Join(types(t, path), ","); got != "azure-vnet,aegis-cni,portmap" {
		t.Fatalf("plugins after update: %s", got)
	}
	if changed, err := Uninstall(path, "aegis-cni"); err != nil || !changed {
		t.Fatalf("uninstall: changed=%v err=%v", changed, err)
	}
	var want bytes.Buffer
	if err := json.Indent(&want, mustCompact(t, aksConflist), "", "  "); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if strings.TrimSpace(string(got)) != strings.TrimSpace(want.String()) {
		t.Errorf("uninstall did not restore the original:\n%s\nwant\n%s", got, want.String())
	}
	if changed, err := Uninstall(path, "aegis-cni"); err != nil || changed {
		t.Fatalf("second uninstall: changed=%v err=%v", changed, err)
	}
	// No temporary files are left behind.
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory has %d entries", len(ents))
	}
}

func mustCompact(t *testing.T, s string) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestInstallErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, file, content, after, want string }{
		{"not json", "a.conflist", "{", "", "not a JSON conflist"},
		{"no plugins", "b.conflist", `{"name":"x"}`, "", `no "plugins" array`},
		{"after missing", "c.conflist", aksConflist, "ptp", `no plugin of type "ptp"`},
		{"single .conf", "d.conf", `{"type":"bridge"}`, "", "chaining needs a .conflist"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			os.WriteFile(path, []byte(tc.content), 0o644)
			_, err := Install(path, entry, tc.after)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.file) {
				t.Fatalf("err = %v, want %q naming the file", err, tc.want)
			}
			if data, _ := os.ReadFile(path); string(data) != tc.content {
				t.Errorf("failed install changed the file")
			}
		})
	}
}

func TestFindConflist(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"20-b.conflist", "10-azure.conflist", "README"} {
		os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o644)
	}
	got, err := FindConflist(dir)
	if err != nil || filepath.Base(got) != "10-azure.conflist" {
		t.Fatalf("got %s, %v", got, err)
	}
}

func TestExamplesAreValidConflists(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.conflist")
	if len(files) < 2 {
		t.Fatalf("want the example conflists in conf/examples, found %v", files)
	}
	for _, f := range files {
		ts := types(t, f)
		if !strings.Contains(strings.Join(ts, ","), "aegis-cni") {
			t.Errorf("%s does not chain aegis-cni: %v", f, ts)
		}
	}
}

func FuzzInstall(f *testing.F) {
	f.Add([]byte(aksConflist), "azure-vnet")
	f.Add([]byte(`{"plugins":[{"type":1},null,[]]}`), "")
	f.Fuzz(func(t *testing.T, data []byte, after string) {
		path := filepath.Join(t.TempDir(), "f.conflist")
		os.WriteFile(path, data, 0o644)
		if changed, err := Install(path, entry, after); err == nil && changed {
			if _, err := parseObject(mustRead(t, path)); err != nil {
				t.Fatalf("install wrote invalid JSON: %v", err)
			}
		}
	})
}

func mustRead(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
