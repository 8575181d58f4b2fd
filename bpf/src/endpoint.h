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
 * Absent means no policy: that direction is allowed (Kubernetes semantics). */
struct enforcement {
	__u8 ingress;
	__u8 egress;
	__u16 pad;
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

static __always_inline int is_enforced(__u32 identity, __u8 dir)
{
	struct enforcement *e = bpf_map_lookup_elem(&aegis_enforce, &identity);

	if (!e)
		return 0;
	return dir == DIR_EGRESS ? e->egress : e->ingress;
}

#endif
