// Command aegis-ipam is an IPAM plugin for standalone nodes and tests: it
// allocates pod IPs from the node's overlay pod CIDR, on the host-local
// allocator and its crash-safe disk store. On AKS, azure-vnet takes its
// addresses from CNS instead.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// Version is stamped at build time.
var Version = "dev"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"aegis-ipam "+Version+": pod IPs from the node's pod CIDR")
}
