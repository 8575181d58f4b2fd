package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
)

const defaultDataDir = "/var/lib/cni/aegis-ipam"

// IPAMConfig is the "ipam" section.
type IPAMConfig struct {
	Type string `json:"type"`
	// PodCIDR is the node's pod range; PodCIDRFile names a file holding
	// it (how a node agent hands it over). One of them is required.
	PodCIDR     string         `json:"podCIDR,omitempty"`
	PodCIDRFile string         `json:"podCIDRFile,omitempty"`
	RangeStart  string         `json:"rangeStart,omitempty"`
	RangeEnd    string         `json:"rangeEnd,omitempty"`
	Gateway     string         `json:"gateway,omitempty"`
	Routes      []*types.Route `json:"routes,omitempty"`
	DataDir     string         `json:"dataDir,omitempty"`
}

// NetConf is the plugin configuration as the runtime passes it.
type NetConf struct {
	types.PluginConf
	IPAM             *IPAMConfig          `json:"ipam"`
	ValidAttachments []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
}

// config is the validated configuration.
type config struct {
	netName    string
	cniVersion string
	ipam       *IPAMConfig
	rangeSet   allocator.RangeSet
	valid      []types.GCAttachment
}

// parseConfig reads and validates the whole configuration up front.
func parseConfig(stdin []byte) (*config, error) {
	var nc NetConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if nc.CNIVersion == "" {
		return nil, fmt.Errorf("parse config: cniVersion is missing")
	}
	if ok, err := version.GreaterThanOrEqualTo(nc.CNIVersion, "0.3.0"); err != nil || !ok {
		return nil, fmt.Errorf("parse config: cniVersion %q is not supported (0.3.0 to 1.1.0)", nc.CNIVersion)
	}
	if nc.Name == "" {
		return nil, fmt.Errorf("parse config: name is missing")
	}
	if nc.IPAM == nil {
		return nil, fmt.Errorf("parse config: ipam section is missing")
	}
	ic := nc.IPAM
	cidr := strings.TrimSpace(ic.PodCIDR)
	if cidr == "" && ic.PodCIDRFile != "" {
		data, err := os.ReadFile(ic.PodCIDRFile)
		if err != nil {
			return nil, fmt.Errorf("parse config: ipam.podCIDRFile: %w", err)
		}
		cidr = strings.TrimSpace(string(data))
	}
	if cidr == "" {
		return nil, fmt.Errorf("parse config: ipam.podCIDR (or ipam.podCIDRFile) is required")
	}
	_, subnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("parse config: ipam.podCIDR: invalid CIDR %q", cidr)
	}
	r := allocator.Range{Subnet: types.IPNet(*subnet)}
	parseIP := func(field, s string) (net.IP, error) {
		if s == "" {
			return nil, nil
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("parse config: ipam.%s: invalid IP %q", field, s)
		}
		return ip, nil
	}
	if r.RangeStart, err = parseIP("rangeStart", ic.RangeStart); err != nil {
		return nil, err
	}
	if r.RangeEnd, err = parseIP("rangeEnd", ic.RangeEnd); err != nil {
		return nil, err
	}
	if r.Gateway, err = parseIP("gateway", ic.Gateway); err != nil {
		return nil, err
	}
	if err := r.Canonicalize(); err != nil {
		return nil, fmt.Errorf("parse config: ipam: %w", err)
	}
	for i, rt := range ic.Routes {
		if rt == nil || rt.Dst.IP == nil {
			return nil, fmt.Errorf("parse config: ipam.routes[%d]: dst is required", i)
		}
	}
	if ic.DataDir == "" {
		ic.DataDir = defaultDataDir
	}
	return &config{netName: nc.Name, cniVersion: nc.CNIVersion, ipam: ic, rangeSet: allocator.RangeSet{r}, valid: nc.ValidAttachments}, nil
}
