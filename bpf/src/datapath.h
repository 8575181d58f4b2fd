/* The judgement of one packet at a pod's host-side veth. dir is the
 * endpoint's direction: DIR_EGRESS for packets the pod sends (tcx ingress
 * of the host veth), DIR_INGRESS for packets to the pod (tcx egress). */
#ifndef AEGIS_DATAPATH_H
#define AEGIS_DATAPATH_H

#include "common.h"
#include "parse.h"
#include "endpoint.h"
#include "ipcache.h"
#include "policy.h"
#include "conntrack.h"
#include "events.h"
#include "proxy.h"

/* to_proxy hands a packet of a redirected connection to its proxy. */
static __always_inline int to_proxy(struct __sk_buff *skb, const struct tuple *t, __u8 action, __u8 dir,
				    __u32 src_id, __u32 dst_id, __u32 cookie, __u64 now);

/* to_upstream hands a pod's answer on the HTTP proxy's upstream connection
 * to the proxy. */
static __always_inline int to_upstream(struct __sk_buff *skb, const struct tuple *t, __u8 dir,
				       const struct ct_entry *e, __u64 now);

static __always_inline int drop(struct __sk_buff *skb, const struct tuple *t, __u8 reason,
				__u8 dir, __u32 src_id, __u32 dst_id, __u32 cookie)
{
	count(reason, dir, t->len);
	emit(t, skb->ifindex, EVENT_DROP, reason, dir, src_id, dst_id, cookie, CT_NEW, 1, t->len);
	return TCX_DROP;
}

static __always_inline int forward(const struct tuple *t, __u8 dir)
{
	count(REASON_FORWARDED, dir, t->len);
	return TCX_NEXT;
}

static __always_inline void maybe_report(struct __sk_buff *skb, const struct tuple *t,
					 struct ct_entry *e, __u8 fresh_flags, int reply,
					 __u8 dir, __u64 now)
{
	if (fresh_flags) {
		emit(t, skb->ifindex, EVENT_TCP_FLAGS, 0, dir, reply ? e->dst_identity : e->src_identity,
		     reply ? e->src_identity : e->dst_identity, e->cookie,
		     reply ? CT_REPLY : CT_ESTABLISHED, 0, 0);
		return;
	}
	if (now - e->last_report_ns >= summary_interval_ns) {
		e->last_report_ns = now;
		emit(t, skb->ifindex, EVENT_SUMMARY, 0, dir, reply ? e->dst_identity : e->src_identity,
		     reply ? e->src_identity : e->dst_identity, e->cookie,
		     reply ? CT_REPLY : CT_ESTABLISHED, e->packets_fwd + e->packets_rev,
		     e->bytes_fwd + e->bytes_rev);
	}
}

static __always_inline int handle_packet(struct __sk_buff *skb, __u8 dir)
{
	struct endpoint_info *ep;
	struct tuple t = {};
	struct ct_key key;
	struct ct_entry *e = 0;
	__u8 fresh;
	__u64 now;
	int rc;

	/* The programs run only on our endpoints' veths, and conntrack is
	 * keyed by the veth: a connection found there belongs to this
	 * endpoint, so the endpoint is looked up only for the packets that
	 * are judged (one hash lookup fewer on most packets). */
	/* Conntrack lifetimes and summary intervals are seconds: the coarse
	 * clock (same base as bpf_ktime_get_ns, a tick behind at most) is
	 * plenty, and reading the precise one costs a packet ~20 ns here. */
	now = bpf_ktime_get_coarse_ns();
	rc = parse_packet(skb, &t);
	if (rc == PARSE_NOT_IP)
		return TCX_NEXT;

	__u8 a_is_src = 0;
	if (rc == PARSE_OK) {
		/* Precedence: a reply of a connection this endpoint allowed in
		 * the other direction passes without policy (to the HTTP proxy
		 * if the proxy opened it); then a connection of this direction
		 * judged under the current policy revision (the proxy's own
		 * packets into the pod pass where the client's are sent to the
		 * proxy: the two share a tuple). Both skip the ipcache and
		 * policy lookups: most packets end here. */
		ct_key_of(&key, &t, skb->ifindex, &a_is_src);
		e = ct_lookup(&key, now);
		if (e && e->scope != dir) {
			fresh = ct_account(e, &t, 1, now);
			maybe_report(skb, &t, e, fresh, 1, dir, now);
			if (e->proxy_upstream)
				return to_upstream(skb, &t, dir, e, now);
			return forward(&t, dir);
		}
		if (e && e->policy_rev == policy_revision()) {
			fresh = ct_account(e, &t, 0, now);
			maybe_report(skb, &t, e, fresh, 0, dir, now);
			if (dir == DIR_INGRESS && from_proxy_upstream(skb)) {
				if (!e->proxy_upstream)
					e->proxy_upstream = 1;
				return forward(&t, dir);
			}
			if (e->redirect)
				return to_proxy(skb, &t, e->redirect, dir, e->src_identity, e->dst_identity, e->cookie, now);
			return forward(&t, dir);
		}
	}

	/* Not an endpoint of ours (or one being torn down): not ours to judge. */
	ep = lookup_endpoint(skb->ifindex);
	if (!ep)
		return TCX_NEXT;
	__u32 local_id = ep->identity;

	__u32 default_cookie;
	int enforced = enforcement_of(local_id, dir, &default_cookie);
	if (rc != PARSE_OK && rc != PARSE_FRAGMENT) {
		if (!enforced)
			return forward(&t, dir);
		return drop(skb, &t, rc == PARSE_IPV6 ? DROP_UNSUPPORTED_L3 : DROP_CT_INVALID_HDR,
			    dir, 0, 0, 0);
	}

	__u32 remote_id = ipcache_identity_v4(dir == DIR_EGRESS ? t.daddr : t.saddr);
	__u32 src_id = dir == DIR_EGRESS ? local_id : remote_id;
	__u32 dst_id = dir == DIR_EGRESS ? remote_id : local_id;

	if (rc == PARSE_FRAGMENT) {
		if (!enforced)
			return forward(&t, dir);
		return drop(skb, &t, DROP_FRAG_NOT_FOUND, dir, src_id, dst_id, 0);
	}

	/* A new connection, or one to judge again under a new revision. */
	__u32 rev = policy_revision();
	struct policy_entry verdict = { .action = ACTION_ALLOW };

	if (enforced) {
		verdict = policy_verdict(local_id, remote_id, dir, t.proto, t.dport);
		/* No rule decided: an address a toFQDNs rule learned may still
		 * be allowed. An explicit deny stays a deny. */
		if (verdict.action == ACTION_DENY && !verdict.flags && dir == DIR_EGRESS) {
			__u32 c = fqdn_allowed(local_id, &t);
			if (c) {
				verdict.action = ACTION_ALLOW;
				verdict.cookie = c;
			}
		}
		if (verdict.action == ACTION_DENY && !verdict.cookie)
			verdict.cookie = default_cookie;
	}
	/* DNS is redirected on the pod's own packets only; HTTP both ways
	 * (traffic to the pod is bounced, see proxy.h). The proxy's own
	 * connection into the pod, from the client's address, is judged as
	 * the client's, but a redirect lets it in: the proxy applied the
	 * pod's HTTP rules already. The entry keeps the redirect all the
	 * same, for the client's packets on the same tuple. */
	__u8 upstream = dir == DIR_INGRESS && from_proxy_upstream(skb);
	__u8 redirect = 0;
	if (dir == DIR_EGRESS && (verdict.action == ACTION_REDIRECT_DNS || verdict.action == ACTION_REDIRECT_L7))
		redirect = verdict.action;
	if (dir == DIR_INGRESS && verdict.action == ACTION_REDIRECT_L7)
		redirect = verdict.action;
	if (verdict.action == ACTION_DENY) {
		if (e)
			bpf_map_delete_elem(&aegis_ct, &key);
		return drop(skb, &t, verdict.flags ? DROP_POLICY_DENY : DROP_POLICY_DENIED, dir,
			    src_id, dst_id, verdict.cookie);
	}

	if (e) {
		/* Still allowed under the new revision. */
		e->policy_rev = rev;
		e->cookie = verdict.cookie;
		e->redirect = redirect;
		if (upstream)
			e->proxy_upstream = 1;
		fresh = ct_account(e, &t, 0, now);
		maybe_report(skb, &t, e, fresh, 0, dir, now);
		if (redirect && !upstream)
			return to_proxy(skb, &t, redirect, dir, src_id, dst_id, verdict.cookie, now);
		return forward(&t, dir);
	}

	e = ct_create(&key, &t, dir, a_is_src, src_id, dst_id, verdict.cookie, rev, now);
	if (e) {
		e->redirect = redirect;
		e->proxy_upstream = upstream;
	}
	emit(&t, skb->ifindex, EVENT_NEW, 0, dir, src_id, dst_id, verdict.cookie, CT_NEW, 1, t.len);
	if (redirect && !upstream)
		return to_proxy(skb, &t, redirect, dir, src_id, dst_id, verdict.cookie, now);
	return forward(&t, dir);
}

static __always_inline int to_upstream(struct __sk_buff *skb, const struct tuple *t, __u8 dir,
				       const struct ct_entry *e, __u64 now)
{
	int reason = assign_upstream_reply(skb, t);

	if (reason)
		return drop(skb, t, reason, dir, e->dst_identity, e->src_identity, e->cookie);
	count(REASON_FORWARDED, dir, t->len);
	return TCX_PASS;
}

static __always_inline int to_proxy(struct __sk_buff *skb, const struct tuple *t, __u8 action, __u8 dir,
				    __u32 src_id, __u32 dst_id, __u32 cookie, __u64 now)
{
	if (dir == DIR_INGRESS) {
		count(REASON_FORWARDED, dir, t->len);
		return bounce_to_proxy(skb);
	}
	int reason = redirect_to_proxy(skb, t, action);

	if (reason)
		return drop(skb, t, reason, dir, src_id, dst_id, cookie);
	count(REASON_FORWARDED, dir, t->len);
	return TCX_PASS;
}

/* handle_bounced takes a packet of a connection into the pod that its
 * to-pod hook judged and bounced (to_proxy): it was accounted there, so it
 * only goes to the proxy here. */
static __always_inline int handle_bounced(struct __sk_buff *skb)
{
	struct tuple t = {};
	int reason = DROP_CT_INVALID_HDR;

	if (parse_packet(skb, &t) == PARSE_OK)
		reason = assign_bounced(skb, &t);
	if (!reason)
		return TCX_PASS;
	struct endpoint_info *ep = lookup_endpoint(skb->ifindex);
	return drop(skb, &t, reason, DIR_INGRESS, ipcache_identity_v4(t.saddr), ep ? ep->identity : 0, 0);
}

#endif
