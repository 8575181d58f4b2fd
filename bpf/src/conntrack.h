/* Conntrack: makes the datapath stateful. One entry per connection per
 * endpoint, keyed by the endpoint's host veth and the connection's tuple in
 * a canonical order, so both directions find it with one lookup. The entry
 * remembers which hook created it (scope): a packet through the other hook
 * is a reply and passes without a rule. Both endpoints of a pod-to-pod flow
 * track it apart, each under its own ifindex. */
#ifndef AEGIS_CONNTRACK_H
#define AEGIS_CONNTRACK_H

#include "common.h"
#include "parse.h"

#define CT_SYN_TIMEOUT_NS (60ULL * 1000000000ULL)
#define CT_ESTABLISHED_TCP_NS (21600ULL * 1000000000ULL)
#define CT_CLOSING_NS (10ULL * 1000000000ULL)
#define CT_OTHER_NS (60ULL * 1000000000ULL)

/* Connection states reported in flow events. */
#define CT_NEW 1
#define CT_ESTABLISHED 2
#define CT_REPLY 3

struct ct_key {
	__u32 ifindex;
	__be32 addr_a;  /* the lower (address, port) of the two ends */
	__be32 addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8 proto;
	__u8 pad[3];
};

struct ct_entry {
	__u64 expires_ns;       /* bpf_ktime_get_ns() clock */
	__u64 last_report_ns;
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 policy_rev;
	__u32 cookie;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 flags_fwd;         /* TCP flags seen in the original direction */
	__u8 flags_rev;
	__u8 closing;
	__u8 scope;             /* DIR_* of the hook that created the entry */
	__u8 a_is_src;          /* the key's end a sent the first packet */
	__u8 redirect;          /* ACTION_REDIRECT_* the connection goes through, or 0 */
	__u8 proxy_upstream;    /* the HTTP proxy's connection from a client's address
				 * into this endpoint: replies go to the proxy (proxy.h) */
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_ct SEC(".maps");

/* ct_key_of builds the canonical key; *a_is_src says whether the packet's
 * source is the key's end a. */
static __always_inline void ct_key_of(struct ct_key *k, const struct tuple *t, __u32 ifindex,
				      __u8 *a_is_src)
{
	__u32 s = bpf_ntohl(t->saddr), d = bpf_ntohl(t->daddr);
	int src_first = s < d || (s == d && bpf_ntohs(t->sport) <= bpf_ntohs(t->dport));

	k->ifindex = ifindex;
	k->proto = t->proto;
	k->pad[0] = k->pad[1] = k->pad[2] = 0;
	if (src_first) {
		k->addr_a = t->saddr;
		k->port_a = t->sport;
		k->addr_b = t->daddr;
		k->port_b = t->dport;
	} else {
		k->addr_a = t->daddr;
		k->port_a = t->dport;
		k->addr_b = t->saddr;
		k->port_b = t->sport;
	}
	*a_is_src = src_first;
}

static __always_inline __u64 ct_lifetime(const struct ct_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return CT_OTHER_NS;
	if (e->closing)
		return CT_CLOSING_NS;
	/* Both sides have spoken: established. Otherwise a half-open attempt. */
	if ((e->flags_fwd & TCP_FLAG_ACK) && (e->flags_rev & TCP_FLAG_ACK))
		return CT_ESTABLISHED_TCP_NS;
	return CT_SYN_TIMEOUT_NS;
}

/* An expired entry is as good as none: the daemon's GC removes it later. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k, __u64 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&aegis_ct, k);

	if (e && e->expires_ns < now)
		return 0;
	return e;
}

/* Account one packet; returns the TCP flags among SYN/FIN/RST that this
 * direction shows for the first time (worth a flow event). */
static __always_inline __u8 ct_account(struct ct_entry *e, const struct tuple *t, int reply, __u64 now)
{
	__u8 interesting = TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST;
	__u8 seen, fresh;

	/* Plain adds, not atomic ones: the two directions of a connection
	 * run on different CPUs, and a lock-prefixed add on every packet
	 * costs more than the rare increment a race loses from a summary's
	 * count. */
	if (reply) {
		e->packets_rev++;
		e->bytes_rev += t->len;
		seen = e->flags_rev;
		if ((seen | t->tcp_flags) != seen)
			e->flags_rev = seen | t->tcp_flags;
	} else {
		e->packets_fwd++;
		e->bytes_fwd += t->len;
		seen = e->flags_fwd;
		if ((seen | t->tcp_flags) != seen)
			e->flags_fwd = seen | t->tcp_flags;
	}
	fresh = t->tcp_flags & ~seen & interesting;
	if (t->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		e->closing = 1;
	/* A new SYN on a closing entry is a reused tuple: a new connection. */
	if ((t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN && !reply && e->closing)
		e->closing = 0;
	/* Refresh the lifetime at most every second: the write is the costly
	 * part, a second of slack is not. */
	__u64 expires = now + ct_lifetime(e, t->proto);
	if (expires > e->expires_ns + 1000000000ULL || expires < e->expires_ns)
		e->expires_ns = expires;
	return fresh;
}

static __always_inline struct ct_entry *
ct_create(const struct ct_key *k, const struct tuple *t, __u8 scope, __u8 a_is_src,
	  __u32 src_id, __u32 dst_id, __u32 cookie, __u32 rev, __u64 now)
{
	struct ct_entry e = {
		.last_report_ns = now,
		.packets_fwd = 1,
		.bytes_fwd = t->len,
		.policy_rev = rev,
		.cookie = cookie,
		.src_identity = src_id,
		.dst_identity = dst_id,
		.flags_fwd = t->tcp_flags,
		.scope = scope,
		.a_is_src = a_is_src,
	};
	e.expires_ns = now + ct_lifetime(&e, t->proto);
	if (bpf_map_update_elem(&aegis_ct, k, &e, BPF_ANY))
		return 0;
	return bpf_map_lookup_elem(&aegis_ct, k);
}

#endif
