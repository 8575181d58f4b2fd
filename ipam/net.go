package main

import (
	"net"

	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
)

func ipNet(ip net.IP, r *allocator.Range) *net.IPNet {
	return &net.IPNet{IP: ip, Mask: r.Subnet.Mask}
}
