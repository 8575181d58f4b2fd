package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
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
	out := fs.String("o", "compact", "output: compact, json (one Hubble flow per line) or table")
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
	list("to-fqdn", "flows to this FQDN (DNS-learned names; * matches any name characters)", str(&ff.DestinationFqdn))
	list("from-fqdn", "flows from this FQDN (DNS-learned names)", str(&ff.SourceFqdn))
	workload := func(dst *[]*flow.Workload) func(string) error {
		return func(s string) error {
			// As hubble reads it: KIND/NAME, or NAME of any kind.
			w := &flow.Workload{Name: s}
			if kind, name, ok := strings.Cut(s, "/"); ok {
				w.Kind, w.Name = kind, name
			}
			if w.Name == "" {
				return fmt.Errorf("workload %q: want KIND/NAME or NAME", s)
			}
			*dst = append(*dst, w)
			return nil
		}
	}
	list("from-workload", "flows from pods of this workload: KIND/NAME (Deployment/web) or NAME", workload(&ff.SourceWorkload))
	list("to-workload", "flows to pods of this workload: KIND/NAME or NAME", workload(&ff.DestinationWorkload))
	list("drop-reason-desc", "e.g. POLICY_DENIED", func(s string) error {
		v, ok := flow.DropReason_value[strings.ToUpper(s)]
		if !ok {
			return fmt.Errorf("unknown drop reason %q", s)
		}
		ff.DropReasonDesc = append(ff.DropReasonDesc, flow.DropReason(v))
		return nil
	})
	list("type", "event type: drop, trace or l7", func(s string) error {
		switch s {
		case "drop":
			ff.EventType = append(ff.EventType, &flow.EventTypeFilter{Type: 1})
		case "trace":
			ff.EventType = append(ff.EventType, &flow.EventTypeFilter{Type: 4})
		case "l7":
			ff.EventType = append(ff.EventType, &flow.EventTypeFilter{Type: 129})
		default:
			return fmt.Errorf("unknown type %q: want drop, trace or l7", s)
		}
		return nil
	})
	list("http-method", "HTTP requests with this method", str(&ff.HttpMethod))
	list("http-path", "HTTP requests whose path matches this regular expression", str(&ff.HttpPath))
	list("http-status", "HTTP responses with this code, or prefix (4+)", str(&ff.HttpStatusCode))
	list("dns-query", "DNS queries whose name matches this regular expression", str(&ff.DnsQuery))
	if err := fs.Parse(argv); err != nil {
		return err
	}
	if *out != "compact" && *out != "json" && *out != "table" {
		return fmt.Errorf("-o %q: want compact, json or table", *out)
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
	var tw *tabwriter.Writer
	if *out == "table" {
		tw = tabwriter.NewWriter(os.Stdout, 2, 0, 3, ' ', 0)
		fmt.Fprintln(tw, "TIMESTAMP\tSOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY")
		defer tw.Flush()
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get flows from %s: %w", socket, err)
		}
		if l := resp.GetLostEvents(); l != nil {
			if err := printLost(resp, l, *out, tw); err != nil {
				return err
			}
			continue
		}
		f := resp.GetFlow()
		if f == nil {
			continue
		}
		if tw != nil {
			fmt.Fprintln(tw, tableRow(f))
			if *follow {
				// Following, a row cannot wait for later ones to be aligned.
				tw.Flush()
			}
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

// printLost shows events lost before they became flows as hubble does:
// "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(0) 1234"; in JSON, the
// LostEvent object itself.
func printLost(resp *observer.GetFlowsResponse, l *flow.LostEvent, out string, tw *tabwriter.Writer) error {
	summary := fmt.Sprintf("CPU(%d) %d", l.GetCpu().GetValue(), l.GetNumEventsLost())
	ts := resp.GetTime().AsTime().Local().Format("Jan _2 15:04:05.000")
	switch {
	case out == "json":
		b, err := protojson.Marshal(l)
		if err != nil {
			return err
		}
		fmt.Println(string(b))
	case tw != nil:
		fmt.Fprintln(tw, strings.Join([]string{ts, l.GetSource().String(), "-", "EVENTS LOST", "-", summary}, "\t"))
		tw.Flush()
	default:
		fmt.Printf("%s EVENTS LOST: %s %s\n", ts, l.GetSource(), summary)
	}
	return nil
}

func cloneFilter(f *flow.FlowFilter) *flow.FlowFilter {
	return proto.Clone(f).(*flow.FlowFilter)
}

// row is a flow as hubble's compact and table outputs show it.
type row struct {
	time, src, dst, point, proto, verdict, flags, policy string
}

// compact renders a flow the way hubble's compact output does.
func compact(f *flow.Flow) string {
	r := rowOf(f)
	var parts []string
	for _, p := range []string{r.src, "->", r.dst, r.point, r.proto, r.verdict} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return r.time + ": " + strings.Join(parts, " ") + r.flags + r.policy
}

// tableRow renders a flow as a row of hubble's table output:
// TIMESTAMP, SOURCE, DESTINATION, TYPE, VERDICT, SUMMARY.
func tableRow(f *flow.Flow) string {
	r := rowOf(f)
	summary := strings.TrimSpace(r.proto + r.flags + r.policy)
	verdict := r.verdict
	if l7Summary(f) != "" {
		verdict, summary = f.GetVerdict().String(), l7Detail(f)
	}
	return strings.Join([]string{r.time, r.src, r.dst, r.point, verdict, summary}, "\t")
}

func rowOf(f *flow.Flow) row {
	end := func(e *flow.Endpoint, ip string, names []string, port uint32) string {
		name := ip
		if len(names) > 0 {
			// As hubble prints it: the DNS names the pod knows the address by.
			name = strings.Join(names, ",")
		}
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
	if l7 := l7Summary(f); l7 != "" {
		// As hubble prints L7 flows: what the proxy saw, then the verdict.
		point, proto, flags = l7, "", ""
		verdict = f.GetVerdict().String() + " " + l7Detail(f)
	}
	return row{time: f.GetTime().AsTime().Local().Format("Jan _2 15:04:05.000"),
		src: end(f.GetSource(), f.GetIP().GetSource(), f.GetSourceNames(), sp), dst: end(f.GetDestination(), f.GetIP().GetDestination(), f.GetDestinationNames(), dp),
		point: point, proto: proto, verdict: verdict, flags: flags, policy: policyNote}
}

// l7Summary names an L7 flow's kind as hubble does ("dns-request",
// "http-response"), or "" for other flows.
func l7Summary(f *flow.Flow) string {
	l7 := f.GetL7()
	if l7 == nil {
		return ""
	}
	kind := "l7"
	switch {
	case l7.GetDns() != nil:
		kind = "dns"
	case l7.GetHttp() != nil:
		kind = "http"
	}
	if l7.GetType() == flow.L7FlowType_RESPONSE {
		return kind + "-response"
	}
	return kind + "-request"
}

func l7Detail(f *flow.Flow) string {
	l7 := f.GetL7()
	if d := l7.GetDns(); d != nil {
		if l7.GetType() == flow.L7FlowType_RESPONSE {
			return fmt.Sprintf("(DNS Answer %q TTL: %d (Proxy %s %s) RCode: %d)", strings.Join(d.GetIps(), ","), d.GetTtl(), d.GetQuery(), strings.Join(d.GetQtypes(), ","), d.GetRcode())
		}
		return fmt.Sprintf("(DNS Query %s %s)", d.GetQuery(), strings.Join(d.GetQtypes(), ","))
	}
	if h := l7.GetHttp(); h != nil {
		if l7.GetType() == flow.L7FlowType_RESPONSE {
			return fmt.Sprintf("(%s %d %dms (%s %s))", h.GetProtocol(), h.GetCode(), l7.GetLatencyNs()/1e6, h.GetMethod(), h.GetUrl())
		}
		return fmt.Sprintf("(%s %s %s)", h.GetProtocol(), h.GetMethod(), h.GetUrl())
	}
	return ""
}
