package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		stdin string
		want  string
		code  uint
	}{
		{`{`, "parse config: unexpected end of JSON input", types.ErrDecodingFailure},
		{`{"cniVersion":"0.2.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24"}}`, `cniVersion "0.2.0": unsupported cniVersion (want one of 0.3.0,`, types.ErrIncompatibleCNIVersion},
		{`{"cniVersion":"2.0.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24"}}`, `cniVersion "2.0.0"`, types.ErrIncompatibleCNIVersion},
		{`{"cniVersion":"1.1.0","name":"../etc","ipam":{"podCIDR":"10.0.0.0/24"}}`, `name "../etc" is not a valid network name`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n"}`, "ipam section is missing", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"x"}}`, `parse config: ipam.podCIDR: invalid CIDR "x"`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":24}}`, `parse config: ipam: json: cannot unmarshal number`, types.ErrDecodingFailure},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIRD":"10.0.0.0/24"}}`, `parse config: ipam: json: unknown field "podCIRD"`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{}}`, "ipam.podCIDR (or ipam.podCIDRFile) is required", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","podCIDRFile":"/f"}}`, "ipam.podCIDR and ipam.podCIDRFile: set only one", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDRFile":"podcidr"}}`, `ipam.podCIDRFile: "podcidr" is not an absolute path`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDRFile":"/dev/null"}}`, "ipam.podCIDRFile: /dev/null is not a regular file", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDRFile":"/nonexistent/podcidr"}}`, "ipam.podCIDRFile: pod CIDR not handed over yet", types.ErrTryAgainLater},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.5/24"}}`, `ipam.podCIDR: "10.0.0.5/24" has host bits set (the network is 10.0.0.0/24)`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"::ffff:10.0.0.0/120"}}`, `ipam.podCIDR: invalid CIDR`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/31"}}`, "ipam.podCIDR 10.0.0.0/31: Network 10.0.0.0/31 too small", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","gateway":"nope"}}`, `ipam.gateway: invalid IP "nope"`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","gateway":"10.0.1.1"}}`, "ipam.gateway: 10.0.1.1 is not in the pod CIDR 10.0.0.0/24", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","rangeStart":"fd00::1"}}`, "ipam.rangeStart: fd00::1 is not in the pod CIDR", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","rangeStart":"10.0.0.0"}}`, "ipam.rangeStart: 10.0.0.0 is the network address", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","rangeEnd":"10.0.0.255"}}`, "ipam.rangeEnd: 10.0.0.255 is the broadcast address", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.8"}}`, "ipam.rangeStart 10.0.0.9 is after ipam.rangeEnd 10.0.0.8", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","routes":[{"gw":"10.0.0.1"}]}}`, "ipam.routes[0]: dst is required", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","routes":[{"dst":"::/0"}]}}`, "ipam.routes[0].dst: ::/0 is not IPv4 like the pod CIDR", types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24","dataDir":"var/lib"}}`, `ipam.dataDir "var/lib" is not an absolute path`, types.ErrInvalidNetworkConfig},
		{`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/24"},"prevResult":{"cniVersion":"1.1.0","ips":7}}`, "parse config: prevResult:", types.ErrDecodingFailure},
	} {
		_, err := parseConfig([]byte(tc.stdin))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseConfig(%s)\n = %v\nwant %q", tc.stdin, err, tc.want)
			continue
		}
		if c := configError(err).Code; c != tc.code {
			t.Errorf("parseConfig(%s): code %d, want %d", tc.stdin, c, tc.code)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig([]byte(`{"cniVersion":"0.3.0","name":"n","ipam":{"type":"aegis-ipam","podCIDR":"10.244.1.0/24"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.dataDir != defaultDataDir || c.rng.String() != "10.244.1.1-10.244.1.254" || c.rng.Gateway.String() != "10.244.1.1" {
		t.Errorf("defaults: dataDir %s, range %s, gateway %s", c.dataDir, c.rng.String(), c.rng.Gateway)
	}
	c, err = parseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"fd00:10:244:1::/64","gateway":"fd00:10:244:1::fe","dataDir":"/run/x/"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.dataDir != "/run/x" || c.rng.String() != "fd00:10:244:1::1-fd00:10:244:1:ffff:ffff:ffff:ffff" || c.rng.Gateway.String() != "fd00:10:244:1::fe" {
		t.Errorf("IPv6: dataDir %s, range %s, gateway %s", c.dataDir, c.rng.String(), c.rng.Gateway)
	}
}

// The example conflist's ipam section is one aegis-ipam accepts, as the
// runtime hands it over: with the list's name and cniVersion.
func TestExampleConflist(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "conf", "examples", "10-aegis-ptp.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	var plugin map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &plugin); err != nil {
		t.Fatal(err)
	}
	plugin["name"], plugin["cniVersion"] = list.Name, list.CNIVersion
	stdin, _ := json.Marshal(plugin)
	c, err := parseConfig(stdin)
	if err != nil {
		t.Fatalf("aegis-ipam rejects the example: %v", err)
	}
	if c.rng.String() != "10.244.1.1-10.244.1.254" {
		t.Errorf("example range %s", c.rng.String())
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","ipam":{"type":"aegis-ipam","podCIDR":"10.0.0.0/24","rangeStart":"10.0.0.5","rangeEnd":"10.0.0.9","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}],"dataDir":"/tmp/x"}}`,
		`{"cniVersion":"0.3.0","name":"n","ipam":{"podCIDR":"fd00::/120","rangeEnd":"fd00::9"}}`,
		`{"cniVersion":"1.0.0","name":"n","ipam":{"podCIDRFile":"/nonexistent"},"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}`,
		`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"10.0.0.0/30"},"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"n","ipam":{"podCIDR":"0.0.0.0/0","rangeStart":"255.255.255.254"}}`,
		`{"ipam":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse config: ") {
				t.Fatalf("error without its context: %v", err)
			}
			if code := configError(err).Code; code == 0 {
				t.Fatalf("no CNI code for %v", err)
			}
			return
		}
		// Accepted: the allocator's iterator can walk the range.
		start, _ := netip.AddrFromSlice(c.rng.RangeStart)
		end, _ := netip.AddrFromSlice(c.rng.RangeEnd)
		if !c.rng.Contains(c.rng.RangeStart) || !c.rng.Contains(c.rng.RangeEnd) || start.Compare(end) > 0 {
			t.Fatalf("accepted range %s", c.rng.String())
		}
		if !filepath.IsAbs(c.dataDir) || !networkName.MatchString(c.name) {
			t.Fatalf("accepted dataDir %q, name %q", c.dataDir, c.name)
		}
	})
}
