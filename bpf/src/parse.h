/* Packet parsing: from the Ethernet header to the 5-tuple the rest of the
 * datapath works on. */
#ifndef AEGIS_PARSE_H
#define AEGIS_PARSE_H

#include "common.h"

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10

#define PARSE_OK 0
#define PARSE_NOT_IP 1     /* ARP and friends: not ours to judge */
#define PARSE_IPV6 2
#define PARSE_INVALID 3
#define PARSE_FRAGMENT 4   /* non-first IPv4 fragment: no L4 header */

struct tuple {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u16 len;
};

static __always_inline int parse_packet(struct __sk_buff *skb, struct tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	t->len = skb->len;
	if ((void *)(eth + 1) > data_end)
		return PARSE_INVALID;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return PARSE_IPV6;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_INVALID;
	if (ip->ihl < 5)
		return PARSE_INVALID;

	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	t->sport = 0;
	t->dport = 0;
	t->tcp_flags = 0;

	/* A non-first fragment has no ports: it cannot be judged by an L4 rule. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_FRAGMENT;

	void *l4 = (void *)ip + ip->ihl * 4;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		__u8 *th = l4;
		if ((void *)(th + 14) > data_end)
			return PARSE_INVALID;
		t->sport = *(__be16 *)th;
		t->dport = *(__be16 *)(th + 2);
		t->tcp_flags = th[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		/* UDP and SCTP both start with source and destination port. */
		__be16 *ports = l4;
		if ((void *)(ports + 2) > data_end)
			return PARSE_INVALID;
		t->sport = ports[0];
		t->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP: {
		__u8 *icmp = l4;
		if ((void *)(icmp + 8) > data_end)
			return PARSE_INVALID;
		/* Echo id stands in for ports so request and reply pair up in
		 * conntrack: the request is (id, 0), the reply (0, id). */
		if (icmp[0] == ICMP_ECHO)
			t->sport = *(__be16 *)(icmp + 4);
		else if (icmp[0] == ICMP_ECHOREPLY)
			t->dport = *(__be16 *)(icmp + 4);
		break;
	}
	}
	return PARSE_OK;
}

#endif
