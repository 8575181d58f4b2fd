package agent

import (
	"strconv"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// DNSProxy is the part of the DNS proxy the agent drives: it hands it each
// compiled policy (DNS rules and toFQDNs rules).
type DNSProxy interface {
	SetPolicy(res *policy.Result)
}

// SetDNSProxy attaches the DNS proxy and the cache of what it learned.
// Set it before the source delivers policy, so no redirect precedes the
// rules.
func (a *Agent) SetDNSProxy(p DNSProxy, c *fqdn.Cache) {
	a.dnsProxy.Store(&p)
	a.fqdnCache.Store(c)
	a.mu.Lock()
	res := a.compiled
	a.mu.Unlock()
	if res != nil {
		p.SetPolicy(res)
	}
}

// FQDNCache implements the API's fqdn cache listing.
func (a *Agent) FQDNCache() ([]api.FQDNEntry, error) {
	c := a.fqdnCache.Load()
	if c == nil {
		return nil, nil
	}
	var out []api.FQDNEntry
	for _, l := range c.List() {
		e := api.FQDNEntry{Name: l.Name, IP: l.IP.String(), Identity: l.Local, Source: l.Source, Expires: l.Expires}
		for _, g := range l.Grants {
			e.Selectors = append(e.Selectors, g.Selector)
			e.Ports = append(e.Ports, portString(g.Proto, g.Port))
		}
		out = append(out, e)
	}
	return out, nil
}

// CleanFQDNCache implements the API's fqdn cache clean: it forgets what
// was learned (for one identity, or all with 0) and the access it gave.
func (a *Agent) CleanFQDNCache(identity uint32) (int, error) {
	c := a.fqdnCache.Load()
	if c == nil {
		return 0, nil
	}
	return c.Clean(identity)
}

func portString(proto uint8, port uint16) string {
	if proto == policy.ProtoAny {
		return "any"
	}
	if port == 0 {
		return ProtoName(proto)
	}
	return ProtoName(proto) + "/" + strconv.Itoa(int(port))
}
