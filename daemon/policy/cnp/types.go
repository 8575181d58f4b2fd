// Package cnp reads CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
// objects (cilium.io/v2): a strict decode into the types below, then
// validation that names the field at fault. It decides nothing about
// traffic; the policy package compiles what it returns.
//
// The types follow the field names of Cilium's CRDs (pkg/policy/api) so a
// manifest that Cilium accepts decodes here unchanged. Fields Aegis does not
// enforce yet still decode, so that they can be reported by path rather than
// rejected as unknown.
package cnp

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kinds, as in the objects' kind field.
const (
	KindCNP  = "CiliumNetworkPolicy"
	KindCCNP = "CiliumClusterwideNetworkPolicy"
	// APIVersion is the only version read.
	APIVersion = "cilium.io/v2"
)

// Object is a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy as
// stored in the API server. A policy has spec, specs, or both; every rule
// of both applies.
type Object struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       *Rule             `json:"spec,omitempty"`
	Specs      []Rule            `json:"specs,omitempty"`
	// Status is written by Cilium's agents; Aegis reports through Events.
	Status json.RawMessage `json:"status,omitempty"`
}

// Rule is one rule: a subject selector and the sections that apply to it.
//
// Whether a section is absent (nil), empty ([]) or holds elements matters:
// see the policy package, which follows Cilium's reading.
type Rule struct {
	EndpointSelector *Selector `json:"endpointSelector,omitempty"`
	// NodeSelector makes a host policy, which Aegis does not enforce.
	NodeSelector *Selector `json:"nodeSelector,omitempty"`

	Ingress     []IngressRule     `json:"ingress,omitempty"`
	IngressDeny []IngressDenyRule `json:"ingressDeny,omitempty"`
	Egress      []EgressRule      `json:"egress,omitempty"`
	EgressDeny  []EgressDenyRule  `json:"egressDeny,omitempty"`

	EnableDefaultDeny *DefaultDeny `json:"enableDefaultDeny,omitempty"`

	Labels      []RuleLabel     `json:"labels,omitempty"`
	Description string          `json:"description,omitempty"`
	Log         json.RawMessage `json:"log,omitempty"`
}

// DefaultDeny overrides, per direction, whether a rule puts its subjects
// in default deny. Nil means the default: on for a direction the rule has
// rules for.
type DefaultDeny struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// RuleLabel is one of a rule's metadata labels.
type RuleLabel struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// Selector is Cilium's EndpointSelector: a Kubernetes label selector whose
// keys may carry a source prefix ("k8s:", "any:", "reserved:").
type Selector struct {
	MatchLabels      map[string]string `json:"matchLabels,omitempty"`
	MatchExpressions []Requirement     `json:"matchExpressions,omitempty"`
}

// Requirement is one match expression.
type Requirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// IngressRule allows traffic from its peers to its ports.
type IngressRule struct {
	FromEndpoints []Selector        `json:"fromEndpoints,omitempty"`
	FromRequires  []Selector        `json:"fromRequires,omitempty"`
	FromCIDR      []string          `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule        `json:"fromCIDRSet,omitempty"`
	FromEntities  []string          `json:"fromEntities,omitempty"`
	FromNodes     []Selector        `json:"fromNodes,omitempty"`
	FromGroups    []json.RawMessage `json:"fromGroups,omitempty"`
	ToPorts       []PortRule        `json:"toPorts,omitempty"`
	ICMPs         []json.RawMessage `json:"icmps,omitempty"`

	Authentication json.RawMessage `json:"authentication,omitempty"`
}

// IngressDenyRule denies traffic from its peers to its ports.
type IngressDenyRule struct {
	FromEndpoints []Selector        `json:"fromEndpoints,omitempty"`
	FromRequires  []Selector        `json:"fromRequires,omitempty"`
	FromCIDR      []string          `json:"fromCIDR,omitempty"`
	FromCIDRSet   []CIDRRule        `json:"fromCIDRSet,omitempty"`
	FromEntities  []string          `json:"fromEntities,omitempty"`
	FromNodes     []Selector        `json:"fromNodes,omitempty"`
	FromGroups    []json.RawMessage `json:"fromGroups,omitempty"`
	ToPorts       []PortDenyRule    `json:"toPorts,omitempty"`
	ICMPs         []json.RawMessage `json:"icmps,omitempty"`
}

// EgressRule allows traffic to its peers on its ports.
type EgressRule struct {
	ToEndpoints []Selector        `json:"toEndpoints,omitempty"`
	ToRequires  []Selector        `json:"toRequires,omitempty"`
	ToCIDR      []string          `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule        `json:"toCIDRSet,omitempty"`
	ToEntities  []string          `json:"toEntities,omitempty"`
	ToNodes     []Selector        `json:"toNodes,omitempty"`
	ToGroups    []json.RawMessage `json:"toGroups,omitempty"`
	ToServices  []json.RawMessage `json:"toServices,omitempty"`
	ToFQDNs     []FQDNSelector    `json:"toFQDNs,omitempty"`
	ToPorts     []PortRule        `json:"toPorts,omitempty"`
	ICMPs       []json.RawMessage `json:"icmps,omitempty"`

	Authentication json.RawMessage `json:"authentication,omitempty"`
}

// EgressDenyRule denies traffic to its peers on its ports.
type EgressDenyRule struct {
	ToEndpoints []Selector        `json:"toEndpoints,omitempty"`
	ToRequires  []Selector        `json:"toRequires,omitempty"`
	ToCIDR      []string          `json:"toCIDR,omitempty"`
	ToCIDRSet   []CIDRRule        `json:"toCIDRSet,omitempty"`
	ToEntities  []string          `json:"toEntities,omitempty"`
	ToNodes     []Selector        `json:"toNodes,omitempty"`
	ToGroups    []json.RawMessage `json:"toGroups,omitempty"`
	ToServices  []json.RawMessage `json:"toServices,omitempty"`
	ToPorts     []PortDenyRule    `json:"toPorts,omitempty"`
	ICMPs       []json.RawMessage `json:"icmps,omitempty"`
}

// CIDRRule is a prefix with exceptions inside it.
type CIDRRule struct {
	CIDR              string          `json:"cidr,omitempty"`
	Except            []string        `json:"except,omitempty"`
	CIDRGroupRef      string          `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector json.RawMessage `json:"cidrGroupSelector,omitempty"`
}

// FQDNSelector selects destinations by DNS name.
type FQDNSelector struct {
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`
}

// PortRule is a set of ports, with optional layer 7 rules on them.
type PortRule struct {
	Ports          []PortProtocol  `json:"ports,omitempty"`
	Rules          *L7Rules        `json:"rules,omitempty"`
	TerminatingTLS json.RawMessage `json:"terminatingTLS,omitempty"`
	OriginatingTLS json.RawMessage `json:"originatingTLS,omitempty"`
	ServerNames    []string        `json:"serverNames,omitempty"`
	Listener       json.RawMessage `json:"listener,omitempty"`
}

// PortDenyRule is a set of ports a deny rule covers.
type PortDenyRule struct {
	Ports []PortProtocol `json:"ports,omitempty"`
}

// PortProtocol is one port, or port range, and protocol. Port is a number,
// "0" for every port, or a container port name.
type PortProtocol struct {
	Port     string `json:"port,omitempty"`
	EndPort  int32  `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// L7Rules are the application-level rules of a port.
type L7Rules struct {
	HTTP    []HTTPRule        `json:"http,omitempty"`
	DNS     []FQDNSelector    `json:"dns,omitempty"`
	Kafka   []json.RawMessage `json:"kafka,omitempty"`
	L7Proto string            `json:"l7proto,omitempty"`
	L7      []json.RawMessage `json:"l7,omitempty"`
}

// HTTPRule matches HTTP requests.
type HTTPRule struct {
	Method        string        `json:"method,omitempty"`
	Path          string        `json:"path,omitempty"`
	Host          string        `json:"host,omitempty"`
	Headers       []string      `json:"headers,omitempty"`
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch matches one HTTP header's value.
type HeaderMatch struct {
	Name     string          `json:"name"`
	Value    string          `json:"value,omitempty"`
	Mismatch string          `json:"mismatch,omitempty"`
	Secret   json.RawMessage `json:"secret,omitempty"`
}
