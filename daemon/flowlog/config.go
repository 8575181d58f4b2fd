// Package flowlog writes flow logs: the flows that ContainerNetworkLog
// objects (acn.azure.com/v1alpha1) select, one Hubble export record per
// line, to a file rotated by size, as ACNS does on AKS nodes.
package flowlog

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/cilium/api/v1/flow"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
)

// spec is a ContainerNetworkLog's spec.
type spec struct {
	IncludeFilters []includeFilter `json:"includefilters"`
}

type includeFilter struct {
	Name     string    `json:"name"`
	From     *endpoint `json:"from,omitempty"`
	To       *endpoint `json:"to,omitempty"`
	Protocol []string  `json:"protocol,omitempty"`
	Verdict  []string  `json:"verdict,omitempty"`
}

type endpoint struct {
	NamespacedPod []string              `json:"namespacedPod,omitempty"`
	LabelSelector *metav1.LabelSelector `json:"labelSelector,omitempty"`
	IP            []string              `json:"ip,omitempty"`
}

// Status of one ContainerNetworkLog, as ACNS reports it.
type Status struct {
	Name   string `json:"name"`
	State  string `json:"state"` // CONFIGURED or FAILED
	Reason string `json:"reason,omitempty"`
}

// selector is one compiled ContainerNetworkLog: a flow is logged when any
// of its include filters matches.
type selector struct {
	name    string
	filters []func(*flow.Flow) bool
}

func (s selector) match(f *flow.Flow) bool {
	return slices.ContainsFunc(s.filters, func(m func(*flow.Flow) bool) bool { return m(f) })
}

// compile parses and validates one ContainerNetworkLog. Within a filter,
// from, to, protocol and verdict must all match; within from or to, a
// flow end matches any of the listed pods, the label selector, or the
// listed addresses.
func compile(obj *unstructured.Unstructured) (selector, error) {
	sel := selector{name: obj.GetName()}
	raw, ok := obj.Object["spec"]
	if !ok {
		return sel, fmt.Errorf("spec is required")
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return sel, fmt.Errorf("spec: %w", err)
	}
	var sp spec
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sp); err != nil {
		return sel, fmt.Errorf("spec: %w", err)
	}
	if len(sp.IncludeFilters) == 0 {
		return sel, fmt.Errorf("spec.includefilters: at least one filter is required")
	}
	for i, inc := range sp.IncludeFilters {
		field := fmt.Sprintf("spec.includefilters[%d]", i)
		var parts []func(*flow.Flow) bool
		for _, side := range []struct {
			ep   *endpoint
			name string
			get  func(*flow.Flow) (*flow.Endpoint, string)
		}{
			{inc.From, "from", func(f *flow.Flow) (*flow.Endpoint, string) { return f.GetSource(), f.GetIP().GetSource() }},
			{inc.To, "to", func(f *flow.Flow) (*flow.Endpoint, string) { return f.GetDestination(), f.GetIP().GetDestination() }},
		} {
			if side.ep == nil {
				continue
			}
			m, err := endpointMatcher(side.ep, side.get)
			if err != nil {
				return sel, fmt.Errorf("%s.%s: %w", field, side.name, err)
			}
			parts = append(parts, m)
		}
		if len(inc.Protocol) > 0 {
			for j, p := range inc.Protocol {
				switch strings.ToLower(p) {
				case "tcp", "udp", "dns":
				default:
					return sel, fmt.Errorf("%s.protocol[%d]: %q is not tcp, udp or dns", field, j, p)
				}
			}
			protos := inc.Protocol
			parts = append(parts, func(f *flow.Flow) bool {
				return slices.ContainsFunc(protos, func(p string) bool { return protoMatches(f, strings.ToLower(p)) })
			})
		}
		if len(inc.Verdict) > 0 {
			var verdicts []flow.Verdict
			for j, v := range inc.Verdict {
				switch strings.ToLower(v) {
				case "forwarded":
					verdicts = append(verdicts, flow.Verdict_FORWARDED)
				case "dropped":
					verdicts = append(verdicts, flow.Verdict_DROPPED)
				default:
					return sel, fmt.Errorf("%s.verdict[%d]: %q is not forwarded or dropped", field, j, v)
				}
			}
			parts = append(parts, func(f *flow.Flow) bool { return slices.Contains(verdicts, f.GetVerdict()) })
		}
		sel.filters = append(sel.filters, func(f *flow.Flow) bool {
			for _, p := range parts {
				if !p(f) {
					return false
				}
			}
			return true
		})
	}
	return sel, nil
}

func endpointMatcher(ep *endpoint, get func(*flow.Flow) (*flow.Endpoint, string)) (func(*flow.Flow) bool, error) {
	var any []func(*flow.Endpoint, netip.Addr) bool
	for i, np := range ep.NamespacedPod {
		ns, prefix, ok := strings.Cut(np, "/")
		if !ok || ns == "" {
			return nil, fmt.Errorf("namespacedPod[%d]: %q is not namespace/pod-prefix", i, np)
		}
		any = append(any, func(e *flow.Endpoint, _ netip.Addr) bool {
			return e.GetNamespace() == ns && strings.HasPrefix(e.GetPodName(), prefix) && e.GetPodName() != ""
		})
	}
	if ep.LabelSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(ep.LabelSelector)
		if err != nil {
			return nil, fmt.Errorf("labelSelector: %w", err)
		}
		any = append(any, func(e *flow.Endpoint, _ netip.Addr) bool { return e.GetPodName() != "" && s.Matches(podLabels(e)) })
	}
	for i, s := range ep.IP {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("ip[%d]: %q is not an IP or CIDR", i, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		any = append(any, func(_ *flow.Endpoint, a netip.Addr) bool { return p.Contains(a) })
	}
	if len(any) == 0 {
		return nil, fmt.Errorf("give namespacedPod, labelSelector or ip")
	}
	return func(f *flow.Flow) bool {
		e, ip := get(f)
		a, _ := netip.ParseAddr(ip)
		return slices.ContainsFunc(any, func(m func(*flow.Endpoint, netip.Addr) bool) bool { return m(e, a) })
	}, nil
}

// podLabels turns "k8s:app=web" labels into a set for pod selectors.
func podLabels(e *flow.Endpoint) labels.Set {
	set := labels.Set{}
	for _, l := range e.GetLabels() {
		if rest, ok := strings.CutPrefix(l, "k8s:"); ok {
			k, v, _ := strings.Cut(rest, "=")
			set[k] = v
		}
	}
	return set
}

func protoMatches(f *flow.Flow, p string) bool {
	switch p {
	case "tcp":
		return f.GetL4().GetTCP() != nil
	case "udp":
		return f.GetL4().GetUDP() != nil
	case "dns":
		return f.GetL7().GetDns() != nil
	}
	return false
}
