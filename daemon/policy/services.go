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
					if e.Action == ActionRedirectDNS {
						action = ActionRedirectDNS
					}
				}
				if allowed {
					k := Key{Local: local, Remote: svc.Identity, Dir: Egress, Proto: sp.Proto, Port: sp.Port, PortPrefixLen: 16}
					ip.Entries[k] = Entry{Action: action, Cookie: cookie}
					if action == ActionRedirectDNS {
						r.dnsToService(local, svc.Identity, sp.Backends)
					}
				}
			}
		}
	}
}

// dnsToService lets the DNS rules that cover every backend of a service
// cover the service address too: the proxy sees the address the pod asked.
func (r *Result) dnsToService(local, svc uint32, backends []ServiceBackend) {
	rules := r.DNS[local]
	for i := range rules {
		d := &rules[i]
		if d.AnyRemote || slices.Contains(d.Remotes, svc) {
			continue
		}
		all := true
		for _, b := range backends {
			if !slices.Contains(d.Remotes, b.Identity) {
				all = false
				break
			}
		}
		if all {
			d.Remotes = append(slices.Clone(d.Remotes), svc)
			slices.Sort(d.Remotes)
		}
	}
}
