package main

import (
	"errors"
	"fmt"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// podLink is what the plugin learns about the pod's interface.
type podLink struct {
	hostIfindex int
	hostIfName  string
	ips         []netip.Addr
}

var errNoVeth = errors.New("no host-side veth found for the pod interface")

// findPodLink finds the pod's host-side veth and addresses. The host side
// comes from prevResult when the primary plugin lists it (ptp, bridge);
// otherwise (azure-vnet in transparent mode lists only {"name": "eth0"})
// from the peer index of the pod's interface inside its netns. Either way
// the answer is checked against the kernel: the host link must be a veth
// whose peer is the pod's interface.
func findPodLink(netnsPath, ifName string, prev *current.Result) (*podLink, error) {
	podNS, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer podNS.Close()

	var peerIndex int
	var addrs []netip.Addr
	err = podNS.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("find %s in the pod netns: %w", ifName, err)
		}
		if _, ok := l.(*netlink.Veth); !ok {
			return fmt.Errorf("%s in the pod netns is a %s, not a veth: %w", ifName, l.Type(), errNoVeth)
		}
		peerIndex = l.Attrs().ParentIndex
		list, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", ifName, err)
		}
		for _, a := range list {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
				addrs = append(addrs, ip.Unmap())
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	var host netlink.Link
	for _, iface := range prev.Interfaces {
		if iface.Sandbox != "" || iface.Name == "" {
			continue
		}
		if l, err := netlink.LinkByName(iface.Name); err == nil && l.Attrs().Index == peerIndex {
			host = l
			break
		}
	}
	if host == nil {
		if peerIndex == 0 {
			return nil, fmt.Errorf("%s has no peer index: %w", ifName, errNoVeth)
		}
		host, err = netlink.LinkByIndex(peerIndex)
		if err != nil {
			return nil, fmt.Errorf("find peer %d of %s in this namespace: %w", peerIndex, ifName, errNoVeth)
		}
	}
	if _, ok := host.(*netlink.Veth); !ok {
		return nil, fmt.Errorf("host link %s is a %s: %w", host.Attrs().Name, host.Type(), errNoVeth)
	}

	pl := &podLink{hostIfindex: host.Attrs().Index, hostIfName: host.Attrs().Name}
	// prevResult's addresses are the primary plugin's word; the kernel's
	// are the fallback for sparse results.
	for _, ipc := range prev.IPs {
		if ip, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			pl.ips = append(pl.ips, ip.Unmap())
		}
	}
	if len(pl.ips) == 0 {
		pl.ips = addrs
	}
	return pl, nil
}
