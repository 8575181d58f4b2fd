package agent

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// DNSProxy is the DNS proxy process as the agent drives it: it hands it
// each compiled policy (DNS rules and toFQDNs rules), and lists or cleans
// what it learned.
type DNSProxy interface {
	SetPolicy(res *policy.Result) error
	FQDNCache(ctx context.Context) ([]fqdn.Learned, error)
	CleanFQDNCache(ctx context.Context, identity uint32) (int, error)
}

// SetDNSProxy attaches the DNS proxy. Set it before the source delivers
// policy, so no redirect precedes the rules.
func (a *Agent) SetDNSProxy(p DNSProxy) error {
	a.dnsProxy.Store(&p)
	a.mu.Lock()
	res := a.compiled
	a.mu.Unlock()
	if res != nil {
		return p.SetPolicy(res)
	}
	return nil
}

// FQDNCache implements the API's fqdn cache listing.
func (a *Agent) FQDNCache() ([]api.FQDNEntry, error) {
	p := a.dnsProxy.Load()
	if p == nil {
		return nil, errors.New("the DNS proxy is disabled (--dns-proxy-port 0)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	learned, err := (*p).FQDNCache(ctx)
	if err != nil {
		return nil, err
	}
	var out []api.FQDNEntry
	for _, l := range learned {
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
	p := a.dnsProxy.Load()
	if p == nil {
		return 0, errors.New("the DNS proxy is disabled (--dns-proxy-port 0)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return (*p).CleanFQDNCache(ctx, identity)
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
