/* Shared definitions of the Aegis datapath: return codes, identities,
 * directions and drop reasons. Every value here has a twin in Go
 * (bpf/types.go or daemon/policy/types.go); change both together. */
#ifndef AEGIS_COMMON_H
#define AEGIS_COMMON_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* tcx verdicts (linux/bpf.h of Debian 12 predates them). TCX_NEXT hands the
 * packet to whatever runs after us, so Aegis composes with other programs. */
#define TCX_NEXT -1
#define TCX_PASS 0
#define TCX_DROP 2

/* Reserved identities, numbered as Cilium numbers them. */
#define IDENTITY_ANY 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* Direction relative to the local endpoint. */
#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Drop reasons use Hubble's DropReason numbers so flows decode without a
 * translation table. 0 means "forwarded". */
#define REASON_FORWARDED 0
#define DROP_POLICY_DENIED 133   /* no rule allows it (default deny) */
#define DROP_INVALID 134         /* INVALID_PACKET_DROPPED */
#define DROP_CT_INVALID_HDR 135  /* CT_TRUNCATED_OR_INVALID_HEADER */
#define DROP_UNSUPPORTED_L3 139  /* UNSUPPORTED_L3_PROTOCOL */
#define DROP_FRAG_NOT_FOUND 175  /* FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND */
#define DROP_POLICY_DENY 181     /* an explicit deny rule matched */
#define DROP_SOCKET_LOOKUP 178   /* SOCKET_LOOKUP_FAILED: the proxy is not listening,
				 * or its upstream socket is gone */
#define DROP_SOCKET_ASSIGN 179   /* SOCKET_ASSIGN_FAILED */
#define DROP_PROXY_PROTO 180     /* PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL */

/* Policy actions (daemon/policy.Action). */
#define ACTION_NONE 0
#define ACTION_ALLOW 1
#define ACTION_DENY 2
#define ACTION_REDIRECT_DNS 3
#define ACTION_REDIRECT_L7 4

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif
