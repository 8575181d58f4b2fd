// Command aegis-cni is Aegis's CNI plugin. It runs chained after the
// primary plugin (azure-vnet, or ptp in tests), registers the pod with
// aegisd and attaches the datapath programs on the pod's host-side veth.
// Run by an operator, `aegis-cni install` and `aegis-cni uninstall` insert
// it into (or remove it from) the node's conflist.
package main

import (
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// Version is stamped at build time.
var Version = "dev"

func main() {
	if len(os.Args) > 1 && os.Getenv("CNI_COMMAND") == "" {
		switch os.Args[1] {
		case "install", "uninstall":
			if err := runInstall(os.Args[1], os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "aegis-cni %s: %v\n", os.Args[1], err)
				os.Exit(1)
			}
			return
		}
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"aegis-cni "+Version+": Aegis network policy and observability, chained after the primary CNI plugin\n"+
			"(operators: `aegis-cni install --help` inserts it into the node's conflist)")
}
