/* Endpoints: the pods whose host-side veth runs these programs, by ifindex
 * of that veth in the node's namespace. Written by aegisd before the CNI
 * plugin attaches the programs, so no packet of a new pod goes unjudged. */
#ifndef AEGIS_ENDPOINT_H
#define AEGIS_ENDPOINT_H

#include "common.h"

struct endpoint_info {
	__u32 identity;
	__u32 endpoint_id;
	__u32 flags;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_endpoints SEC(".maps");

/* Per local identity: whether some policy selects it in a direction.
 * Absent means no policy: that direction is allowed (Kubernetes semantics).
 * The cookies name the policy whose default deny a direction is in, so a
 * drop no rule decided still names a policy in its flow. */
struct enforcement {
	__u8 ingress;
	__u8 egress;
	__u16 pad;
	__u32 ingress_cookie;
	__u32 egress_cookie;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct enforcement);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_enforce SEC(".maps");

static __always_inline struct endpoint_info *lookup_endpoint(__u32 ifindex)
{
	return bpf_map_lookup_elem(&aegis_endpoints, &ifindex);
}

/* enforcement_of returns whether dir is enforced for identity, and the
 * cookie of its default deny. */
static __always_inline int enforcement_of(__u32 identity, __u8 dir, __u32 *default_cookie)
{
	struct enforcement *e = bpf_map_lookup_elem(&aegis_enforce, &identity);

	*default_cookie = 0;
	if (!e)
		return 0;
	if (dir == DIR_EGRESS) {
		*default_cookie = e->egress_cookie;
		return e->egress;
	}
	*default_cookie = e->ingress_cookie;
	return e->ingress;
}

#endif
