// Package policy compiles network policies into the map entries the datapath
// enforces. It is pure Go: no kernel, no root, so every semantic question is
// answered by table tests.
//
// Policy is keyed by local identity, not by pod: pods that share labels share
// entries. An entry says what happens to traffic between a local identity and
// a remote identity (0 = any) in one direction, for one protocol (0 = any) and
// a port prefix (a range of ports split into prefixes, as the datapath's LPM
// trie stores them).
package policy

import (
	"net/netip"
)

// Reserved identities, numbered as Cilium numbers them so that operators
// reading `aegis identity list` see familiar values.
const (
	IdentityAny           uint32 = 0 // wildcard in policy keys: any remote identity
	IdentityHost          uint32 = 1
	IdentityWorld         uint32 = 2
	IdentityRemoteNode    uint32 = 6
	IdentityKubeAPIServer uint32 = 7

	// FirstPodIdentity is the first number handed to a pod label set.
	FirstPodIdentity uint32 = 256
	// FirstCIDRIdentity is the first number handed to a CIDR prefix (Cilium's
	// local scope starts at 1<<24).
	FirstCIDRIdentity uint32 = 1 << 24
)

// Direction of traffic relative to the local endpoint. Values match the
// datapath's (bpf/src/policy.h).
type Direction uint8

const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Protocol numbers as in the IP header; ProtoAny is the wildcard.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// Action is what the datapath does with a matching packet. Values match
// the datapath's.
type Action uint8

const (
	ActionAllow Action = 1
	ActionDeny  Action = 2
	// Redirects are used by the DNS and L7 proxies (later issues).
	ActionRedirectDNS Action = 3
	ActionRedirectL7  Action = 4
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	case ActionRedirectDNS:
		return "redirect-dns"
	case ActionRedirectL7:
		return "redirect-l7"
	}
	return "none"
}

// Key is one policy map key. Port/PortPrefixLen describe a port prefix:
// PortPrefixLen 16 is one port, 0 is every port (then Port is 0).
type Key struct {
	Local         uint32
	Remote        uint32 // IdentityAny for "any remote"
	Dir           Direction
	Proto         uint8 // ProtoAny only together with PortPrefixLen 0
	Port          uint16
	PortPrefixLen uint8
}

// Entry is one policy map value.
type Entry struct {
	Action    Action
	ProxyPort uint16
	// Cookie names the rule that produced the entry (see Result.Rules).
	Cookie uint32
}

// RuleRef names the rule behind a cookie, so every verdict can name its
// policy in flows and in `aegis policy trace`.
type RuleRef struct {
	Kind      string // "NetworkPolicy", "CiliumNetworkPolicy", ...
	Namespace string
	Name      string
	Dir       Direction
	Index     int // index of the rule within its direction's list
	// Path is the rule's field path in a Cilium policy
	// ("spec.ingressDeny[0]"); empty for a NetworkPolicy.
	Path string
	// Default: not one of the policy's rules but its default deny, which
	// names the policy on drops no rule decided.
	Default bool
}

// Identity is everything the compiler knows about one numeric identity.
// Exactly one of (pod fields), CIDR or Reserved is set.
type Identity struct {
	ID uint32
	// Pod identities: the namespace, the pod labels and the namespace's
	// labels (Cilium folds namespace labels into the identity too).
	Namespace       string
	Labels          map[string]string
	NamespaceLabels map[string]string
	// CIDR identities: the prefix the ipcache maps to this identity.
	CIDR netip.Prefix
	// Reserved identities: "host", "world", "remote-node", "kube-apiserver".
	Reserved string
}

// NamedPort is a container port of a pod, for named ports in policies.
type NamedPort struct {
	Name     string
	Protocol uint8
	Port     uint16
}

// IdentityPolicy is the compiled policy of one local identity.
type IdentityPolicy struct {
	// Enforced per direction: some policy selects the identity for that
	// direction, so traffic not allowed by an entry is denied.
	IngressEnforced bool
	EgressEnforced  bool
	// IngressDefault and EgressDefault are the cookies of the policy whose
	// default deny a direction is in (the lowest when several), so a drop
	// that no rule decided still names a policy. CookieNone when the
	// direction is not in default deny.
	IngressDefault uint32
	EgressDefault  uint32
	Entries        map[Key]Entry
}
