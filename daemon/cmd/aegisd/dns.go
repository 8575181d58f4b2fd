package main

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/agent"
	"github.com/aegis-cni/aegis/daemon/dnsproxy"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/observe"
)

// startDNSProxy opens the DNS proxy, restores what it learned before, and
// keeps the learned addresses expiring and persisted.
func startDNSProxy(ctx context.Context, o *options, a *agent.Agent, obs *observe.Observer, log *slog.Logger, errc chan<- error) error {
	maps := a.Maps()
	if err := dnsproxy.EnsureRouting(); err != nil {
		return err
	}
	existing, err := maps.ListFQDN()
	if err != nil {
		return err
	}
	cache, err := fqdn.NewCache(maps, fqdn.Options{MinTTL: o.fqdnMinTTL, MaxIPsPerName: o.fqdnMaxIPs,
		Path: filepath.Join(o.stateDir, "fqdn-cache.json")}, existing)
	if err != nil {
		return err
	}
	refuse := dns.RcodeRefused
	if o.dnsRefuse == "nxdomain" {
		refuse = dns.RcodeNameError
	}
	emit := func(ev observe.DNSEvent) { obs.Add(observe.DNSFlow(a, ev)) }
	p, err := dnsproxy.New(dnsproxy.Config{Port: uint16(o.dnsProxyPort), RefuseCode: refuse, UpstreamTimeout: o.dnsTimeout},
		maps, cache, emit, log)
	if err != nil {
		return err
	}
	a.SetDNSProxy(p, cache)
	if err := maps.SetProxyPorts(uint16(o.dnsProxyPort)); err != nil {
		return err
	}
	go func() {
		if err := p.Run(ctx); err != nil {
			errc <- err
		}
	}()
	go expireFQDN(ctx, maps, cache, log)
	log.Info("dns proxy listening", "port", o.dnsProxyPort)
	return nil
}

// expireFQDN removes learned addresses past their TTL, keeping those live
// connections still use, and persists the cache.
func expireFQDN(ctx context.Context, maps *bpf.Maps, cache *fqdn.Cache, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := cache.Save(); err != nil {
				log.Warn("fqdn cache", "err", err)
			}
			return
		case now := <-t.C:
			if cache.Expired(now) {
				live := liveAddrs(maps)
				if _, err := cache.Sweep(now, func(ip netip.Addr) bool { return live[ip] }); err != nil {
					log.Warn("fqdn cache sweep", "err", err)
				}
			}
			if err := cache.Save(); err != nil {
				log.Warn("fqdn cache", "err", err)
			}
		}
	}
}

// liveAddrs is every address in a conntrack entry that has not expired
// and is not closing.
func liveAddrs(maps *bpf.Maps) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	entries, err := maps.ListCT()
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !e.Closing { // ListCT skips expired entries
			out[e.Src.Addr()] = true
			out[e.Dst.Addr()] = true
		}
	}
	return out
}
