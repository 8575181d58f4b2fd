/* ipcache: IP or CIDR to identity, for every known pod in the cluster, the
 * nodes, and the CIDR and FQDN identities policies need. Longest prefix wins,
 * so a pod's /32 beats any CIDR that contains it. */
#ifndef AEGIS_IPCACHE_H
#define AEGIS_IPCACHE_H

#include "common.h"

#define IPCACHE_FAMILY_V4 4
#define IPCACHE_FAMILY_V6 6
/* prefixlen counts the family byte and padding before the address. */
#define IPCACHE_STATIC_PREFIX 32

struct ipcache_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_entry {
	__u32 identity;
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_ipcache SEC(".maps");

/* An address nobody told us about is outside the cluster: world. */
static __always_inline __u32 ipcache_identity_v4(__be32 addr)
{
	struct ipcache_key key = {
		.prefixlen = IPCACHE_STATIC_PREFIX + 32,
		.family = IPCACHE_FAMILY_V4,
	};
	__builtin_memcpy(key.addr, &addr, 4);

	struct ipcache_entry *e = bpf_map_lookup_elem(&aegis_ipcache, &key);
	return e ? e->identity : IDENTITY_WORLD;
}

#endif
