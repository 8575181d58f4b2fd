// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Entry points, attached with tcx on each pod's host-side veth. */
#include "datapath.h"

/* tcx ingress of the host veth: packets the pod sends. */
SEC("tcx/ingress")
int aegis_from_pod(struct __sk_buff *skb)
{
	/* Before anything else: a packet to the pod that aegis_to_pod sent
	 * back for the HTTP proxy. The pod's own packets carry no mark. */
	if (is_bounced(skb))
		return handle_bounced(skb);
	return handle_packet(skb, DIR_EGRESS);
}

/* tcx egress of the host veth: packets on their way into the pod. */
SEC("tcx/egress")
int aegis_to_pod(struct __sk_buff *skb)
{
	return handle_packet(skb, DIR_INGRESS);
}

/* Keep the event layout in BTF so bpf2go emits its Go twin. */
const struct flow_event *unused_flow_event __attribute__((unused));

char __license[] SEC("license") = "Dual BSD/GPL";
