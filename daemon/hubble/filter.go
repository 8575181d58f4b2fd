// Package hubble serves Hubble's Observer gRPC API from aegisd's flows, so
// the stock hubble CLI, hubble-relay and Hubble UI work against a node.
package hubble

import (
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/cilium/api/v1/flow"
	"k8s.io/apimachinery/pkg/labels"
)

// filter is one compiled FlowFilter: every set field must match (AND), any
// value of a field may (OR), as in Hubble.
type filter []func(*flow.Flow) bool

func (f filter) match(fl *flow.Flow) bool {
	for _, m := range f {
		if !m(fl) {
			return false
		}
	}
	return true
}

// filters is a whitelist or blacklist: any filter matching counts.
type filters []filter

func (fs filters) any(fl *flow.Flow) bool {
	for _, f := range fs {
		if f.match(fl) {
			return true
		}
	}
	return false
}

// compileFilters compiles FlowFilters; a field Aegis cannot evaluate is an
// error naming it, never silently ignored.
func compileFilters(in []*flow.FlowFilter) (filters, error) {
	var out filters
	for i, ff := range in {
		f, err := compileFilter(ff)
		if err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, err)
		}
		out = append(out, f)
	}
	return out, nil
}

func compileFilter(ff *flow.FlowFilter) (filter, error) {
	var f filter
	add := func(m func(*flow.Flow) bool) { f = append(f, m) }
	if v := ff.GetSourcePod(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return podMatches(fl.GetSource(), v) })
	}
	if v := ff.GetDestinationPod(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return podMatches(fl.GetDestination(), v) })
	}
	for _, side := range []struct {
		vals []string
		get  func(*flow.Flow) string
		name string
	}{{ff.GetSourceIp(), func(fl *flow.Flow) string { return fl.GetIP().GetSource() }, "source_ip"},
		{ff.GetDestinationIp(), func(fl *flow.Flow) string { return fl.GetIP().GetDestination() }, "destination_ip"}} {
		if len(side.vals) == 0 {
			continue
		}
		var prefixes []netip.Prefix
		for _, s := range side.vals {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, fmt.Errorf("%s %q: not an IP or CIDR", side.name, s)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			prefixes = append(prefixes, p)
		}
		get := side.get
		add(func(fl *flow.Flow) bool {
			a, err := netip.ParseAddr(get(fl))
			return err == nil && slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
		})
	}
	for _, side := range []struct {
		vals []string
		get  func(*flow.Flow) *flow.Endpoint
		name string
	}{{ff.GetSourceLabel(), (*flow.Flow).GetSource, "source_label"}, {ff.GetDestinationLabel(), (*flow.Flow).GetDestination, "destination_label"}} {
		if len(side.vals) == 0 {
			continue
		}
		var sels []labels.Selector
		for _, s := range side.vals {
			sel, err := labels.Parse(sourcePrefixes.Replace(s))
			if err != nil {
				return nil, fmt.Errorf("%s %q: %v", side.name, s, err)
			}
			sels = append(sels, sel)
		}
		get := side.get
		add(func(fl *flow.Flow) bool {
			set := labelSet(get(fl).GetLabels())
			return slices.ContainsFunc(sels, func(s labels.Selector) bool { return s.Matches(set) })
		})
	}
	if v := ff.GetVerdict(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetVerdict()) })
	}
	if v := ff.GetTrafficDirection(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetTrafficDirection()) })
	}
	if v := ff.GetDropReasonDesc(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetDropReasonDesc()) })
	}
	if v := ff.GetReply(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetIsReply().GetValue()) })
	}
	if v := ff.GetSourceIdentity(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetSource().GetIdentity()) })
	}
	if v := ff.GetDestinationIdentity(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetDestination().GetIdentity()) })
	}
	if v := ff.GetNodeName(); len(v) > 0 {
		add(func(fl *flow.Flow) bool {
			return slices.ContainsFunc(v, func(p string) bool { return strings.HasPrefix(fl.GetNodeName(), strings.TrimSuffix(p, "*")) })
		})
	}
	if v := ff.GetEventType(); len(v) > 0 {
		add(func(fl *flow.Flow) bool {
			return slices.ContainsFunc(v, func(e *flow.EventTypeFilter) bool {
				return e.GetType() == fl.GetEventType().GetType() && (!e.GetMatchSubType() || e.GetSubType() == fl.GetEventType().GetSubType())
			})
		})
	}
	if v := ff.GetProtocol(); len(v) > 0 {
		for _, p := range v {
			switch strings.ToLower(p) {
			case "tcp", "udp", "sctp", "icmp", "icmpv4", "http", "dns":
			default:
				return nil, fmt.Errorf("protocol %q: want tcp, udp, sctp, icmpv4, dns or http", p)
			}
		}
		add(func(fl *flow.Flow) bool {
			return slices.ContainsFunc(v, func(p string) bool {
				return strings.EqualFold(protocolOf(fl), strings.TrimSuffix(strings.ToLower(p), "v4"))
			})
		})
	}
	for _, side := range []struct {
		vals []string
		src  bool
		name string
	}{{ff.GetSourcePort(), true, "source_port"}, {ff.GetDestinationPort(), false, "destination_port"}} {
		if len(side.vals) == 0 {
			continue
		}
		var ports []uint32
		for _, s := range side.vals {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("%s %q: not a port", side.name, s)
			}
			ports = append(ports, uint32(n))
		}
		src := side.src
		add(func(fl *flow.Flow) bool {
			sp, dp := portsOf(fl)
			if src {
				return slices.Contains(ports, sp)
			}
			return slices.Contains(ports, dp)
		})
	}
	if v := ff.GetTcpFlags(); len(v) > 0 {
		add(func(fl *flow.Flow) bool {
			got := fl.GetL4().GetTCP().GetFlags()
			return got != nil && slices.ContainsFunc(v, func(w *flow.TCPFlags) bool {
				return (!w.GetSYN() || got.GetSYN()) && (!w.GetACK() || got.GetACK()) && (!w.GetFIN() || got.GetFIN()) &&
					(!w.GetRST() || got.GetRST()) && (!w.GetPSH() || got.GetPSH()) && (!w.GetURG() || got.GetURG())
			})
		})
	}
	if v := ff.GetIpVersion(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return slices.Contains(v, fl.GetIP().GetIpVersion()) })
	}
	// L7: DNS queries and HTTP requests from the proxies. Patterns are
	// RE2, as in Hubble.
	regexps := func(name string, exprs []string) ([]*regexp.Regexp, error) {
		var out []*regexp.Regexp
		for _, e := range exprs {
			re, err := regexp.Compile(e)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", name, e, err)
			}
			out = append(out, re)
		}
		return out, nil
	}
	anyMatch := func(res []*regexp.Regexp, s string) bool {
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(s) })
	}
	if v := ff.GetDnsQuery(); len(v) > 0 {
		res, err := regexps("dns_query", v)
		if err != nil {
			return nil, err
		}
		add(func(fl *flow.Flow) bool { d := fl.GetL7().GetDns(); return d != nil && anyMatch(res, d.GetQuery()) })
	}
	if v := ff.GetHttpMethod(); len(v) > 0 {
		add(func(fl *flow.Flow) bool {
			h := fl.GetL7().GetHttp()
			return h != nil && slices.ContainsFunc(v, func(m string) bool { return strings.EqualFold(m, h.GetMethod()) })
		})
	}
	for _, f := range []struct {
		name  string
		exprs []string
		get   func(*flow.HTTP) string
	}{{"http_path", ff.GetHttpPath(), func(h *flow.HTTP) string {
		if u, err := url.Parse(h.GetUrl()); err == nil {
			return u.Path
		}
		return ""
	}}, {"http_url", ff.GetHttpUrl(), (*flow.HTTP).GetUrl}} {
		if len(f.exprs) == 0 {
			continue
		}
		res, err := regexps(f.name, f.exprs)
		if err != nil {
			return nil, err
		}
		get := f.get
		add(func(fl *flow.Flow) bool { h := fl.GetL7().GetHttp(); return h != nil && anyMatch(res, get(h)) })
	}
	if v := ff.GetHttpStatusCode(); len(v) > 0 {
		for _, s := range v {
			if strings.Trim(strings.TrimSuffix(s, "+"), "0123456789") != "" || len(s) == 0 || len(s) > 3 {
				return nil, fmt.Errorf("http_status_code %q: want a code (200) or a prefix (4+)", s)
			}
		}
		add(func(fl *flow.Flow) bool {
			h := fl.GetL7().GetHttp()
			if h == nil || h.GetCode() == 0 {
				return false
			}
			code := strconv.Itoa(int(h.GetCode()))
			return slices.ContainsFunc(v, func(s string) bool {
				if p, ok := strings.CutSuffix(s, "+"); ok {
					return strings.HasPrefix(code, p)
				}
				return code == s
			})
		})
	}
	for _, side := range []struct {
		pats []string
		get  func(*flow.Flow) []string
		name string
	}{{ff.GetSourceFqdn(), (*flow.Flow).GetSourceNames, "source_fqdn"},
		{ff.GetDestinationFqdn(), (*flow.Flow).GetDestinationNames, "destination_fqdn"}} {
		if len(side.pats) == 0 {
			continue
		}
		res, err := fqdnPatterns(side.pats)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", side.name, err)
		}
		get := side.get
		add(func(fl *flow.Flow) bool {
			return slices.ContainsFunc(get(fl), func(name string) bool {
				return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(name) })
			})
		})
	}
	if v := ff.GetSourceWorkload(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return workloadMatches(fl.GetSource().GetWorkloads(), v) })
	}
	if v := ff.GetDestinationWorkload(); len(v) > 0 {
		add(func(fl *flow.Flow) bool { return workloadMatches(fl.GetDestination().GetWorkloads(), v) })
	}
	// Fields with no data yet (services, headers) select nothing rather
	// than everything.
	if len(ff.GetHttpHeader())+len(ff.GetSourceService())+len(ff.GetDestinationService()) > 0 {
		add(func(*flow.Flow) bool { return false })
	}
	for name, n := range map[string]int{
		"uuid": len(ff.GetUuid()), "source_ip_xlated": len(ff.GetSourceIpXlated()),
		"interface": len(ff.GetInterface()), "node_labels": len(ff.GetNodeLabels()),
		"source_cluster_name": len(ff.GetSourceClusterName()), "destination_cluster_name": len(ff.GetDestinationClusterName()),
		"trace_id": len(ff.GetTraceId()), "ip_trace_id": len(ff.GetIpTraceId()), "encrypted": len(ff.GetEncrypted()),
	} {
		if n > 0 {
			return nil, fmt.Errorf("filter field %s is not supported by aegisd", name)
		}
	}
	return f, nil
}

// podMatches applies Hubble's pod filter: "ns/prefix" is a pod of ns whose
// name starts with prefix ("ns/" every pod of ns); "prefix" any namespace.
func podMatches(e *flow.Endpoint, want []string) bool {
	if e.GetPodName() == "" {
		return false
	}
	return slices.ContainsFunc(want, func(w string) bool {
		ns, prefix, ok := strings.Cut(w, "/")
		if !ok {
			return strings.HasPrefix(e.GetPodName(), w)
		}
		return e.GetNamespace() == ns && strings.HasPrefix(e.GetPodName(), prefix)
	})
}

// sourcePrefixes rewrites Cilium's label sources ("k8s:app") into a form
// Kubernetes' selector parser accepts ("k8s.app"); "any:" means no source.
var sourcePrefixes = strings.NewReplacer("k8s:", "k8s.", "reserved:", "reserved.", "cidr:", "cidr.", "container:", "container.", "any:", "")

// labelSet exposes "k8s:app=web" both as "k8s.app" and "app", so
// selectors written either way match.
func labelSet(ls []string) labels.Set {
	set := labels.Set{}
	for _, l := range ls {
		k, v, _ := strings.Cut(l, "=")
		set[sourcePrefixes.Replace(k)] = v
		if _, bare, ok := strings.Cut(k, ":"); ok {
			set[bare] = v
		}
	}
	return set
}

func protocolOf(fl *flow.Flow) string {
	switch fl.GetL4().GetProtocol().(type) {
	case *flow.Layer4_TCP:
		return "tcp"
	case *flow.Layer4_UDP:
		return "udp"
	case *flow.Layer4_SCTP:
		return "sctp"
	case *flow.Layer4_ICMPv4:
		return "icmp"
	}
	return ""
}

func portsOf(fl *flow.Flow) (uint32, uint32) {
	switch l := fl.GetL4().GetProtocol().(type) {
	case *flow.Layer4_TCP:
		return l.TCP.GetSourcePort(), l.TCP.GetDestinationPort()
	case *flow.Layer4_UDP:
		return l.UDP.GetSourcePort(), l.UDP.GetDestinationPort()
	case *flow.Layer4_SCTP:
		return l.SCTP.GetSourcePort(), l.SCTP.GetDestinationPort()
	}
	return 0, 0
}

// fqdnValid is what Hubble accepts in an FQDN filter: letters, digits,
// '-', '_', '.' and the wildcard '*'.
var fqdnValid = regexp.MustCompile(`^[-a-zA-Z0-9_.*]+$`)

// fqdnPatterns compiles FQDN filters as Hubble reads them: case-folded,
// a trailing dot dropped, '*' standing for any run of name characters
// (dots included), the whole name matched.
func fqdnPatterns(pats []string) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, p := range pats {
		p = strings.TrimSuffix(strings.TrimSpace(strings.ToLower(p)), ".")
		if !fqdnValid.MatchString(p) {
			return nil, fmt.Errorf("invalid FQDN pattern %q: only letters, digits, '-', '_', '.' and '*' are allowed", p)
		}
		p = strings.ReplaceAll(p, ".", "[.]")
		p = strings.ReplaceAll(p, "*", "[-a-zA-Z0-9_.]*")
		re, err := regexp.Compile("^" + p + "$")
		if err != nil {
			return nil, fmt.Errorf("invalid FQDN pattern %q: %w", p, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// workloadMatches: an endpoint's workload matches a filter when every
// field the filter sets is equal (Hubble's workload filter).
func workloadMatches(have []*flow.Workload, want []*flow.Workload) bool {
	return slices.ContainsFunc(want, func(w *flow.Workload) bool {
		return slices.ContainsFunc(have, func(h *flow.Workload) bool {
			return (w.GetName() == "" || w.GetName() == h.GetName()) && (w.GetKind() == "" || w.GetKind() == h.GetKind())
		})
	})
}
