// Package api is aegisd's local API: JSON over HTTP on a root-only unix
// socket. The CNI plugin registers endpoints through it; the `aegis` CLI
// reads state through it. Types here are the wire format.
package api

import (
	"net/netip"
	"time"
)

// DefaultSocket is where aegisd listens on a node.
const DefaultSocket = "/var/run/aegis/aegisd.sock"

// EndpointRequest registers a pod interface (CNI ADD) or names one (DEL).
type EndpointRequest struct {
	ContainerID  string       `json:"containerID"`
	IfName       string       `json:"ifName"`
	Netns        string       `json:"netns,omitempty"`
	HostIfName   string       `json:"hostIfName,omitempty"`
	HostIfindex  int          `json:"hostIfindex,omitempty"`
	IPs          []netip.Addr `json:"ips,omitempty"`
	PodNamespace string       `json:"podNamespace,omitempty"`
	PodName      string       `json:"podName,omitempty"`
}

// EndpointResponse answers a registration: policy for Identity is in the
// maps by the time it is sent.
type EndpointResponse struct {
	ID       uint32 `json:"id"`
	Identity uint32 `json:"identity"`
}

// GCRequest names the attachments the runtime still considers valid.
type GCRequest struct {
	Valid []Attachment `json:"validAttachments"`
}

// Attachment is a CNI attachment key.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// GCResponse lists what GC removed.
type GCResponse struct {
	Removed []Attachment `json:"removed"`
}

// Status is the daemon's health.
type Status struct {
	Ready          bool          `json:"ready"`
	Reason         string        `json:"reason,omitempty"`
	Version        string        `json:"version"`
	NodeName       string        `json:"nodeName"`
	Started        time.Time     `json:"started"`
	BPFRoot        string        `json:"bpfRoot"`
	Endpoints      int           `json:"endpoints"`
	Identities     int           `json:"identities"`
	PolicyRevision uint32        `json:"policyRevision"`
	PolicyEntries  int           `json:"policyEntries"`
	IPCacheEntries int           `json:"ipcacheEntries"`
	Source         SourceStatus  `json:"source"`
	LastRegen      RegenStatus   `json:"lastRegeneration"`
	FlowLogs       FlowLogStatus `json:"flowLogs"`
	Flows          FlowStatus    `json:"flows"`
}

// FlowStatus says how the flow observer fares: what it read, kept and
// lost at each stage.
type FlowStatus struct {
	// Events says whether the datapath writes flow events (--flow-events).
	Events bool `json:"events"`
	// Seen is the flows the observer took in.
	Seen uint64 `json:"seen"`
	// Lost is the events the datapath's ring had no room for.
	Lost uint64 `json:"lost"`
	// DecodeErrors is the ring records that did not decode.
	DecodeErrors uint64 `json:"decodeErrors"`
	// SubscriberLag is the flows slow followers (API streams, metrics,
	// flow logs) missed.
	SubscriberLag uint64 `json:"subscriberLag"`
	Stored        int    `json:"stored"`
	Capacity      int    `json:"capacity"`
}

// SourceStatus says where policy comes from and what was rejected.
type SourceStatus struct {
	Kind       string `json:"kind"` // "manifests"
	Location   string `json:"location"`
	Generation uint64 `json:"generation"`
	// Applied is the generation the datapath state was last built from.
	Applied  uint64   `json:"appliedGeneration"`
	Policies int      `json:"policies"`
	Rejected []string `json:"rejected,omitempty"`
}

// RegenStatus describes the last regeneration of the datapath state.
type RegenStatus struct {
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration"`
	Error    string        `json:"error,omitempty"`
}

// Endpoint is one endpoint as the CLI shows it.
type Endpoint struct {
	ID              uint32       `json:"id"`
	ContainerID     string       `json:"containerID"`
	IfName          string       `json:"ifName"`
	HostIfName      string       `json:"hostIfName"`
	HostIfindex     int          `json:"hostIfindex"`
	IPs             []netip.Addr `json:"ips"`
	PodNamespace    string       `json:"podNamespace"`
	PodName         string       `json:"podName"`
	Identity        uint32       `json:"identity"`
	Labels          []string     `json:"labels"`
	IngressEnforced bool         `json:"ingressEnforced"`
	EgressEnforced  bool         `json:"egressEnforced"`
}

// Identity is one numeric identity and what it stands for.
type Identity struct {
	ID        uint32   `json:"id"`
	Kind      string   `json:"kind"` // pod, cidr, reserved
	Labels    []string `json:"labels"`
	Endpoints int      `json:"endpoints"` // local endpoints using it
}

// Policy is the compiled policy of one local identity.
type Policy struct {
	Identity        uint32        `json:"identity"`
	Labels          []string      `json:"labels"`
	IngressEnforced bool          `json:"ingressEnforced"`
	EgressEnforced  bool          `json:"egressEnforced"`
	Rules           []Rule        `json:"rules"`
	Entries         []PolicyEntry `json:"entries"`
}

// Rule names a policy rule behind a cookie.
type Rule struct {
	Cookie    uint32 `json:"cookie"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Direction string `json:"direction"`
	Index     int    `json:"index"`
	// Path is a Cilium rule's field path ("spec.ingressDeny[0]").
	Path string `json:"path,omitempty"`
}

// PolicyEntry is one map entry of the policy, decoded.
type PolicyEntry struct {
	Remote    uint32 `json:"remote"`
	Direction string `json:"direction"`
	Proto     string `json:"proto"`
	Ports     string `json:"ports"` // "any", "80", "8080/13" (prefix)
	Action    string `json:"action"`
	Cookie    uint32 `json:"cookie"`
	Rule      string `json:"rule"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// TraceRequest asks how the datapath judges a connection.
type TraceRequest struct {
	Source      string `json:"source"`      // namespace/name, IP, or entity
	Destination string `json:"destination"` // namespace/name, IP, entity, or a DNS name
	Protocol    string `json:"protocol"`
	Port        uint16 `json:"port"`
	// DNSName is the name of a DNS query, for a port the DNS proxy
	// handles: the trace says whether its DNS rules allow it.
	DNSName string `json:"dnsName,omitempty"`
	// HTTPMethod and HTTPPath are a request, for a port the HTTP proxy
	// handles: the trace says whether its HTTP rules allow it.
	HTTPMethod string `json:"httpMethod,omitempty"`
	HTTPPath   string `json:"httpPath,omitempty"`
}

// TracePeer is one end of a traced connection.
type TracePeer struct {
	Name     string `json:"name"`
	Identity uint32 `json:"identity"`
	Local    bool   `json:"local"`
}

// TraceStep is the verdict of one endpoint direction.
type TraceStep struct {
	Direction string `json:"direction"`
	Local     uint32 `json:"local"`
	Remote    uint32 `json:"remote"`
	Enforced  bool   `json:"enforced"`
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason"`
	Rule      string `json:"rule,omitempty"`
}

// TraceResponse is the overall verdict and the steps behind it.
type TraceResponse struct {
	Source      TracePeer   `json:"source"`
	Destination TracePeer   `json:"destination"`
	Verdict     string      `json:"verdict"` // FORWARDED or DROPPED
	Steps       []TraceStep `json:"steps"`
}

// FlowLogStatus says which ContainerNetworkLogs are in force and how the
// flow log file fares.
type FlowLogStatus struct {
	Path    string            `json:"path"`
	Logs    []ContainerNetLog `json:"containerNetworkLogs"`
	Written uint64            `json:"written"`
	Lost    uint64            `json:"lost"`
	LastErr string            `json:"lastError,omitempty"`
}

// ContainerNetLog is one ContainerNetworkLog's status.
type ContainerNetLog struct {
	Name   string `json:"name"`
	State  string `json:"state"` // CONFIGURED or FAILED
	Reason string `json:"reason,omitempty"`
}

// FQDNEntry is one address the DNS proxy learned for a name.
type FQDNEntry struct {
	Name      string    `json:"name"`
	IP        string    `json:"ip"`
	Identity  uint32    `json:"identity"` // the local identity it was learned for
	Source    string    `json:"source"`   // the pod address that asked
	Expires   time.Time `json:"expires"`
	Selectors []string  `json:"selectors"` // the toFQDNs selectors the name matched
	Ports     []string  `json:"ports"`
}

// FQDNClean says how many learned addresses a clean removed.
type FQDNClean struct {
	Removed int `json:"removed"`
}
