package observe

import (
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/daemon/policy"
)

// A DNS event becomes its flow when it arrives, as Hubble shows it (the
// names it teaches are read from it); an HTTP event is kept as an entry
// and its flow built when asked for (http.go). What makes a flow cheap is what makes the datapath's entries cheap: its
// messages are one allocation, and its ends and rule are shared with
// the other flows that name them, resolved once per version of the
// resolver's tables. A flow built for each event through a dozen small
// allocations cost the agent as much CPU as the proxy spent on the
// request itself.

// l7Builder builds the proxies' flows. Its memory of ends is its own (the
// datapath reader's belongs to that goroutine); the events of both
// proxies arrive on one stream, so its lock is seldom contended.
type l7Builder struct {
	mu   sync.Mutex
	c    *resolver
	node string
}

// l7Block is an L7 flow and the messages it points to, allocated as one.
type l7Block struct {
	f      flow.Flow
	ts     timestamppb.Timestamp
	ip     flow.IP
	et     flow.CiliumEventType
	reply  wrapperspb.BoolValue
	l4     flow.Layer4
	tcp    flow.TCP
	tcpOf  flow.Layer4_TCP
	udp    flow.UDP
	udpOf  flow.Layer4_UDP
	l7     flow.Layer7
	dns    flow.DNS
	dnsOf  flow.Layer7_Dns
	http   flow.HTTP
	httpOf flow.Layer7_Http
	policy [1]*flow.Policy
}

func newL7Builder(r Resolver) *l7Builder {
	if r == nil {
		r = noResolver{}
	}
	return &l7Builder{c: newResolver(r), node: r.NodeName()}
}

// resolve returns an L7 flow's ends, the answer's being the server's then
// the pod's, and the rule of cookie (nil for none).
func (b *l7Builder) resolve(response bool, src, dst netip.AddrPort, srcID, dstID uint32, cookie uint32) (from, to *end, rule *flow.Policy) {
	b.mu.Lock()
	b.c.refresh()
	from, to = b.c.end(endKey{src.Addr(), srcID}), b.c.end(endKey{dst.Addr(), dstID})
	rule = b.c.policy(cookie)
	b.mu.Unlock()
	if response {
		from, to = to, from
	}
	if rule.Name == "" { // the remembered "no rule" has none
		rule = nil
	}
	return from, to, rule
}

// start resolves and fills in what every L7 flow has (see fill).
func (b *l7Builder) start(t time.Time, v flow.Verdict, response bool, src, dst netip.AddrPort, srcID, dstID uint32, proto uint8, cookie uint32) *l7Block {
	from, to, rule := b.resolve(response, src, dst, srcID, dstID, cookie)
	sport, dport := src.Port(), dst.Port()
	if response {
		sport, dport = dport, sport
	}
	return fill(t, v, response, from, to, sport, dport, proto, rule, b.node)
}

// fill fills in what every L7 flow has: time, verdict, addresses, ends
// and ports (the flow's, the answer's reversed already), Hubble's
// access-log event type (129), and the rule, which decide puts in its
// list.
func fill(t time.Time, v flow.Verdict, response bool, from, to *end, sport, dport uint16, proto uint8, rule *flow.Policy, node string) *l7Block {
	k := &l7Block{}
	k.policy[0] = rule
	f := &k.f
	k.ts.Seconds, k.ts.Nanos = t.Unix(), int32(t.Nanosecond())
	f.Time = &k.ts
	f.Verdict, f.Type, f.NodeName = v, flow.FlowType_L7, node
	k.ip.Source, k.ip.Destination, k.ip.IpVersion = from.addr, to.addr, flow.IPVersion_IPv4
	f.IP = &k.ip
	f.Source, f.Destination = from.ep, to.ep
	k.et.Type = 129
	f.EventType = &k.et
	f.TrafficDirection = flow.TrafficDirection_EGRESS
	k.reply.Value = response
	f.IsReply = &k.reply
	if proto == policy.ProtoTCP {
		k.tcp.SourcePort, k.tcp.DestinationPort = uint32(sport), uint32(dport)
		k.tcpOf.TCP = &k.tcp
		k.l4.Protocol = &k.tcpOf
	} else {
		k.udp.SourcePort, k.udp.DestinationPort = uint32(sport), uint32(dport)
		k.udpOf.UDP = &k.udp
		k.l4.Protocol = &k.udpOf
	}
	f.L4 = &k.l4
	f.L7 = &k.l7
	return k
}

// decide records the verdict's side: the rule goes in the allowed or
// denied list of the side whose policy decided, and a denial is a policy
// drop.
func (k *l7Block) decide(ingress, denied bool) {
	f := &k.f
	if denied {
		f.DropReasonDesc = flow.DropReason_POLICY_DENIED
	}
	if k.policy[0] == nil {
		return
	}
	list := k.policy[:]
	switch {
	case ingress && denied:
		f.IngressDeniedBy = list
	case ingress:
		f.IngressAllowedBy = list
	case denied:
		f.EgressDeniedBy = list
	default:
		f.EgressAllowedBy = list
	}
}

// noResolver names nothing: an observer without a resolver.
type noResolver struct{}

func (noResolver) Peer(_ netip.Addr, identity uint32) Peer { return Peer{Identity: identity} }
func (noResolver) Rule(uint32) (policy.RuleRef, bool)      { return policy.RuleRef{}, false }
func (noResolver) NodeName() string                        { return "" }
