package cnp

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Label keys Cilium puts on a pod's identity besides the pod's own labels.
const (
	LabelNamespace       = "io.kubernetes.pod.namespace"
	LabelNamespacePrefix = "io.cilium.k8s.namespace.labels."
	LabelCluster         = "io.cilium.k8s.policy.cluster"
	LabelServiceAccount  = "io.cilium.k8s.policy.serviceaccount"
	// ClusterName is the cluster every Aegis identity belongs to, the name
	// Cilium uses when none is configured.
	ClusterName = "default"
)

// Label sources a selector key may name before a colon.
const (
	SourceK8s      = "k8s"
	SourceAny      = "any"
	SourceReserved = "reserved"
)

// Labels is an identity's labels as selectors see them, keyed
// "source:key".
type Labels map[string]string

// PodLabels is the label set of a pod identity: the pod's labels, its
// namespace, its namespace's labels and the cluster, as Cilium labels a
// pod's identity.
func PodLabels(namespace string, pod, nsLabels map[string]string) Labels {
	l := make(Labels, len(pod)+len(nsLabels)+3)
	for k, v := range pod {
		l[SourceK8s+":"+k] = v
	}
	for k, v := range nsLabels {
		l[SourceK8s+":"+LabelNamespacePrefix+k] = v
	}
	// The API server sets this label on every namespace; a manifest
	// directory may not.
	if _, ok := nsLabels["kubernetes.io/metadata.name"]; !ok {
		l[SourceK8s+":"+LabelNamespacePrefix+"kubernetes.io/metadata.name"] = namespace
	}
	l[SourceK8s+":"+LabelNamespace] = namespace
	l[SourceK8s+":"+LabelCluster] = ClusterName
	return l
}

// ReservedLabels is the label set of a reserved identity ("world",
// "host", ...). CIDR identities are world too, as in Cilium.
func ReservedLabels(name string) Labels {
	return Labels{SourceReserved + ":" + name: ""}
}

// Matcher is a compiled selector.
type Matcher struct {
	reqs []requirement
}

type requirement struct {
	source, key string
	op          string // In, NotIn, Exists, DoesNotExist
	values      []string
}

// Matches reports whether l satisfies every requirement.
func (m *Matcher) Matches(l Labels) bool {
	for _, r := range m.reqs {
		v, ok := r.lookup(l)
		switch r.op {
		case "In":
			if !ok || !slices.Contains(r.values, v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(r.values, v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		}
	}
	return true
}

func (r requirement) lookup(l Labels) (string, bool) {
	if r.source != SourceAny {
		v, ok := l[r.source+":"+r.key]
		return v, ok
	}
	for _, src := range []string{SourceK8s, SourceReserved} {
		if v, ok := l[src+":"+r.key]; ok {
			return v, true
		}
	}
	return "", false
}

// hasKey reports whether a requirement names key with a source pods
// carry it under.
func (m *Matcher) hasKey(key string) bool {
	return slices.ContainsFunc(m.reqs, func(r requirement) bool {
		return r.key == key && r.source != SourceReserved
	})
}

func (m *Matcher) hasSource(src string) bool {
	return slices.ContainsFunc(m.reqs, func(r requirement) bool { return r.source == src })
}

// usesServiceAccount reports whether the selector selects on service
// accounts, which Aegis identities do not carry.
func (m *Matcher) usesServiceAccount() bool { return m.hasKey(LabelServiceAccount) }

// compile checks and compiles a selector; errors name the offending part
// relative to the selector.
func (s *Selector) compile() (*Matcher, error) {
	m := &Matcher{}
	for _, k := range slices.Sorted(maps.Keys(s.MatchLabels)) {
		src, key, err := splitKey(k)
		if err != nil {
			return nil, fmt.Errorf("matchLabels[%q]: %w", k, err)
		}
		v := s.MatchLabels[k]
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("matchLabels[%q]: invalid value %q: %s", k, v, strings.Join(errs, "; "))
		}
		m.reqs = append(m.reqs, requirement{source: src, key: key, op: "In", values: []string{v}})
	}
	for i, e := range s.MatchExpressions {
		src, key, err := splitKey(e.Key)
		if err != nil {
			return nil, fmt.Errorf("matchExpressions[%d].key: %w", i, err)
		}
		switch e.Operator {
		case "In", "NotIn":
			if len(e.Values) == 0 {
				return nil, fmt.Errorf("matchExpressions[%d].values: operator %s needs at least one value", i, e.Operator)
			}
		case "Exists", "DoesNotExist":
			if len(e.Values) > 0 {
				return nil, fmt.Errorf("matchExpressions[%d].values: operator %s takes no values", i, e.Operator)
			}
		default:
			return nil, fmt.Errorf("matchExpressions[%d].operator: %q is not In, NotIn, Exists or DoesNotExist", i, e.Operator)
		}
		for j, v := range e.Values {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				return nil, fmt.Errorf("matchExpressions[%d].values[%d]: invalid value %q: %s", i, j, v, strings.Join(errs, "; "))
			}
		}
		m.reqs = append(m.reqs, requirement{source: src, key: key, op: e.Operator, values: slices.Clone(e.Values)})
	}
	return m, nil
}

// splitKey splits "source:key". A key without a source matches labels
// of any source, as Cilium reads selectors in CiliumNetworkPolicies.
func splitKey(k string) (source, key string, err error) {
	source, key, found := strings.Cut(k, ":")
	if !found {
		source, key = SourceAny, k
	}
	switch source {
	case SourceK8s, SourceAny, SourceReserved:
	default:
		return "", "", fmt.Errorf("label source %q is not supported (want k8s, any or reserved)", source)
	}
	if source == SourceReserved {
		if key == "" {
			return "", "", fmt.Errorf("empty reserved label name")
		}
		return source, key, nil
	}
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return "", "", fmt.Errorf("invalid label key %q: %s", key, strings.Join(errs, "; "))
	}
	return source, key, nil
}

// Subject compiles a rule's endpointSelector. In a namespaced policy it
// selects only pods of the policy's namespace, whatever it says.
func (s *Selector) Subject(namespace string) (*Matcher, error) {
	m, err := s.compile()
	if err != nil {
		return nil, err
	}
	if namespace != "" {
		m.reqs = append(m.reqs, requirement{source: SourceK8s, key: LabelNamespace, op: "In", values: []string{namespace}})
	}
	return m, nil
}

// Peer compiles a peer selector (fromEndpoints, toEndpoints). Cilium
// scopes a peer selector that names no namespace to the policy's own
// namespace, or in a clusterwide policy to pods of any namespace (so an
// empty selector there does not select reserved identities). A selector on
// reserved labels is left alone, and so, in a namespaced policy, is one
// that selects by namespace labels: it picks its namespaces itself
// (pkg/k8s/apis/cilium.io/utils, getEndpointSelector).
func (s *Selector) Peer(namespace string) (*Matcher, error) {
	m, err := s.compile()
	if err != nil {
		return nil, err
	}
	if m.hasSource(SourceReserved) || m.hasKey(LabelNamespace) {
		return m, nil
	}
	switch {
	case namespace == "":
		m.reqs = append(m.reqs, requirement{source: SourceK8s, key: LabelNamespace, op: "Exists"})
	case !m.hasKeyPrefix(LabelNamespacePrefix):
		m.reqs = append(m.reqs, requirement{source: SourceK8s, key: LabelNamespace, op: "In", values: []string{namespace}})
	}
	return m, nil
}

func (m *Matcher) hasKeyPrefix(prefix string) bool {
	return slices.ContainsFunc(m.reqs, func(r requirement) bool {
		return strings.HasPrefix(r.key, prefix) && r.source != SourceReserved
	})
}
