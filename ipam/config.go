package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
)

// defaultDataDir keeps aegis-ipam's reservations apart from host-local's
// (/var/lib/cni/networks), so the two can never share a reservation file.
const defaultDataDir = "/var/lib/cni/aegis-ipam"

// supportedVersions is what VERSION reports and what parseConfig accepts.
var supportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

var (
	// errNoPodCIDR: the node agent has not written podCIDRFile yet. It
	// clears up by itself, so ADD and DEL say "try again later" and
	// STATUS says "not available" rather than "invalid configuration".
	errNoPodCIDR = errors.New("pod CIDR not handed over yet")
	// errVersion maps to CNI code 1, incompatible version.
	errVersion = errors.New("unsupported cniVersion")
)

// networkName is the CNI spec's rule for network names; it also keeps the
// name, which becomes a directory under dataDir, from escaping it.
var networkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ipamConf is the "ipam" section. Its keys are aegis-ipam's own, so an
// unknown one is a typo and is rejected.
type ipamConf struct {
	Type string `json:"type"`
	// PodCIDR is the node's pod range; PodCIDRFile names a file holding it
	// instead (how a node agent hands it over). Exactly one is required.
	PodCIDR     string         `json:"podCIDR,omitempty"`
	PodCIDRFile string         `json:"podCIDRFile,omitempty"`
	RangeStart  string         `json:"rangeStart,omitempty"`
	RangeEnd    string         `json:"rangeEnd,omitempty"`
	Gateway     string         `json:"gateway,omitempty"`
	Routes      []*types.Route `json:"routes,omitempty"`
	DataDir     string         `json:"dataDir,omitempty"`
}

// netConf is the network configuration as the runtime (or the main
// plugin) passes it on stdin.
type netConf struct {
	types.PluginConf
	IPAM json.RawMessage `json:"ipam"`
}

// config is the validated configuration every command works from.
type config struct {
	name       string
	cniVersion string
	dataDir    string
	// rng is canonical: subnet, start, end and gateway all set.
	rng    allocator.Range
	routes []*types.Route
	// prevResult is set for CHECK, where the runtime passes the result of
	// the ADD being checked.
	prevResult *current.Result
	valid      []types.GCAttachment
}

// parseConfig reads and validates the whole configuration up front, so no
// command fails halfway on a field it reaches late.
func parseConfig(stdin []byte) (*config, error) {
	var nc netConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if !slices.Contains(supportedVersions.SupportedVersions(), nc.CNIVersion) {
		return nil, fmt.Errorf("parse config: cniVersion %q: %w (want one of %s)", nc.CNIVersion, errVersion,
			strings.Join(supportedVersions.SupportedVersions(), ", "))
	}
	if !networkName.MatchString(nc.Name) {
		return nil, fmt.Errorf("parse config: name %q is not a valid network name", nc.Name)
	}
	if len(nc.IPAM) == 0 || string(nc.IPAM) == "null" {
		return nil, errors.New("parse config: ipam section is missing")
	}
	var ic ipamConf
	dec := json.NewDecoder(bytes.NewReader(nc.IPAM))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ic); err != nil {
		return nil, fmt.Errorf("parse config: ipam: %w", err)
	}
	c := &config{name: nc.Name, cniVersion: nc.CNIVersion, dataDir: defaultDataDir, valid: nc.ValidAttachments}
	if ic.DataDir != "" {
		if !filepath.IsAbs(ic.DataDir) {
			return nil, fmt.Errorf("parse config: ipam.dataDir %q is not an absolute path", ic.DataDir)
		}
		c.dataDir = filepath.Clean(ic.DataDir)
	}
	var err error
	if c.rng, err = parseRange(&ic); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if c.routes, err = checkRoutes(ic.Routes, c.rng.Subnet.IP.To4() != nil); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if nc.RawPrevResult != nil {
		if err := version.ParsePrevResult(&nc.PluginConf); err != nil {
			return nil, fmt.Errorf("parse config: prevResult: %w", err)
		}
		if c.prevResult, err = current.NewResultFromResult(nc.PrevResult); err != nil {
			return nil, fmt.Errorf("parse config: prevResult: %w", err)
		}
	}
	return c, nil
}

// parseRange resolves the pod CIDR and checks the optional addresses
// against it, naming the field at fault. host-local's Canonicalize fills
// in the defaults but accepts a start after the end, which would send its
// iterator round the whole address space.
func parseRange(ic *ipamConf) (allocator.Range, error) {
	var r allocator.Range
	field, cidr := "ipam.podCIDR", strings.TrimSpace(ic.PodCIDR)
	switch {
	case ic.PodCIDR != "" && ic.PodCIDRFile != "":
		return r, errors.New("ipam.podCIDR and ipam.podCIDRFile: set only one")
	case ic.PodCIDRFile != "":
		field = "ipam.podCIDRFile " + ic.PodCIDRFile
		var err error
		if cidr, err = readPodCIDRFile(ic.PodCIDRFile); err != nil {
			return r, fmt.Errorf("ipam.podCIDRFile: %w", err)
		}
	case cidr == "":
		return r, errors.New("ipam.podCIDR (or ipam.podCIDRFile) is required")
	}
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil || prefix.Addr().Is4In6() {
		return r, fmt.Errorf("%s: invalid CIDR %q", field, cidr)
	}
	if prefix != prefix.Masked() {
		return r, fmt.Errorf("%s: %q has host bits set (the network is %s)", field, cidr, prefix.Masked())
	}
	r.Subnet = types.IPNet{IP: prefix.Addr().AsSlice(), Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}

	addr := func(name, s string) (net.IP, error) {
		if s == "" {
			return nil, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return nil, fmt.Errorf("ipam.%s: invalid IP %q", name, s)
		}
		if !prefix.Contains(a) {
			return nil, fmt.Errorf("ipam.%s: %s is not in the pod CIDR %s", name, a, prefix)
		}
		if name != "gateway" && a == prefix.Addr() {
			return nil, fmt.Errorf("ipam.%s: %s is the network address", name, a)
		}
		if name != "gateway" && a.Is4() && a == broadcast(prefix) {
			return nil, fmt.Errorf("ipam.%s: %s is the broadcast address", name, a)
		}
		return a.AsSlice(), nil
	}
	if r.RangeStart, err = addr("rangeStart", ic.RangeStart); err != nil {
		return r, err
	}
	if r.RangeEnd, err = addr("rangeEnd", ic.RangeEnd); err != nil {
		return r, err
	}
	if r.Gateway, err = addr("gateway", ic.Gateway); err != nil {
		return r, err
	}
	ordered := func() error {
		start, _ := netip.AddrFromSlice(r.RangeStart)
		end, _ := netip.AddrFromSlice(r.RangeEnd)
		if start.Compare(end) > 0 {
			return fmt.Errorf("ipam.rangeStart %s is after ipam.rangeEnd %s", start, end)
		}
		return nil
	}
	if r.RangeStart != nil && r.RangeEnd != nil {
		if err := ordered(); err != nil {
			return r, err
		}
	}
	if err := r.Canonicalize(); err != nil {
		return r, fmt.Errorf("%s %s: %w", field, prefix, err)
	}
	// Again with the defaults filled in.
	return r, ordered()
}

// broadcast is the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	for i := range b {
		b[i] |= byte(host >> (8 * (3 - i)))
	}
	return netip.AddrFrom4(b)
}

// readPodCIDRFile reads the CIDR a node agent wrote. It opens without
// blocking and insists on a small regular file, so a path to a FIFO or a
// device cannot hang the runtime.
func readPodCIDRFile(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q is not an absolute path", path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %w", errNoPodCIDR, err)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	cidr := strings.TrimSpace(string(data))
	if cidr == "" {
		// An agent that writes in place leaves the file empty for a moment.
		return "", fmt.Errorf("%w: %s is empty", errNoPodCIDR, path)
	}
	return cidr, nil
}

// checkRoutes rejects routes ptp could not install: no destination, or a
// family other than the pod's.
func checkRoutes(routes []*types.Route, v4 bool) ([]*types.Route, error) {
	family := func(ip net.IP) string {
		if ip.To4() != nil {
			return "IPv4"
		}
		return "IPv6"
	}
	want := "IPv6"
	if v4 {
		want = "IPv4"
	}
	for i, rt := range routes {
		if rt == nil || rt.Dst.IP == nil {
			return nil, fmt.Errorf("ipam.routes[%d]: dst is required", i)
		}
		if family(rt.Dst.IP) != want {
			return nil, fmt.Errorf("ipam.routes[%d].dst: %s is not %s like the pod CIDR", i, rt.Dst.String(), want)
		}
		if rt.GW != nil && family(rt.GW) != want {
			return nil, fmt.Errorf("ipam.routes[%d].gw: %s is not %s like the pod CIDR", i, rt.GW, want)
		}
	}
	return routes, nil
}
