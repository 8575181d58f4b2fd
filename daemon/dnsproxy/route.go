package dnsproxy

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/aegis-cni/aegis/daemon/policy"
)

// Policy routing that delivers redirected packets locally: the datapath
// marks them (PROXY_MARK in bpf/src/proxy.h) and assigns them to a proxy
// socket; without a local route the node would forward them to their
// original destination instead.
const (
	proxyMark     = 0x0a00
	proxyMarkMask = 0x0f00
	proxyTable    = 2005
	proxyRulePref = 9
)

// NeedsRouting says whether res redirects anything to the proxies. The
// rule is installed only then: any rule of its own makes the node's every
// route lookup walk the rule list rather than the fast path (about 1% of
// pod-to-pod request/response here), a cost for clusters without DNS or
// HTTP rules to pay for nothing.
func NeedsRouting(res *policy.Result) bool {
	return res != nil && (len(res.DNS) > 0 || len(res.HTTP) > 0 || len(res.HTTPIngress) > 0)
}

// EnsureRouting installs the rule and route in the calling network
// namespace (the node's), if they are not there yet. Once installed they
// stay: connections redirected under a policy may outlive it.
func EnsureRouting() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("dns proxy routing: %w", err)
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	route := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: all, Table: proxyTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("dns proxy routing: local route in table %d: %w", proxyTable, err)
	}
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("dns proxy routing: list rules: %w", err)
	}
	for _, r := range rules {
		if r.Table == proxyTable && r.Mark == proxyMark {
			return nil
		}
	}
	rule := netlink.NewRule()
	rule.Family = netlink.FAMILY_V4
	rule.Mark = proxyMark
	mask := uint32(proxyMarkMask)
	rule.Mask = &mask
	rule.Table = proxyTable
	rule.Priority = proxyRulePref
	if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("dns proxy routing: fwmark rule: %w", err)
	}
	return nil
}
