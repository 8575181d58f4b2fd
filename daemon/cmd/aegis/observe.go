package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"strings"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aegis-cni/aegis/daemon/api"
)

// cmdObserve prints recent flows like `hubble observe`.
func cmdObserve(ctx context.Context, c *api.Client, argv []string) error {
	q := url.Values{}
	fs := flag.NewFlagSet("aegis observe", flag.ContinueOnError)
	out := fs.String("o", "compact", "output: compact or json (one Hubble flow per line)")
	last := fs.Int("last", 20, "how many of the most recent matching flows")
	for _, f := range []struct{ name, help string }{
		{"verdict", "FORWARDED or DROPPED"},
		{"namespace", "flows with either end in this namespace"},
		{"pod", "flows with either end in this pod: [NAMESPACE/]NAME-PREFIX"},
		{"from-pod", "flows from this pod: [NAMESPACE/]NAME-PREFIX"},
		{"to-pod", "flows to this pod: [NAMESPACE/]NAME-PREFIX"},
	} {
		fs.Func(f.name, f.help, func(s string) error { q.Set(f.name, s); return nil })
	}
	if err := fs.Parse(argv); err != nil {
		return err
	}
	if *out != "compact" && *out != "json" {
		return fmt.Errorf("-o %q: want compact or json", *out)
	}
	q.Set("last", fmt.Sprint(*last))
	resp, err := c.Flows(ctx, q)
	if err != nil {
		return err
	}
	for _, raw := range resp.Flows {
		if *out == "json" {
			fmt.Println(string(raw))
			continue
		}
		var f flow.Flow
		if err := protojson.Unmarshal(raw, &f); err != nil {
			return fmt.Errorf("decode flow: %w", err)
		}
		fmt.Println(compact(&f))
	}
	if resp.Stats.KernelLost > 0 || resp.Stats.DecodeErrors > 0 {
		fmt.Printf("(lost flow events: %d in the kernel ring, %d undecodable)\n", resp.Stats.KernelLost, resp.Stats.DecodeErrors)
	}
	return nil
}

// compact renders a flow the way hubble's compact output does.
func compact(f *flow.Flow) string {
	end := func(e *flow.Endpoint, ip string, port uint32) string {
		name := ip
		if e.GetPodName() != "" {
			name = e.GetNamespace() + "/" + e.GetPodName()
		}
		if port != 0 {
			name += fmt.Sprintf(":%d", port)
		}
		label := fmt.Sprintf("ID:%d", e.GetIdentity())
		for _, l := range e.GetLabels() {
			if strings.HasPrefix(l, "reserved:") {
				label = strings.TrimPrefix(l, "reserved:")
			}
		}
		return fmt.Sprintf("%s (%s)", name, label)
	}
	var sp, dp uint32
	proto, flags := "", ""
	switch l := f.GetL4().GetProtocol().(type) {
	case *flow.Layer4_TCP:
		sp, dp, proto = l.TCP.GetSourcePort(), l.TCP.GetDestinationPort(), "TCP"
		var fl []string
		for _, x := range []struct {
			on   bool
			name string
		}{{l.TCP.GetFlags().GetSYN(), "SYN"}, {l.TCP.GetFlags().GetACK(), "ACK"}, {l.TCP.GetFlags().GetFIN(), "FIN"}, {l.TCP.GetFlags().GetRST(), "RST"}, {l.TCP.GetFlags().GetPSH(), "PSH"}} {
			if x.on {
				fl = append(fl, x.name)
			}
		}
		if len(fl) > 0 {
			flags = " (TCP Flags: " + strings.Join(fl, ", ") + ")"
		}
	case *flow.Layer4_UDP:
		sp, dp, proto = l.UDP.GetSourcePort(), l.UDP.GetDestinationPort(), "UDP"
	case *flow.Layer4_SCTP:
		sp, dp, proto = l.SCTP.GetSourcePort(), l.SCTP.GetDestinationPort(), "SCTP"
	case *flow.Layer4_ICMPv4:
		proto = "ICMPv4"
	}
	point := "to-endpoint"
	if f.GetTrafficDirection() == flow.TrafficDirection_EGRESS {
		point = "from-endpoint"
	}
	verdict := f.GetVerdict().String()
	if f.GetVerdict() == flow.Verdict_DROPPED {
		verdict = "Policy denied DROPPED"
		if f.GetDropReasonDesc() != flow.DropReason_POLICY_DENIED && f.GetDropReasonDesc() != flow.DropReason_POLICY_DENY {
			verdict = f.GetDropReasonDesc().String() + " DROPPED"
		}
	}
	var by []string
	for _, p := range append(append(f.GetIngressAllowedBy(), f.GetEgressAllowedBy()...), append(f.GetIngressDeniedBy(), f.GetEgressDeniedBy()...)...) {
		by = append(by, strings.TrimPrefix(p.GetNamespace()+"/"+p.GetName(), "/"))
	}
	policyNote := ""
	if len(by) > 0 {
		policyNote = " [policy " + strings.Join(by, ", ") + "]"
	}
	return fmt.Sprintf("%s: %s -> %s %s %s %s%s%s", f.GetTime().AsTime().Local().Format("Jan _2 15:04:05.000"),
		end(f.GetSource(), f.GetIP().GetSource(), sp), end(f.GetDestination(), f.GetIP().GetDestination(), dp),
		point, proto, verdict, flags, policyNote)
}
