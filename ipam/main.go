// Command aegis-ipam is the IPAM plugin for standalone nodes and tests: it
// hands out pod IPs from the node's overlay pod CIDR, on host-local's
// allocator and its crash-safe disk store. On AKS, azure-vnet takes its
// addresses from CNS instead and aegis-ipam is not used.
package main

import "github.com/containernetworking/cni/pkg/skel"

// Version is stamped at build time.
var Version = "dev"

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, supportedVersions, "aegis-ipam "+Version+": pod IPs from the node's pod CIDR")
}
