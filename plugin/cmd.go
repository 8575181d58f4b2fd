package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/api"
)

// openLog opens the plugin's log file; stdout belongs to the CNI result,
// so nothing else may print there.
func openLog(path string) (*slog.Logger, func()) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			return slog.New(slog.NewTextHandler(f, nil)).With("pid", os.Getpid()), func() { f.Close() }
		}
	}
	return slog.New(slog.DiscardHandler), func() {}
}

// daemonError turns an unreachable or unready daemon into the CNI error a
// runtime retries on.
func daemonError(err error, what string) error {
	if errors.Is(err, api.ErrUnavailable) {
		return types.NewError(types.ErrTryAgainLater, "aegisd is not available: "+what+" cannot proceed without it", err.Error())
	}
	return err
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, prev, k8s, err := parseConfig(args, true)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	log, closeLog := openLog(conf.LogFile)
	defer closeLog()
	log = log.With("cmd", "ADD", "container", args.ContainerID, "ifname", args.IfName)

	start := time.Now()
	link, err := findPodLink(args.Netns, args.IfName, prev)
	tFound := time.Now()
	if err != nil {
		log.Error("find pod link", "err", err)
		return types.NewError(types.ErrInvalidNetworkConfig, "cannot find the pod's host-side veth", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(conf.TimeoutSeconds)*time.Second)
	defer cancel()
	client := api.NewClient(conf.Socket, time.Duration(conf.TimeoutSeconds)*time.Second)
	resp, err := client.AddEndpoint(ctx, api.EndpointRequest{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		Netns:        args.Netns,
		HostIfName:   link.hostIfName,
		HostIfindex:  link.hostIfindex,
		IPs:          link.ips,
		PodNamespace: string(k8s.K8S_POD_NAMESPACE),
		PodName:      string(k8s.K8S_POD_NAME),
	})
	if err != nil {
		log.Error("register endpoint", "err", err)
		return daemonError(err, "ADD")
	}
	tRegistered := time.Now()
	paths := bpf.Paths{Root: conf.BPFRoot}
	err = noRPFilter(link.hostIfName)
	if err == nil {
		err = bpf.Attach(paths, bpf.Attachment{ContainerID: args.ContainerID, IfName: args.IfName, HostIfindex: link.hostIfindex})
	}
	if err != nil {
		log.Error("attach programs", "err", err)
		// Leave nothing behind: the runtime may never call DEL.
		if derr := client.DeleteEndpoint(ctx, args.ContainerID, args.IfName); derr != nil {
			log.Error("roll back endpoint", "err", derr)
		}
		return fmt.Errorf("attach programs to %s: %w", link.hostIfName, err)
	}
	log.Info("attached", "host", link.hostIfName, "ifindex", link.hostIfindex, "identity", resp.Identity, "endpoint", resp.ID,
		"find", tFound.Sub(start), "register", tRegistered.Sub(tFound), "attach", time.Since(tRegistered))
	return printPrevResult(conf)
}

// noRPFilter turns the reverse path filter off on the host veth: the
// datapath bounces connections into the pod that go to the HTTP proxy to
// this veth's ingress with the client's source address, which a strict
// filter would drop. The pod's own packets are judged by the datapath's
// policy, not by the route back to their source.
func noRPFilter(hostIf string) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+hostIf+"/rp_filter", []byte("0\n"), 0o644); err != nil {
		return fmt.Errorf("turn off rp_filter on %s: %w", hostIf, err)
	}
	return nil
}

// printPrevResult passes the primary plugin's result on unchanged: the
// bytes the runtime gave us, not a re-encoding that could add or drop
// fields.
func printPrevResult(conf *PluginConf) error {
	if _, err := os.Stdout.Write(conf.rawPrev); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// cmdDel removes the links, then tells aegisd. It succeeds when the netns,
// the links or the daemon are gone: only errors a retry can fix are
// returned. A daemon that was down forgets the endpoint when it starts
// (its links are gone).
func cmdDel(args *skel.CmdArgs) error {
	conf, _, _, err := parseConfig(args, false)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	log, closeLog := openLog(conf.LogFile)
	defer closeLog()
	log = log.With("cmd", "DEL", "container", args.ContainerID, "ifname", args.IfName)

	if err := bpf.Detach(bpf.Paths{Root: conf.BPFRoot}, args.ContainerID, args.IfName); err != nil {
		log.Error("detach", "err", err)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := api.NewClient(conf.Socket, 10*time.Second)
	if err := client.DeleteEndpoint(ctx, args.ContainerID, args.IfName); err != nil {
		if errors.Is(err, api.ErrUnavailable) {
			log.Warn("aegisd unavailable; it forgets the endpoint when it starts", "err", err)
			return nil
		}
		log.Error("delete endpoint", "err", err)
		return err
	}
	log.Info("deleted")
	return nil
}

// cmdCheck verifies the links are attached to the pod's veth and aegisd
// knows the endpoint.
func cmdCheck(args *skel.CmdArgs) error {
	conf, prev, _, err := parseConfig(args, true)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := api.NewClient(conf.Socket, 10*time.Second)
	st, err := client.Status(ctx)
	if err != nil {
		return daemonError(err, "CHECK")
	}
	if !st.Ready {
		return types.NewError(types.ErrTryAgainLater, "aegisd is not ready", st.Reason)
	}
	link, err := findPodLink(args.Netns, args.IfName, prev)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	paths := bpf.Paths{Root: conf.BPFRoot}
	if err := bpf.CheckAttachment(paths, bpf.Attachment{ContainerID: args.ContainerID, IfName: args.IfName, HostIfindex: link.hostIfindex}); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	maps, err := bpf.OpenMaps(paths)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	defer maps.Close()
	if _, ok := maps.LookupEndpoint(uint32(link.hostIfindex)); !ok {
		return fmt.Errorf("check: endpoint map has no entry for %s (ifindex %d)", link.hostIfName, link.hostIfindex)
	}
	return nil
}

// cmdStatus says whether aegisd can serve ADD. The CNI spec reserves code
// 50 (plugin not available) for exactly this.
func cmdStatus(args *skel.CmdArgs) error {
	conf, _, _, err := parseConfig(args, false)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := api.NewClient(conf.Socket, 5*time.Second).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "aegisd is not available", err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "aegisd is not ready", st.Reason)
	}
	return nil
}

// cmdGC removes every attachment the runtime no longer lists, then asks
// aegisd to forget the same endpoints.
func cmdGC(args *skel.CmdArgs) error {
	conf, _, _, err := parseConfig(args, false)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid configuration", err.Error())
	}
	log, closeLog := openLog(conf.LogFile)
	defer closeLog()
	paths := bpf.Paths{Root: conf.BPFRoot}
	valid := map[string]bool{}
	req := api.GCRequest{Valid: []api.Attachment{}}
	for _, a := range conf.ValidAttachments {
		valid[bpf.AttachmentName(a.ContainerID, a.IfName)] = true
		req.Valid = append(req.Valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if err := bpf.CleanTemp(paths); err != nil {
		return err
	}
	atts, err := bpf.ListAttachments(paths)
	if err != nil {
		return err
	}
	for _, a := range atts {
		if valid[bpf.AttachmentName(a.ContainerID, a.IfName)] {
			continue
		}
		if err := bpf.Detach(paths, a.ContainerID, a.IfName); err != nil {
			return err
		}
		log.Info("gc: removed attachment", "container", a.ContainerID, "ifname", a.IfName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := api.NewClient(conf.Socket, 10*time.Second).GC(ctx, req); err != nil {
		if errors.Is(err, api.ErrUnavailable) {
			log.Warn("gc: aegisd unavailable; it forgets the endpoints when it starts", "err", err)
			return nil
		}
		return err
	}
	return nil
}
