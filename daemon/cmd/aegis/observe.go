package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// cmdObserve prints flows like `hubble observe`, through the same Hubble
// API and filters the hubble CLI uses, so both always agree.
func cmdObserve(ctx context.Context, socket string, argv []string) error {
	fs := flag.NewFlagSet("aegis observe", flag.ContinueOnError)
	out := fs.String("o", "compact", "output: compact or json (one Hubble flow per line)")
	last := fs.Uint64("last", 20, "how many of the most recent matching flows")
	follow := fs.Bool("follow", false, "keep printing new flows")
	since := fs.Duration("since", 0, "only flows newer than this (e.g. 5m)")
	ff := &flow.FlowFilter{}
	list := func(name, help string, add func(string) error) { fs.Func(name, help, add) }
	str := func(dst *[]string) func(string) error {
		return func(s string) error { *dst = append(*dst, s); return nil }
	}
	list("verdict", "FORWARDED or DROPPED", func(s string) error {
		v, ok := flow.Verdict_value[strings.ToUpper(s)]
		if !ok {
			return fmt.Errorf("unknown verdict %q", s)
		}
		ff.Verdict = append(ff.Verdict, flow.Verdict(v))
		return nil
	})
	var namespaces []string
	list("namespace", "flows with either end in this namespace", str(&namespaces))
	var pods []string
	list("pod", "flows with either end in this pod: [NAMESPACE/]NAME-PREFIX", str(&pods))
	list("from-pod", "flows from this pod: [NAMESPACE/]NAME-PREFIX", str(&ff.SourcePod))
	list("to-pod", "flows to this pod: [NAMESPACE/]NAME-PREFIX", str(&ff.DestinationPod))
	list("from-ip", "flows from this IP or CIDR", str(&ff.SourceIp))
	list("to-ip", "flows to this IP or CIDR", str(&ff.DestinationIp))
	list("protocol", "tcp, udp, sctp, icmpv4", str(&ff.Protocol))
	list("port", "flows to this port", str(&ff.DestinationPort))
	list("label", "flows with either end matching this label selector", str(&ff.SourceLabel))
	list("to-fqdn", "flows to this FQDN (DNS-learned names)", str(&ff.DestinationFqdn))
	list("drop-reason-desc", "e.g. POLICY_DENIED", func(s string) error {
		v, ok := flow.DropReason_value[strings.ToUpper(s)]
		if !ok {
			return fmt.Errorf("unknown drop reason %q", s)
		}
		ff.DropReasonDesc = append(ff.DropReasonDesc, flow.DropReason(v))
		return nil
	})
	list("type", "event type: drop or trace", func(s string) error {
		switch s {
		case "drop":
			ff.EventType = append(ff.EventType, &flow.EventTypeFilter{Type: 1})
		case "trace":
			ff.EventType = append(ff.EventType, &flow.EventTypeFilter{Type: 4})
		default:
			return fmt.Errorf("unknown type %q: want drop or trace", s)
		}
		return nil
	})
	if err := fs.Parse(argv); err != nil {
		return err
	}
	if *out != "compact" && *out != "json" {
		return fmt.Errorf("-o %q: want compact or json", *out)
	}
	// Either-end filters become two whitelist entries, as hubble does.
	whitelist := []*flow.FlowFilter{ff}
	if len(namespaces) > 0 || len(pods) > 0 || len(ff.SourceLabel) > 0 {
		src, dst := cloneFilter(ff), cloneFilter(ff)
		for _, ns := range namespaces {
			src.SourcePod, dst.DestinationPod = append(src.SourcePod, ns+"/"), append(dst.DestinationPod, ns+"/")
		}
		src.SourcePod, dst.DestinationPod = append(src.SourcePod, pods...), append(dst.DestinationPod, pods...)
		dst.DestinationLabel, dst.SourceLabel = dst.SourceLabel, nil
		whitelist = []*flow.FlowFilter{src, dst}
	}
	req := &observer.GetFlowsRequest{Number: *last, Follow: *follow, Whitelist: whitelist}
	if *since > 0 {
		req.Since = timestamppb.New(time.Now().Add(-*since))
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", socket, err)
	}
	defer conn.Close()
	stream, err := observer.NewObserverClient(conn).GetFlows(ctx, req)
	if err != nil {
		return fmt.Errorf("get flows from %s: %w", socket, err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get flows from %s: %w", socket, err)
		}
		f := resp.GetFlow()
		if f == nil {
			continue
		}
		if *out == "json" {
			b, err := protojson.Marshal(f)
			if err != nil {
				return err
			}
			fmt.Println(string(b))
			continue
		}
		fmt.Println(compact(f))
	}
}

func cloneFilter(f *flow.FlowFilter) *flow.FlowFilter {
	return proto.Clone(f).(*flow.FlowFilter)
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
