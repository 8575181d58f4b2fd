// Package observe turns datapath events into flows: it reads the flow-event
// ring, resolves each event's endpoints, identities and rule as they are
// when it is read, and keeps the recent ones in a bounded ring for the
// APIs, the metrics and the flow log. Loss is counted at every stage: in
// the kernel (ring full), in decoding, and per follower.
package observe

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Peer is what the resolver knows about one end of a flow.
type Peer struct {
	Identity   uint32
	EndpointID uint32 // local endpoints only
	Namespace  string
	PodName    string
	Labels     []string         // "k8s:app=web", "reserved:world"
	Workloads  []*flow.Workload // the pod's controller (shared: never modified)
}

// Resolver answers who is behind addresses, identities and cookies.
type Resolver interface {
	// Peer describes the end with this address and identity.
	Peer(ip netip.Addr, identity uint32) Peer
	// Rule names the rule behind a cookie.
	Rule(cookie uint32) (policy.RuleRef, bool)
	// NodeName is this node's name.
	NodeName() string
}

// Versioned is a Resolver whose answers change only when NamesVersion
// does: the reader then keeps what it resolved until the version moves,
// instead of asking again for every event.
type Versioned interface {
	NamesVersion() uint64
}

// Entry is one flow as the observer keeps it: a datapath event with its
// ends and rule resolved when it was read, an event of the HTTP proxy
// resolved when it arrived, or the L7 flow of a DNS event.
// Entries are values in a preallocated ring, so reading an event
// allocates nothing; a flow.Flow (about 1.5 KB) is built from an entry
// only when an API or the flow log asks for it.
type Entry struct {
	ev       bpf.FlowEvent
	src, dst *end
	policy   *flow.Policy // the rule that decided, nil for none
	l7       *flow.Flow   // an L7 flow of a proxy (DNS); ev is then unused
	http     *HTTPEvent   // an event of the HTTP proxy (http.go); ev is then unused
	// The DNS names the pods had for the addresses then (shared with the
	// observer's memory of them, which never changes a slice in place).
	srcNames, dstNames []string
}

// end is one end of flows as the resolver named it when an event was
// read: immutable, shared by every entry and built flow that names it, so
// a flow built later still names the pod as it was when the packet
// passed. Its labels are the resolver's, which are never changed in place.
type end struct {
	ep   *flow.Endpoint
	addr string
}

// L4Key is everything an L3/L4 entry's metric series depend on, as a small
// comparable value: entries with equal keys count in the same series.
type L4Key struct {
	src, dst                *end
	dropped, reply, matched bool
	reason, dir, proto      uint8
	tcpFlags                uint8
}

// L4Key returns the entry's key, false for an L7 flow.
func (e *Entry) L4Key() (L4Key, bool) {
	if e.l7 != nil || e.http != nil {
		return L4Key{}, false
	}
	return L4Key{src: e.src, dst: e.dst, dropped: e.ev.Dropped, reply: e.ev.CTState == bpf.CTReply, matched: e.policy != nil,
		reason: e.ev.Reason, dir: e.ev.Dir, proto: e.ev.Proto, tcpFlags: e.ev.TCPFlags}, true
}

// L7 returns the entry's L7 flow if it holds one, nil for a datapath
// event or an HTTP event (whose flow is built when asked for: see HTTP).
func (e *Entry) L7() *flow.Flow { return e.l7 }

type endKey struct {
	addr netip.Addr
	id   uint32
}

// endsMax bounds the ends and rules the reader keeps: past that many it
// starts again (entries still hold theirs).
const endsMax = 8192

// resolver is the reader's memory of what it resolved under one version
// of the resolver's tables. Only the reader's goroutine uses it.
type resolver struct {
	r       Resolver
	dns     *dnsNames // nil: flows carry no DNS names
	version uint64
	ends    map[endKey]*end
	rules   map[uint32]*flow.Policy
	// The last answers: consecutive events mostly share their ends.
	lastSrc, lastDst endKey
	src, dst         *end
	lastCookie       uint32
	rule             *flow.Policy
	// The last ends' DNS names, within one batch: names learned meanwhile
	// show from the next.
	namedSrc, namedDst *end
	srcNames, dstNames []string
}

func newResolver(r Resolver) *resolver {
	c := &resolver{r: r, ends: map[endKey]*end{}, rules: map[uint32]*flow.Policy{}}
	c.forget()
	return c
}

// refresh forgets what was resolved if the tables changed since (always,
// for a resolver that does not say).
func (c *resolver) refresh() {
	c.namedSrc, c.namedDst = nil, nil
	v, ok := c.r.(Versioned)
	if !ok {
		c.forget()
		return
	}
	if n := v.NamesVersion(); n != c.version {
		c.forget()
		c.version = n
	}
}

func (c *resolver) forget() {
	clear(c.ends)
	clear(c.rules)
	c.src, c.dst, c.rule = nil, nil, nil
	c.namedSrc, c.namedDst = nil, nil
}

// resolve fills in e's ends and rule from e.ev.
func (c *resolver) resolve(e *Entry) {
	ks, kd := endKey{e.ev.Src.Addr(), e.ev.SrcIdentity}, endKey{e.ev.Dst.Addr(), e.ev.DstIdentity}
	if c.src == nil || ks != c.lastSrc {
		c.src, c.lastSrc = c.end(ks), ks
	}
	if c.dst == nil || kd != c.lastDst {
		c.dst, c.lastDst = c.end(kd), kd
	}
	e.src, e.dst = c.src, c.dst
	if c.rule == nil || e.ev.Cookie != c.lastCookie {
		c.rule, c.lastCookie = c.policy(e.ev.Cookie), e.ev.Cookie
	}
	if c.src != c.namedSrc || c.dst != c.namedDst {
		c.srcNames, c.dstNames = c.dns.pair(c.src.ep.PodName != "", c.dst.ep.PodName != "", ks.addr, kd.addr, e.ev.Time)
		c.namedSrc, c.namedDst = c.src, c.dst
	}
	e.srcNames, e.dstNames = c.srcNames, c.dstNames
	if c.rule.Name == "" { // the remembered "no rule"
		e.policy = nil
	} else {
		e.policy = c.rule
	}
}

// noRule stands for a cookie that names no rule, so that it is remembered
// too.
var noRule = &flow.Policy{}

func (c *resolver) policy(cookie uint32) *flow.Policy {
	if p, ok := c.rules[cookie]; ok {
		return p
	}
	if len(c.rules) >= endsMax {
		clear(c.rules)
	}
	p := noRule
	if ref, ok := c.r.Rule(cookie); ok && ref.Name != "" {
		p = &flow.Policy{Name: ref.Name, Namespace: ref.Namespace, Kind: ref.Kind}
	}
	c.rules[cookie] = p
	return p
}

func (c *resolver) end(k endKey) *end {
	if e, ok := c.ends[k]; ok {
		return e
	}
	if len(c.ends) >= endsMax {
		clear(c.ends)
		c.src, c.dst = nil, nil
	}
	p := c.r.Peer(k.addr, k.id)
	e := &end{addr: k.addr.String(), ep: &flow.Endpoint{ID: p.EndpointID, Identity: p.Identity, Namespace: p.Namespace, PodName: p.PodName, Labels: p.Labels,
		Workloads: p.Workloads}}
	c.ends[k] = e
	return e
}

// flowBlock is a flow and the messages it points to, allocated as one: a
// dozen small objects per flow cost far more than one. The endpoints and
// the policy are the entry's, shared.
type flowBlock struct {
	f      flow.Flow
	ts     timestamppb.Timestamp
	ip     flow.IP
	reply  wrapperspb.BoolValue
	et     flow.CiliumEventType
	l4     flow.Layer4
	tcp    flow.TCP
	tcpOf  flow.Layer4_TCP
	flags  flow.TCPFlags
	udp    flow.UDP
	udpOf  flow.Layer4_UDP
	policy [1]*flow.Policy
}

// build makes the Hubble flow of an entry.
func build(e *Entry, node string) *flow.Flow {
	if e.l7 != nil {
		return e.l7
	}
	if e.http != nil {
		return httpFlow(e, node)
	}
	ev := &e.ev
	b := &flowBlock{}
	f := &b.f
	b.ts.Seconds, b.ts.Nanos = ev.Time.Unix(), int32(ev.Time.Nanosecond())
	f.Time = &b.ts
	f.NodeName = node
	f.Type = flow.FlowType_L3_L4
	b.ip.Source, b.ip.Destination, b.ip.IpVersion = e.src.addr, e.dst.addr, flow.IPVersion_IPv4
	f.IP = &b.ip
	f.Source, f.Destination = e.src.ep, e.dst.ep
	f.SourceNames, f.DestinationNames = e.srcNames, e.dstNames
	b.reply.Value = ev.CTState == bpf.CTReply
	f.IsReply = &b.reply
	if ev.Dir == uint8(policy.Egress) {
		f.TrafficDirection = flow.TrafficDirection_EGRESS
		f.TraceObservationPoint = flow.TraceObservationPoint_FROM_ENDPOINT
	} else {
		f.TrafficDirection = flow.TrafficDirection_INGRESS
		f.TraceObservationPoint = flow.TraceObservationPoint_TO_ENDPOINT
	}
	// Hubble's monitor event types: 1 drop, 4 trace.
	if ev.Dropped {
		f.Verdict = flow.Verdict_DROPPED
		f.DropReasonDesc = flow.DropReason(ev.Reason)
		f.DropReason = uint32(ev.Reason)
		b.et.Type, b.et.SubType = 1, int32(ev.Reason)
	} else {
		f.Verdict = flow.Verdict_FORWARDED
		b.et.Type = 4
	}
	f.EventType = &b.et
	sp, dp := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	switch ev.Proto {
	case policy.ProtoTCP:
		fl := ev.TCPFlags
		b.flags.FIN, b.flags.SYN, b.flags.RST = fl&0x01 != 0, fl&0x02 != 0, fl&0x04 != 0
		b.flags.PSH, b.flags.ACK, b.flags.URG = fl&0x08 != 0, fl&0x10 != 0, fl&0x20 != 0
		b.tcp.SourcePort, b.tcp.DestinationPort, b.tcp.Flags = sp, dp, &b.flags
		b.tcpOf.TCP = &b.tcp
		b.l4.Protocol = &b.tcpOf
		f.L4 = &b.l4
	case policy.ProtoUDP:
		b.udp.SourcePort, b.udp.DestinationPort = sp, dp
		b.udpOf.UDP = &b.udp
		b.l4.Protocol = &b.udpOf
		f.L4 = &b.l4
	default:
		f.L4 = l4(*ev)
	}
	if e.policy != nil {
		b.policy[0] = e.policy
		p := b.policy[:]
		switch {
		case ev.Dropped && f.TrafficDirection == flow.TrafficDirection_EGRESS:
			f.EgressDeniedBy = p
		case ev.Dropped:
			f.IngressDeniedBy = p
		case f.TrafficDirection == flow.TrafficDirection_EGRESS:
			f.EgressAllowedBy = p
		default:
			f.IngressAllowedBy = p
		}
	}
	return f
}

// toFlow enriches one datapath event into a Hubble flow, resolving it now.
func toFlow(ev bpf.FlowEvent, r Resolver) *flow.Flow {
	e := Entry{ev: ev}
	newResolver(r).resolve(&e)
	return build(&e, r.NodeName())
}

func l4(ev bpf.FlowEvent) *flow.Layer4 {
	sp, dp := uint32(ev.Src.Port()), uint32(ev.Dst.Port())
	switch ev.Proto {
	case policy.ProtoTCP:
		fl := ev.TCPFlags
		return &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{SourcePort: sp, DestinationPort: dp, Flags: &flow.TCPFlags{
			FIN: fl&0x01 != 0, SYN: fl&0x02 != 0, RST: fl&0x04 != 0, PSH: fl&0x08 != 0, ACK: fl&0x10 != 0, URG: fl&0x20 != 0,
		}}}}
	case policy.ProtoUDP:
		return &flow.Layer4{Protocol: &flow.Layer4_UDP{UDP: &flow.UDP{SourcePort: sp, DestinationPort: dp}}}
	case policy.ProtoSCTP:
		return &flow.Layer4{Protocol: &flow.Layer4_SCTP{SCTP: &flow.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case policy.ProtoICMP:
		return &flow.Layer4{Protocol: &flow.Layer4_ICMPv4{ICMPv4: &flow.ICMPv4{}}}
	}
	return nil
}

// LabelsOf is a small helper for resolvers: "k8s:key=value" labels sorted.
func LabelsOf(namespace string, labels map[string]string) []string {
	out := []string{"k8s:io.kubernetes.pod.namespace=" + namespace}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, "k8s:"+k+"="+labels[k])
	}
	return out
}
