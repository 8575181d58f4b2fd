package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/agent"
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// outputFlags parses the per-command flags every command shares (-o).
func outputFlags(name string, argv []string, extra func(*flag.FlagSet)) (string, error) {
	fs := flag.NewFlagSet("aegis "+name, flag.ContinueOnError)
	out := fs.String("o", "table", "output format: table or json")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(argv); err != nil {
		return "", err
	}
	if *out != "table" && *out != "json" {
		return "", fmt.Errorf("-o %q: want table or json", *out)
	}
	if fs.NArg() > 0 {
		return "", fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return *out, nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(header string, rows [][]string) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
}

func cmdStatus(ctx context.Context, c *api.Client, argv []string) error {
	out, err := outputFlags("status", argv, nil)
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(st)
	}
	ready := "yes"
	if !st.Ready {
		ready = "no (" + st.Reason + ")"
	}
	fmt.Printf("Ready:            %s\n", ready)
	fmt.Printf("Version:          %s\n", st.Version)
	fmt.Printf("Node:             %s\n", st.NodeName)
	fmt.Printf("Started:          %s\n", st.Started.Format(time.RFC3339))
	fmt.Printf("BPF root:         %s\n", st.BPFRoot)
	fmt.Printf("Endpoints:        %d\n", st.Endpoints)
	fmt.Printf("Identities:       %d\n", st.Identities)
	fmt.Printf("Policy entries:   %d (revision %d)\n", st.PolicyEntries, st.PolicyRevision)
	fmt.Printf("IPCache entries:  %d\n", st.IPCacheEntries)
	fmt.Printf("Source:           %s %s (generation %d, %d policies)\n", st.Source.Kind, st.Source.Location, st.Source.Generation, st.Source.Policies)
	for _, r := range st.Source.Rejected {
		fmt.Printf("  rejected:       %s\n", r)
	}
	if st.Flows.Events {
		fmt.Printf("Flows:            %d seen, %d lost in the datapath's ring, %d undecodable, %d missed by slow followers (%d/%d kept)\n",
			st.Flows.Seen, st.Flows.Lost, st.Flows.DecodeErrors, st.Flows.SubscriberLag, st.Flows.Stored, st.Flows.Capacity)
	} else {
		fmt.Printf("Flows:            off (aegisd --flow-events=false); %d seen from the proxies\n", st.Flows.Seen)
	}
	if st.FlowLogs.Path != "" {
		fmt.Printf("Flow logs:        %s (%d written, %d lost)\n", st.FlowLogs.Path, st.FlowLogs.Written, st.FlowLogs.Lost)
		if st.FlowLogs.LastErr != "" {
			fmt.Printf("  last error:     %s\n", st.FlowLogs.LastErr)
		}
		for _, l := range st.FlowLogs.Logs {
			reason := ""
			if l.Reason != "" {
				reason = ": " + l.Reason
			}
			fmt.Printf("  ContainerNetworkLog %s: %s%s\n", l.Name, l.State, reason)
		}
	}
	if !st.LastRegen.At.IsZero() {
		res := "ok"
		if st.LastRegen.Error != "" {
			res = "FAILED: " + st.LastRegen.Error
		}
		fmt.Printf("Last regeneration: %s, took %s, %s\n", st.LastRegen.At.Format(time.RFC3339), st.LastRegen.Duration.Round(time.Microsecond), res)
	}
	return nil
}

func enforcement(in, eg bool) string {
	var s []string
	if in {
		s = append(s, "ingress")
	}
	if eg {
		s = append(s, "egress")
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

func cmdEndpoints(ctx context.Context, c *api.Client, argv []string) error {
	out, err := outputFlags("endpoint list", argv, nil)
	if err != nil {
		return err
	}
	eps, err := c.Endpoints(ctx)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(eps)
	}
	var rows [][]string
	for _, e := range eps {
		ips := make([]string, len(e.IPs))
		for i, ip := range e.IPs {
			ips[i] = ip.String()
		}
		rows = append(rows, []string{fmt.Sprint(e.ID), e.PodNamespace + "/" + e.PodName, fmt.Sprint(e.Identity),
			strings.Join(ips, ","), fmt.Sprintf("%s(%d)", e.HostIfName, e.HostIfindex), enforcement(e.IngressEnforced, e.EgressEnforced), short(e.ContainerID)})
	}
	table("ID\tPOD\tIDENTITY\tIPS\tHOST VETH\tENFORCED\tCONTAINER", rows)
	return nil
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func cmdIdentities(ctx context.Context, c *api.Client, argv []string) error {
	out, err := outputFlags("identity list", argv, nil)
	if err != nil {
		return err
	}
	ids, err := c.Identities(ctx)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(ids)
	}
	var rows [][]string
	for _, id := range ids {
		rows = append(rows, []string{fmt.Sprint(id.ID), id.Kind, fmt.Sprint(id.Endpoints), strings.Join(id.Labels, " ")})
	}
	table("ID\tKIND\tENDPOINTS\tLABELS", rows)
	return nil
}

func cmdPolicy(ctx context.Context, c *api.Client, argv []string) error {
	var identity, endpoint, pod string
	out, err := outputFlags("policy get", argv, func(fs *flag.FlagSet) {
		fs.StringVar(&identity, "identity", "", "numeric identity")
		fs.StringVar(&endpoint, "endpoint", "", "container ID of an endpoint")
		fs.StringVar(&pod, "pod", "", "pod as NAMESPACE/NAME")
	})
	if err != nil {
		return err
	}
	q := url.Values{}
	if identity != "" {
		q.Set("identity", identity)
	}
	if endpoint != "" {
		q.Set("endpoint", endpoint)
	}
	if pod != "" {
		q.Set("pod", pod)
	}
	ps, err := c.Policy(ctx, q)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(ps)
	}
	for i, p := range ps {
		if i > 0 {
			fmt.Println()
		}
		fmt.Printf("Identity %d  %s\n", p.Identity, strings.Join(p.Labels, " "))
		fmt.Printf("Enforced: %s\n", enforcement(p.IngressEnforced, p.EgressEnforced))
		if len(p.Rules) > 0 {
			fmt.Println("Rules:")
			for _, r := range p.Rules {
				where := fmt.Sprintf("%s[%d]", r.Direction, r.Index)
				if r.Path != "" {
					where = r.Path
				}
				fmt.Printf("  [%d] %s %s %s\n", r.Cookie, r.Kind, strings.TrimPrefix(r.Namespace+"/"+r.Name, "/"), where)
			}
		}
		var rows [][]string
		for _, e := range p.Entries {
			rows = append(rows, []string{e.Direction, fmt.Sprint(e.Remote), e.Proto, e.Ports, e.Action, fmt.Sprint(e.Cookie)})
		}
		table("DIRECTION\tREMOTE\tPROTO\tPORTS\tACTION\tCOOKIE", rows)
	}
	return nil
}

func cmdBPF(g globals, cmd string, argv []string) error {
	out, err := outputFlags(cmd, argv, nil)
	if err != nil {
		return err
	}
	m, err := bpf.OpenMaps(bpf.Paths{Root: g.bpfRoot})
	if err != nil {
		return err
	}
	defer m.Close()
	switch cmd {
	case "bpf endpoint list":
		eps, err := m.ListEndpoints()
		if err != nil {
			return err
		}
		if out == "json" {
			return printJSON(eps)
		}
		var rows [][]string
		for _, k := range sortedKeys(eps) {
			rows = append(rows, []string{fmt.Sprint(k), fmt.Sprint(eps[k].Identity), fmt.Sprint(eps[k].EndpointID)})
		}
		table("IFINDEX\tIDENTITY\tENDPOINT", rows)
	case "bpf policy list":
		entries, err := m.ListPolicy()
		if err != nil {
			return err
		}
		type row struct {
			Key   policy.Key   `json:"key"`
			Entry policy.Entry `json:"entry"`
		}
		var list []row
		for k, e := range entries {
			list = append(list, row{k, e})
		}
		slices.SortFunc(list, func(a, b row) int {
			return compareTuple([]uint32{a.Key.Local, uint32(a.Key.Dir), a.Key.Remote, uint32(a.Key.Proto), uint32(a.Key.Port)},
				[]uint32{b.Key.Local, uint32(b.Key.Dir), b.Key.Remote, uint32(b.Key.Proto), uint32(b.Key.Port)})
		})
		if out == "json" {
			return printJSON(list)
		}
		var rows [][]string
		for _, r := range list {
			rows = append(rows, []string{fmt.Sprint(r.Key.Local), r.Key.Dir.String(), fmt.Sprint(r.Key.Remote), agent.ProtoName(r.Key.Proto),
				agent.PortsString(r.Key.Port, r.Key.PortPrefixLen), r.Entry.Action.String(), fmt.Sprint(r.Entry.Cookie)})
		}
		table("LOCAL\tDIRECTION\tREMOTE\tPROTO\tPORTS\tACTION\tCOOKIE", rows)
	case "bpf ipcache list":
		ipc, err := m.ListIPCache()
		if err != nil {
			return err
		}
		if out == "json" {
			js := map[string]uint32{}
			for p, id := range ipc {
				js[p.String()] = id
			}
			return printJSON(js)
		}
		var rows [][]string
		for p, id := range ipc {
			rows = append(rows, []string{p.String(), fmt.Sprint(id)})
		}
		slices.SortFunc(rows, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
		table("PREFIX\tIDENTITY", rows)
	case "bpf ct list":
		cts, err := m.ListCT()
		if err != nil {
			return err
		}
		if out == "json" {
			return printJSON(cts)
		}
		var rows [][]string
		for _, e := range cts {
			rows = append(rows, []string{agent.ProtoName(e.Proto), e.Src.String(), e.Dst.String(), e.Scope,
				fmt.Sprintf("%d/%d", e.SrcIdentity, e.DstIdentity), fmt.Sprintf("%d/%d", e.PacketsFwd, e.PacketsRev),
				fmt.Sprintf("%d/%d", e.BytesFwd, e.BytesRev), e.Expires.Round(time.Second).String(), fmt.Sprint(e.Cookie)})
		}
		table("PROTO\tSOURCE\tDESTINATION\tSCOPE\tIDENTITIES\tPACKETS\tBYTES\tEXPIRES\tCOOKIE", rows)
	case "bpf counters":
		cs, err := m.ReadCounters()
		if err != nil {
			return err
		}
		lost, err := m.LostEvents()
		if err != nil {
			return err
		}
		type row struct {
			Reason    string `json:"reason"`
			Direction string `json:"direction"`
			Packets   uint64 `json:"packets"`
			Bytes     uint64 `json:"bytes"`
		}
		var list []row
		for k, v := range cs {
			list = append(list, row{bpf.ReasonName(k.Reason), policy.Direction(k.Dir).String(), v.Packets, v.Bytes})
		}
		slices.SortFunc(list, func(a, b row) int { return strings.Compare(a.Reason+a.Direction, b.Reason+b.Direction) })
		if out == "json" {
			return printJSON(map[string]any{"counters": list, "lostEvents": lost})
		}
		var rows [][]string
		for _, r := range list {
			rows = append(rows, []string{r.Reason, r.Direction, fmt.Sprint(r.Packets), fmt.Sprint(r.Bytes)})
		}
		table("REASON\tDIRECTION\tPACKETS\tBYTES", rows)
		fmt.Printf("lost flow events: %d\n", lost)
	}
	return nil
}

func sortedKeys[V any](m map[uint32]V) []uint32 {
	var ks []uint32
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func compareTuple(a, b []uint32) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func cmdTrace(ctx context.Context, c *api.Client, argv []string) error {
	var req api.TraceRequest
	var port uint
	out, err := outputFlags("policy trace", argv, func(fs *flag.FlagSet) {
		fs.StringVar(&req.Source, "src", "", "source: NAMESPACE/POD, an IP address, world or host")
		fs.StringVar(&req.Destination, "dst", "", "destination: NAMESPACE/POD, an IP address, world, host, or a DNS name (its learned addresses)")
		fs.StringVar(&req.DNSName, "dns-name", "", "for a port the DNS proxy handles: the name queried, to say whether the DNS rules allow it")
		fs.StringVar(&req.HTTPMethod, "http-method", "", "for a port the HTTP proxy handles: the request's method (default GET)")
		fs.StringVar(&req.HTTPPath, "http-path", "", "for a port the HTTP proxy handles: the request's path (default /)")
		fs.StringVar(&req.Protocol, "proto", "TCP", "protocol: TCP, UDP, SCTP or ICMP")
		fs.UintVar(&port, "port", 0, "destination port")
	})
	if err != nil {
		return err
	}
	if req.Source == "" || req.Destination == "" {
		return fmt.Errorf("policy trace needs --src and --dst")
	}
	if port > 65535 {
		return fmt.Errorf("--port %d: want 0-65535", port)
	}
	req.Port = uint16(port)
	resp, err := c.Trace(ctx, req)
	if err != nil {
		return err
	}
	if out == "json" {
		return printJSON(resp)
	}
	fmt.Printf("%s (identity %d) -> %s (identity %d) %s/%d: %s\n", resp.Source.Name, resp.Source.Identity,
		resp.Destination.Name, resp.Destination.Identity, strings.ToUpper(req.Protocol), req.Port, resp.Verdict)
	for _, s := range resp.Steps {
		rule := ""
		if s.Rule != "" {
			rule = ": " + s.Rule
		}
		fmt.Printf("  %-7s at identity %d: %s, %s%s\n", s.Direction, s.Local, s.Verdict, s.Reason, rule)
	}
	return nil
}
