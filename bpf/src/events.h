/* Flow events and counters. Drops are always reported; forwarded traffic on
 * a new connection, on the first SYN/FIN/RST of a direction, and as a
 * periodic summary. Wakeups of the reader are batched: the reader polls on a
 * short timer and is only woken early when the ring fills up. */
#ifndef AEGIS_EVENTS_H
#define AEGIS_EVENTS_H

#include "common.h"
#include "parse.h"

#define EVENT_DROP 1
#define EVENT_NEW 2
#define EVENT_TCP_FLAGS 3
#define EVENT_SUMMARY 4

#define VERDICT_FORWARDED 1
#define VERDICT_DROPPED 2

/* Wake the reader early each time this much more is waiting. */
#define EVENTS_WAKEUP_BYTES (256 * 1024)

/* How often a live connection is summarised (settable at load time). */
volatile const __u64 summary_interval_ns = 10ULL * 1000000000ULL;

/* Flow events on or off (settable at load time): off, the datapath writes
 * no event and counts nothing lost; the counters still count every packet. */
volatile const __u8 flow_events = 1;

struct flow_event {
	__u64 ts_ns;
	__u64 packets;
	__u64 bytes;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 len;
	__u8 proto;
	__u8 type;
	__u8 verdict;
	__u8 reason;
	__u8 dir;
	__u8 tcp_flags;
	__u8 ct_state;
	__u8 pad;
};

/* A flow event's room in the ring: the record header, then the event. */
#define EVENTS_RECORD_BYTES (8 + sizeof(struct flow_event))

/* The default size; aegisd may load it with another (--flow-ring-size). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_events SEC(".maps");

/* Counters by (reason, direction): index reason*2+dir. Reason 0 counts
 * forwarded traffic. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 512);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_counters SEC(".maps");

/* Events the ring had no room for: never silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} aegis_lost SEC(".maps");

static __always_inline void count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 idx = ((__u32)reason << 1) | (dir & 1);
	struct counter *c = bpf_map_lookup_elem(&aegis_counters, &idx);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void emit(const struct tuple *t, __u32 ifindex, __u8 type, __u8 reason,
				 __u8 dir, __u32 src_id, __u32 dst_id, __u32 cookie, __u8 ct_state,
				 __u64 packets, __u64 bytes)
{
	if (!flow_events)
		return;

	struct flow_event *ev = bpf_ringbuf_reserve(&aegis_events, sizeof(*ev), 0);

	if (!ev) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&aegis_lost, &zero);
		if (lost)
			(*lost)++;
		return;
	}
	/* The precise clock, read here only: the judgement itself runs on
	 * the coarse one, ~20 ns a packet cheaper in a VM. */
	ev->ts_ns = bpf_ktime_get_ns();
	ev->packets = packets;
	ev->bytes = bytes;
	ev->ifindex = ifindex;
	ev->src_identity = src_id;
	ev->dst_identity = dst_id;
	ev->cookie = cookie;
	ev->saddr = t->saddr;
	ev->daddr = t->daddr;
	ev->sport = t->sport;
	ev->dport = t->dport;
	ev->len = t->len;
	ev->proto = t->proto;
	ev->type = type;
	ev->verdict = reason ? VERDICT_DROPPED : VERDICT_FORWARDED;
	ev->reason = reason;
	ev->dir = dir;
	ev->tcp_flags = t->tcp_flags;
	ev->ct_state = ct_state;
	ev->pad = 0;

	/* Wake the reader when the waiting data, this record included, goes
	 * past a multiple of EVENTS_WAKEUP_BYTES: once per 256 KiB, not on
	 * every event once that much waits (each wakeup is an interrupt, and
	 * they would come fastest when the reader is furthest behind). A
	 * crossing missed between two CPUs is caught at the next multiple or
	 * by the reader's own poll; a blocked reader means an empty ring, so
	 * the first crossing finds it. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(&aegis_events, BPF_RB_AVAIL_DATA);
	if (avail / EVENTS_WAKEUP_BYTES != (avail - EVENTS_RECORD_BYTES) / EVENTS_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(ev, flags);
}

#endif
