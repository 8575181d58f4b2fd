package l7proxy

import (
	"fmt"
	"os"
	"strings"
)

// earlyDemux is the node's TCP early demux switch (per network namespace:
// the calling process's).
const earlyDemux = "/proc/sys/net/ipv4/tcp_early_demux"

// DisableEarlyDemux turns off TCP early demux in the calling network
// namespace (the node's). The proxy's sockets for connections into a pod
// carry the pod's address, so early demux would attach a client's next
// packets to them while they cross the node on their way to the pod's
// veth, where the datapath bounces them to the proxy, and the kernel drops
// a forwarded packet that has a socket. Cilium met the same (its PR 8864)
// and the AWS VPC CNI offers the same switch; without it, routing costs one
// lookup more per packet for the node's own TCP sockets.
func DisableEarlyDemux() error {
	b, err := os.ReadFile(earlyDemux)
	if err != nil {
		return fmt.Errorf("http proxy: read %s: %w", earlyDemux, err)
	}
	if strings.TrimSpace(string(b)) == "0" {
		return nil
	}
	if err := os.WriteFile(earlyDemux, []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("http proxy: turn off tcp early demux: %w", err)
	}
	return nil
}

// rpFilterAll is the node-wide reverse path filter; the kernel applies the
// larger of it and an interface's own value.
const rpFilterAll = "/proc/sys/net/ipv4/conf/all/rp_filter"

// LoosenRPFilter makes a strict node-wide reverse path filter loose. A
// connection into a pod with ingress HTTP rules is bounced to the ingress
// of the pod's veth with the client's source address, which strict mode
// drops (the client is not routed through that veth); loose mode still
// drops sources the node has no route for. aegis-cni turns the filter off
// on each host veth it attaches to, as Cilium does on its pod interfaces.
func LoosenRPFilter() error {
	b, err := os.ReadFile(rpFilterAll)
	if err != nil {
		return fmt.Errorf("http proxy: read %s: %w", rpFilterAll, err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		return nil
	}
	if err := os.WriteFile(rpFilterAll, []byte("2\n"), 0o644); err != nil {
		return fmt.Errorf("http proxy: make rp_filter loose: %w", err)
	}
	return nil
}
