package policy

import "slices"

// Service is a ClusterIP service as the datapath sees it. Pods send to the
// service address; kube-proxy translates it only after Aegis has judged
// the packet, so the service address carries an identity of its own and
// its ports are judged by the pods behind them.
type Service struct {
	Identity uint32 // what the ipcache gives the service's cluster IPs
	Ports    []ServicePort
}

// ServicePort is one port of a service and where it leads.
type ServicePort struct {
	Proto    uint8
	Port     uint16
	Backends []ServiceBackend
}

// ServiceBackend is one endpoint behind a service port.
type ServiceBackend struct {
	Identity uint32
	Port     uint16 // the target port on the backend
}

// AddServices adds, for every local identity enforced for egress, an allow
// entry for each service port whose every backend the identity may reach
// on its target port. A port with a denied backend, or with none, stays
// denied: kube-proxy picks the backend after Aegis, so allowing the port
// would let a connection reach a pod policy denies. The entry carries the
// cookie of the rule that allows the first backend, so flows name it.
func (r *Result) AddServices(svcs []Service) {
	for local, ip := range r.Identities {
		if !ip.EgressEnforced {
			continue
		}
		for _, svc := range svcs {
			for _, sp := range svc.Ports {
				if len(sp.Backends) == 0 {
					continue
				}
				var cookie uint32
				action := ActionAllow
				allowed := true
				for i, b := range sp.Backends {
					e, _ := r.Lookup(local, b.Identity, Egress, sp.Proto, b.Port)
					if e.Action == ActionDeny {
						allowed = false
						break
					}
					if i == 0 {
						cookie = e.Cookie
					}
					// A backend the DNS proxy must see makes the service
					// port go through the proxy too.
					if e.Action == ActionRedirectDNS || e.Action == ActionRedirectL7 {
						action = e.Action
					}
				}
				if allowed {
					k := Key{Local: local, Remote: svc.Identity, Dir: Egress, Proto: sp.Proto, Port: sp.Port, PortPrefixLen: 16}
					ip.Entries[k] = Entry{Action: action, Cookie: cookie}
					if action == ActionRedirectDNS || action == ActionRedirectL7 {
						r.proxyToService(local, svc.Identity, sp.Backends)
					}
				}
			}
		}
	}
}

// proxyToService lets the DNS and HTTP rules that cover every backend of a
// service cover the service address too: the proxies see the address the
// pod asked.
func (r *Result) proxyToService(local, svc uint32, backends []ServiceBackend) {
	widen := func(any bool, remotes *[]uint32) {
		if any || slices.Contains(*remotes, svc) {
			return
		}
		for _, b := range backends {
			if !slices.Contains(*remotes, b.Identity) {
				return
			}
		}
		*remotes = append(slices.Clone(*remotes), svc)
		slices.Sort(*remotes)
	}
	for i := range r.DNS[local] {
		widen(r.DNS[local][i].AnyRemote, &r.DNS[local][i].Remotes)
	}
	for i := range r.HTTP[local] {
		widen(r.HTTP[local][i].AnyRemote, &r.HTTP[local][i].Remotes)
	}
}
