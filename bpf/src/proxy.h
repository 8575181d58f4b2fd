/* Transparent redirection of traffic to aegisd's proxies (DNS and HTTP),
 * and the addresses the DNS proxy learned for toFQDNs rules.
 *
 * Redirection assigns the packet to the proxy's socket with bpf_sk_assign
 * (tc ingress of the host veth: the pod's own packets) and marks it, so the
 * node's policy routing (fwmark PROXY_MARK, a local route) delivers it
 * locally instead of forwarding it. The proxy's sockets are IP_TRANSPARENT:
 * they see the original destination, and answer from it.
 *
 * Traffic to a pod (tc egress of its host veth) cannot be assigned to a
 * socket there: the kernel allows bpf_sk_assign at ingress only. Such a
 * packet is bounced instead: marked PROXY_BOUNCE_MARK and redirected to the
 * ingress of the same veth, where aegis_from_pod assigns it. A pod cannot
 * forge the mark: crossing from the pod's namespace scrubs skb->mark.
 *
 * The bounced packet arrives on the destination's veth with the client's
 * source address, so the node's reverse path filter must not be strict
 * there (rp_filter 0 or 2 on the veth and in conf/all; the kernel takes the
 * larger): Cilium runs its pod interfaces with rp_filter 0 for the same
 * reason, and aegis-cni turns it off on each host veth it attaches to.
 *
 * The HTTP proxy connects to a pod from the client's own address and port
 * (an IP_TRANSPARENT socket, marked PROXY_UPSTREAM_MARK), so the pod's
 * ingress policy judges the client, not the node. The pod answers that
 * address: its from-pod hook hands the answers to the proxy's socket the
 * way redirect_to_proxy does (assign_upstream_reply), else the node would
 * route them to the client. The client's port keeps the tuple the one the
 * client itself would have used: in the pod's namespace it collides with
 * nothing, since the client's own connection ends at the proxy. */
#ifndef AEGIS_PROXY_H
#define AEGIS_PROXY_H

#include "common.h"
#include "parse.h"

/* skb->mark values in the nibble Aegis owns (PROXY_MARK_MASK): to a
 * proxy socket (the fwmark rule matches it), bounced to the host veth's
 * ingress on the way to a proxy, and sent by the HTTP proxy to a server
 * (SO_MARK of its upstream sockets, l7proxy.UpstreamMark). */
#define PROXY_MARK 0x0a00
#define PROXY_UPSTREAM_MARK 0x0b00
#define PROXY_BOUNCE_MARK 0x0c00
#define PROXY_MARK_MASK 0x0f00

#define PACKET_HOST 0

/* Where the proxies listen on the node (0: not running). */
struct proxy_config {
	__u16 dns_port;
	__u16 http_port;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct proxy_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_proxy SEC(".maps");

/* Learned toFQDNs peers: (local identity, address, protocol, port) to the
 * cookie of the rule that allows it. Port 0 and protocol 0 mean every port
 * and protocol. Written by the DNS proxy before it releases the answer,
 * removed when the name's TTL (and the grace of live connections) ends. */
struct fqdn_key {
	__u32 local_id;
	__u32 addr; /* IPv4, network order */
	__u8 proto;
	__u8 pad;
	__u16 port; /* network order */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fqdn_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_fqdn SEC(".maps");

/* fqdn_allowed returns the cookie of a learned toFQDNs rule that allows
 * local_id to reach the tuple's destination, or 0. */
static __always_inline __u32 fqdn_allowed(__u32 local_id, const struct tuple *t)
{
	struct fqdn_key k = { .local_id = local_id, .addr = t->daddr, .proto = t->proto, .port = t->dport };
	__u32 *cookie = bpf_map_lookup_elem(&aegis_fqdn, &k);

	if (cookie)
		return *cookie;
	k.proto = 0;
	k.port = 0;
	cookie = bpf_map_lookup_elem(&aegis_fqdn, &k);
	return cookie ? *cookie : 0;
}

/* assign_marked assigns the packet to sk (a socket of the proxies,
 * released here) and marks it, so the node's policy routing delivers it
 * locally; 0 on success, else the drop reason. */
static __always_inline int assign_marked(struct __sk_buff *skb, struct bpf_sock *sk)
{
	long ret = bpf_sk_assign(skb, sk, 0);

	bpf_sk_release(sk);
	if (ret)
		return DROP_SOCKET_ASSIGN;
	skb->mark = (skb->mark & ~PROXY_MARK_MASK) | PROXY_MARK;
	return 0;
}

/* redirect_to_proxy hands the packet to the proxy for action (the DNS
 * proxy, UDP and TCP, or the HTTP proxy, TCP); 0 on success, else the
 * drop reason. */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, const struct tuple *t, __u8 action)
{
	__u32 zero = 0;
	struct proxy_config *cfg = bpf_map_lookup_elem(&aegis_proxy, &zero);
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk = 0;
	__u16 port;

	if (!cfg)
		return DROP_SOCKET_LOOKUP;
	port = action == ACTION_REDIRECT_L7 ? cfg->http_port : cfg->dns_port;
	if (!port)
		return DROP_SOCKET_LOOKUP;
	if (action == ACTION_REDIRECT_L7 && t->proto != IPPROTO_TCP)
		return DROP_PROXY_PROTO;
	tuple.ipv4.saddr = t->saddr;
	tuple.ipv4.daddr = t->daddr;
	tuple.ipv4.sport = t->sport;
	tuple.ipv4.dport = t->dport;
	if (t->proto == IPPROTO_TCP) {
		/* A connection the proxy already accepted: its own socket. */
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (sk && sk->state == BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			sk = 0;
		}
		if (!sk) {
			tuple.ipv4.dport = bpf_htons(port);
			sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
		}
	} else if (t->proto == IPPROTO_UDP) {
		tuple.ipv4.dport = bpf_htons(port);
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return DROP_SOCKET_LOOKUP;
	return assign_marked(skb, sk);
}

/* bounce_to_proxy sends a packet on its way into a pod back to the ingress
 * of the same host veth, for aegis_from_pod to hand to the HTTP proxy. */
static __always_inline int bounce_to_proxy(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~PROXY_MARK_MASK) | PROXY_BOUNCE_MARK;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

static __always_inline int is_bounced(const struct __sk_buff *skb)
{
	return (skb->mark & PROXY_MARK_MASK) == PROXY_BOUNCE_MARK;
}

static __always_inline int from_proxy_upstream(const struct __sk_buff *skb)
{
	return (skb->mark & PROXY_MARK_MASK) == PROXY_UPSTREAM_MARK;
}

/* assign_upstream_reply hands a pod's answer on the HTTP proxy's upstream
 * connection (ct_entry.proxy_upstream) to the proxy's socket; 0 on success,
 * else the drop reason. The socket's local end is the answer's
 * destination, so an established lookup by the answer's tuple finds it; a
 * listener is someone else's. */
static __always_inline int assign_upstream_reply(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;

	if (t->proto != IPPROTO_TCP)
		return DROP_PROXY_PROTO;
	tuple.ipv4.saddr = t->saddr;
	tuple.ipv4.daddr = t->daddr;
	tuple.ipv4.sport = t->sport;
	tuple.ipv4.dport = t->dport;
	sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_SOCKET_LOOKUP;
	if (sk->state == BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return DROP_SOCKET_LOOKUP;
	}
	return assign_marked(skb, sk);
}

/* assign_bounced hands a bounced packet to the HTTP proxy; 0 on success,
 * else the drop reason. The packet still carries the pod's MAC as its
 * destination (it was on its way out of the veth): the stack would take it
 * for another host's and drop it. */
static __always_inline int assign_bounced(struct __sk_buff *skb, const struct tuple *t)
{
	int reason = redirect_to_proxy(skb, t, ACTION_REDIRECT_L7);

	if (reason)
		return reason;
	if (bpf_skb_change_type(skb, PACKET_HOST))
		return DROP_INVALID;
	return 0;
}

#endif
