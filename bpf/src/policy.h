/* Policy: (local identity, remote identity, direction, protocol, port
 * prefix) to a verdict and the cookie of the rule that decided it. Keyed by
 * local identity so pods that share labels share entries. */
#ifndef AEGIS_POLICY_H
#define AEGIS_POLICY_H

#include "common.h"

/* local_id, remote_id, dir and proto always match in full; only the port is
 * a prefix, so a port range is a handful of entries. */
#define POLICY_STATIC_PREFIX 80
#define POLICY_FULL_PREFIX 96

struct policy_key {
	__u32 prefixlen;
	__u32 local_id;
	__u32 remote_id;
	__u8 dir;
	__u8 proto;
	__be16 dport;
};

struct policy_entry {
	__u8 action;
	__u8 flags;
	__be16 proxy_port;
	__u32 cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_policy SEC(".maps");

/* Bumped by aegisd after every policy change it writes, so conntrack entries
 * judged under an older revision are judged again on their next packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_policy_rev SEC(".maps");

static __always_inline __u32 policy_revision(void)
{
	__u32 zero = 0;
	__u32 *rev = bpf_map_lookup_elem(&aegis_policy_rev, &zero);

	return rev ? *rev : 0;
}

static __always_inline struct policy_entry *
policy_lookup_one(__u32 local_id, __u32 remote_id, __u8 dir, __u8 proto, __be16 dport)
{
	struct policy_key key = {
		.prefixlen = POLICY_FULL_PREFIX,
		.local_id = local_id,
		.remote_id = remote_id,
		.dir = dir,
		.proto = proto,
		.dport = dport,
	};
	return bpf_map_lookup_elem(&aegis_policy, &key);
}

/* Verdict for a packet of a connection the endpoint has not yet been allowed.
 *
 * Precedence (daemon/policy.Result.Lookup mirrors it, keep them together):
 *   1. (remote, proto, longest port prefix)
 *   2. (remote, any protocol, any port)     -- L3-only rules
 *   3. (any remote, proto, longest port prefix)
 *   4. (any remote, any protocol, any port)
 * A deny in any of the four wins; otherwise the first allow in this order;
 * otherwise default deny. Within one lookup the LPM returns only the longest
 * port prefix, so the compiler turns an allow nested inside a deny range into
 * a deny; across lookups we check all four. */
static __always_inline struct policy_entry
policy_verdict(__u32 local_id, __u32 remote_id, __u8 dir, __u8 proto, __be16 dport)
{
	struct policy_entry res = { .action = ACTION_DENY, .cookie = 0 };
	struct policy_entry *c1, *c2, *c3, *c4;

	c1 = policy_lookup_one(local_id, remote_id, dir, proto, dport);
	c2 = policy_lookup_one(local_id, remote_id, dir, 0, 0);
	c3 = policy_lookup_one(local_id, IDENTITY_ANY, dir, proto, dport);
	c4 = policy_lookup_one(local_id, IDENTITY_ANY, dir, 0, 0);

	/* Denies first, most specific first, so the verdict names the most
	 * specific deny; then the most specific allow. The barriers keep clang
	 * from merging the null checks into arithmetic on map value pointers,
	 * which the verifier refuses. */
	barrier_var(c1);
	barrier_var(c2);
	barrier_var(c3);
	barrier_var(c4);
	if (c1 && c1->action == ACTION_DENY) {
		res = *c1;
		goto deny;
	}
	if (c2 && c2->action == ACTION_DENY) {
		res = *c2;
		goto deny;
	}
	if (c3 && c3->action == ACTION_DENY) {
		res = *c3;
		goto deny;
	}
	if (c4 && c4->action == ACTION_DENY) {
		res = *c4;
		goto deny;
	}
	if (c1)
		return *c1;
	barrier_var(c2);
	if (c2)
		return *c2;
	barrier_var(c3);
	if (c3)
		return *c3;
	barrier_var(c4);
	if (c4)
		return *c4;
	return res;
deny:
	res.flags = 1; /* explicit deny */
	return res;
}

#endif
