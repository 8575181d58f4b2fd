package agent

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// RegenStatusFrom records how a regeneration went.
func RegenStatusFrom(start time.Time, err error) api.RegenStatus {
	st := api.RegenStatus{At: start.UTC(), Duration: time.Since(start)}
	if err != nil {
		st.Error = err.Error()
	}
	return st
}

// Status reports health for `aegis status` and the plugin's STATUS.
func (a *Agent) Status() api.Status {
	a.mu.Lock()
	st := api.Status{
		// Ready when ADD would be: the first snapshot compiled, not
		// only received.
		Ready:          a.compiled != nil,
		Version:        Version,
		NodeName:       a.cfg.NodeName,
		Started:        a.started,
		BPFRoot:        a.cfg.BPFRoot,
		Identities:     len(a.identities),
		Source:         a.source,
		LastRegen:      a.lastRegen,
		IPCacheEntries: a.ipcacheSize,
	}
	if a.compiled != nil {
		for _, ip := range a.compiled.Identities {
			st.PolicyEntries += len(ip.Entries)
		}
	}
	a.mu.Unlock()
	if !st.Ready {
		st.Reason = "waiting for the first snapshot of the policy source"
	}
	st.Endpoints = len(a.eps.List())
	st.FlowLogs = a.flowLogStatus()
	st.Flows = a.flowStatus()
	if rev, err := a.dp.PolicyRevision(); err == nil {
		st.PolicyRevision = rev
	}
	return st
}

func labelStrings(id policy.Identity) []string {
	switch {
	case id.Reserved != "":
		return []string{"reserved:" + id.Reserved}
	case id.CIDR.IsValid():
		return []string{"cidr:" + id.CIDR.String()}
	}
	out := []string{"k8s:io.kubernetes.pod.namespace=" + id.Namespace}
	for _, k := range slices.Sorted(maps.Keys(id.Labels)) {
		out = append(out, "k8s:"+k+"="+id.Labels[k])
	}
	for _, k := range slices.Sorted(maps.Keys(id.NamespaceLabels)) {
		out = append(out, "k8s:io.cilium.k8s.namespace.labels."+k+"="+id.NamespaceLabels[k])
	}
	return out
}

func kindOf(id policy.Identity) string {
	switch {
	case id.Reserved != "":
		return "reserved"
	case id.CIDR.IsValid():
		return "cidr"
	}
	return "pod"
}

func (a *Agent) identityByID() map[uint32]policy.Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[uint32]policy.Identity{}
	for _, id := range a.identities {
		out[id.ID] = id
	}
	return out
}

// Endpoints lists the endpoints with their labels and enforcement.
func (a *Agent) Endpoints() []api.Endpoint {
	ids := a.identityByID()
	a.mu.Lock()
	compiled := a.compiled
	a.mu.Unlock()
	out := []api.Endpoint{}
	for _, ep := range a.eps.List() {
		e := api.Endpoint{
			ID: ep.ID, ContainerID: ep.ContainerID, IfName: ep.IfName, HostIfName: ep.HostIfName,
			HostIfindex: ep.HostIfindex, IPs: ep.IPs, PodNamespace: ep.PodNamespace, PodName: ep.PodName,
			Identity: ep.Identity, Labels: labelStrings(ids[ep.Identity]),
		}
		if compiled != nil {
			if ip := compiled.Identities[ep.Identity]; ip != nil {
				e.IngressEnforced, e.EgressEnforced = ip.IngressEnforced, ip.EgressEnforced
			}
		}
		out = append(out, e)
	}
	return out
}

// Identities lists every identity the node knows.
func (a *Agent) Identities() []api.Identity {
	uses := map[uint32]int{}
	for _, ep := range a.eps.List() {
		uses[ep.Identity]++
	}
	a.mu.Lock()
	all := slices.Clone(a.identities)
	a.mu.Unlock()
	out := make([]api.Identity, 0, len(all))
	for _, id := range all {
		out = append(out, api.Identity{ID: id.ID, Kind: kindOf(id), Labels: labelStrings(id), Endpoints: uses[id.ID]})
	}
	return out
}

// Policy shows the compiled policy of identities selected by q:
// identity=N, endpoint=<container ID>, pod=<namespace>/<name>, or none for
// every local identity.
func (a *Agent) Policy(q url.Values) ([]api.Policy, error) {
	a.mu.Lock()
	compiled := a.compiled
	a.mu.Unlock()
	if compiled == nil {
		return nil, errNotReady("no policy compiled yet")
	}
	var want []uint32
	switch {
	case q.Get("identity") != "":
		n, err := strconv.ParseUint(q.Get("identity"), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: identity %q is not a number", api.ErrBadRequest, q.Get("identity"))
		}
		want = []uint32{uint32(n)}
	case q.Get("endpoint") != "" || q.Get("pod") != "":
		for _, ep := range a.eps.List() {
			if ep.ContainerID == q.Get("endpoint") || ep.PodNamespace+"/"+ep.PodName == q.Get("pod") {
				want = append(want, ep.Identity)
			}
		}
		if len(want) == 0 {
			return nil, fmt.Errorf("%w: no endpoint %s%s", api.ErrNotFound, q.Get("endpoint"), q.Get("pod"))
		}
	default:
		want = slices.Sorted(maps.Keys(compiled.Identities))
	}
	ids := a.identityByID()
	var out []api.Policy
	for _, id := range slices.Compact(want) {
		ip := compiled.Identities[id]
		if ip == nil {
			return nil, fmt.Errorf("%w: identity %d is not local to this node", api.ErrNotFound, id)
		}
		p := api.Policy{Identity: id, Labels: labelStrings(ids[id]), IngressEnforced: ip.IngressEnforced, EgressEnforced: ip.EgressEnforced}
		cookies := map[uint32]bool{}
		keys := slices.SortedFunc(maps.Keys(ip.Entries), compareKeys)
		for _, k := range keys {
			e := ip.Entries[k]
			p.Entries = append(p.Entries, api.PolicyEntry{
				Remote: k.Remote, Direction: k.Dir.String(), Proto: ProtoName(k.Proto), Ports: PortsString(k.Port, k.PortPrefixLen),
				Action: e.Action.String(), Cookie: e.Cookie, Rule: RuleName(compiled.Rules[e.Cookie]),
			})
			cookies[e.Cookie] = true
		}
		for _, c := range slices.Sorted(maps.Keys(cookies)) {
			r := compiled.Rules[c]
			p.Rules = append(p.Rules, api.Rule{Cookie: c, Kind: r.Kind, Namespace: r.Namespace, Name: r.Name, Direction: r.Dir.String(), Index: r.Index, Path: r.Path})
		}
		out = append(out, p)
	}
	return out, nil
}

func compareKeys(x, y policy.Key) int {
	for _, d := range []int{int(x.Dir) - int(y.Dir), int(x.Remote) - int(y.Remote), int(x.Proto) - int(y.Proto), int(x.Port) - int(y.Port), int(x.PortPrefixLen) - int(y.PortPrefixLen)} {
		if d != 0 {
			return d
		}
	}
	return 0
}

// RuleName is how a rule is named in output: Kind namespace/name, and for
// a Cilium policy the rule's field path ("spec.ingressDeny[0]").
func RuleName(r policy.RuleRef) string {
	if r.Name == "" {
		return ""
	}
	name := r.Kind + " " + r.Name
	if r.Namespace != "" {
		name = r.Kind + " " + r.Namespace + "/" + r.Name
	}
	if r.Path != "" {
		name += " " + r.Path
	}
	return name
}

// ProtoName names an IP protocol number.
func ProtoName(p uint8) string {
	switch p {
	case policy.ProtoAny:
		return "any"
	case policy.ProtoTCP:
		return "TCP"
	case policy.ProtoUDP:
		return "UDP"
	case policy.ProtoSCTP:
		return "SCTP"
	case policy.ProtoICMP:
		return "ICMP"
	}
	return strconv.Itoa(int(p))
}

// PortsString shows a port prefix: "any", "80", or "8080-8087".
func PortsString(port uint16, prefixLen uint8) string {
	if prefixLen == 0 {
		return "any"
	}
	if prefixLen >= 16 {
		return strconv.Itoa(int(port))
	}
	last := uint32(port) | (1<<(16-prefixLen) - 1)
	return fmt.Sprintf("%d-%d", port, last)
}
