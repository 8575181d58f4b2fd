package observe

import (
	"strings"

	"github.com/cilium/cilium/api/v1/flow"
)

// Filter selects flows the way `hubble observe` does for the fields it
// names; empty fields match everything.
type Filter struct {
	Verdict   string // FORWARDED, DROPPED
	Namespace string // either end in this namespace
	Pod       string // either end: [namespace/]pod-name prefix
	FromPod   string // source: [namespace/]pod-name prefix
	ToPod     string // destination: [namespace/]pod-name prefix
}

// Match says whether f passes the filter.
func (flt Filter) Match(f *flow.Flow) bool {
	if flt.Verdict != "" && !strings.EqualFold(f.GetVerdict().String(), flt.Verdict) {
		return false
	}
	if flt.Namespace != "" && f.GetSource().GetNamespace() != flt.Namespace && f.GetDestination().GetNamespace() != flt.Namespace {
		return false
	}
	if flt.Pod != "" && !podMatch(f.GetSource(), flt.Pod) && !podMatch(f.GetDestination(), flt.Pod) {
		return false
	}
	if flt.FromPod != "" && !podMatch(f.GetSource(), flt.FromPod) {
		return false
	}
	if flt.ToPod != "" && !podMatch(f.GetDestination(), flt.ToPod) {
		return false
	}
	return true
}

// podMatch applies Hubble's pod filter: "ns/prefix" matches pods of ns
// whose name starts with prefix; a bare "prefix" means namespace default.
func podMatch(e *flow.Endpoint, want string) bool {
	ns, prefix, ok := strings.Cut(want, "/")
	if !ok {
		ns, prefix = "default", want
	}
	return e.GetPodName() != "" && e.GetNamespace() == ns && strings.HasPrefix(e.GetPodName(), prefix)
}
