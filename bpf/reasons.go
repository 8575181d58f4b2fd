package bpf

import "strconv"

// Drop reasons the datapath reports (common.h); the numbers are Hubble's
// DropReason values, the names its enum names.
const (
	ReasonForwarded      = 0
	DropPolicyDenied     = 133
	DropInvalid          = 134
	DropCTInvalidHeader  = 135
	DropUnsupportedL3    = 139
	DropFragmentNotFound = 175
	DropPolicyDeny       = 181
)

var reasonNames = map[uint8]string{
	ReasonForwarded:      "FORWARDED",
	DropPolicyDenied:     "POLICY_DENIED",
	DropInvalid:          "INVALID_PACKET_DROPPED",
	DropCTInvalidHeader:  "CT_TRUNCATED_OR_INVALID_HEADER",
	DropUnsupportedL3:    "UNSUPPORTED_L3_PROTOCOL",
	DropFragmentNotFound: "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
	DropPolicyDeny:       "POLICY_DENY",
}

// ReasonName names a drop reason as Hubble does.
func ReasonName(r uint8) string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return "REASON_" + strconv.Itoa(int(r))
}
