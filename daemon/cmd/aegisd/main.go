// Command aegisd is Aegis's node daemon: identities, policy compilation,
// the pinned datapath maps, and the local API the CNI plugin and the
// `aegis` CLI talk to.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/agent"
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/flowlog"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/metrics"
	"github.com/aegis-cni/aegis/daemon/observe"
)

type options struct {
	bpfRoot         string
	stateDir        string
	socket          string
	manifests       string
	kubeconfig      string
	inCluster       bool
	nodeName        string
	nodeIPs         []netip.Addr
	logLevel        slog.Level
	summaryInterval time.Duration
	flowCapacity    int
	flowRingSize    uint
	flowEvents      bool
	hubble          hubbleOptions
	flowLogFile     string
	flowLogMaxMB    int
	flowLogBackups  int
	metricsAddr     string
	dnsProxyPort    uint
	dnsProxySocket  string
	httpProxyPort   uint
	dnsRefuse       string
	dnsTimeout      time.Duration
	fqdnMinTTL      time.Duration
	fqdnMaxIPs      int
}

func parseFlags(argv []string) (*options, error) {
	o := &options{}
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("aegisd", flag.ContinueOnError)
	fs.StringVar(&o.bpfRoot, "bpf-root", bpf.DefaultRoot, "bpffs directory for pinned maps, programs and links (mounted if it is not a bpffs)")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/aegis", "directory for persisted endpoints and identities")
	fs.StringVar(&o.socket, "socket", api.DefaultSocket, "unix socket of the local API (root only)")
	fs.StringVar(&o.manifests, "manifests", "", "standalone source: directory of Namespace, Pod, Service, EndpointSlice and NetworkPolicy YAML manifests, watched for changes")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Kubernetes API source: kubeconfig file (or --in-cluster)")
	fs.BoolVar(&o.inCluster, "in-cluster", false, "Kubernetes API source with the pod's service account (as a DaemonSet)")
	fs.StringVar(&o.nodeName, "node-name", host, "this node's name")
	fs.Func("node-ip", "address of this node, given the host identity (repeatable; default: every address of this network namespace)", func(s string) error {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("invalid address %q", s)
		}
		o.nodeIPs = append(o.nodeIPs, ip)
		return nil
	})
	fs.Func("log-level", "debug, info, warn or error (default info)", func(s string) error {
		return o.logLevel.UnmarshalText([]byte(s))
	})
	o.hubble.register(fs)
	fs.StringVar(&o.flowLogFile, "flow-log-file", flowlog.DefaultPath, "flow log file for the flows ContainerNetworkLog objects select; empty disables flow logs")
	fs.IntVar(&o.flowLogMaxMB, "flow-log-max-size", 50, "rotate the flow log at this many MiB")
	fs.IntVar(&o.flowLogBackups, "flow-log-backups", 5, "rotated flow log files to keep")
	fs.StringVar(&o.metricsAddr, "metrics-addr", metrics.DefaultAddr, "address of the Prometheus /metrics endpoint (loopback by default); empty disables it")
	fs.IntVar(&o.flowCapacity, "flow-capacity", 4096, "how many recent flows aegisd keeps for aegis observe and the Hubble API")
	fs.DurationVar(&o.summaryInterval, "flow-summary-interval", 10*time.Second, "how often a live connection is summarised in a flow event")
	fs.UintVar(&o.flowRingSize, "flow-ring-size", bpf.DefaultFlowRingSize, "bytes of the ring the datapath writes flow events to (a power of two, at least a page; 72 bytes an event); events it has no room for are counted lost")
	fs.BoolVar(&o.flowEvents, "flow-events", true, "whether the datapath writes flow events; false leaves flows, the Hubble API, flow logs and hubble_* metrics without datapath flows (the aegis_* counters still count every packet)")
	fs.UintVar(&o.dnsProxyPort, "dns-proxy-port", 10053, "port of the transparent DNS proxy (UDP and TCP) on the node; 0 disables it, and pods with DNS rules lose DNS")
	fs.StringVar(&o.dnsProxySocket, "proxy-socket", "", "control socket of the proxy process (default: proxy.sock beside --socket)")
	fs.UintVar(&o.httpProxyPort, "http-proxy-port", 10080, "port of the transparent HTTP proxy for L7 rules on the node; 0 disables it, and ports with HTTP rules lose their traffic")
	fs.StringVar(&o.dnsRefuse, "dns-refuse", "refused", "answer to queries no DNS rule allows: refused or nxdomain")
	fs.DurationVar(&o.dnsTimeout, "dns-upstream-timeout", 2*time.Second, "how long the DNS proxy waits for a server before answering SERVFAIL")
	fs.DurationVar(&o.fqdnMinTTL, "fqdn-min-ttl", 0, "shortest time an address learned for toFQDNs stays allowed, whatever the answer's TTL")
	fs.IntVar(&o.fqdnMaxIPs, "fqdn-max-ips-per-name", 50, "addresses kept per name and identity for toFQDNs; the ones expiring first go")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: aegisd (--manifests DIR | --kubeconfig FILE | --in-cluster) [flags]\n\naegisd enforces network policy on this node's pods through eBPF programs that\nthe aegis-cni plugin attaches. Policy, pods and services come from a directory of\nKubernetes manifests or from the Kubernetes API.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		return nil, err
	}
	if o.flowLogMaxMB < 1 || o.flowLogBackups < 0 {
		return nil, fmt.Errorf("--flow-log-max-size must be at least 1 and --flow-log-backups at least 0")
	}
	if err := o.hubble.validate(); err != nil {
		return nil, err
	}
	if o.flowCapacity < 1 {
		return nil, fmt.Errorf("--flow-capacity %d: want at least 1", o.flowCapacity)
	}
	if o.flowRingSize > math.MaxUint32 {
		return nil, fmt.Errorf("--flow-ring-size %d: want at most %d", o.flowRingSize, uint32(math.MaxUint32))
	}
	if err := bpf.CheckFlowRingSize(uint32(o.flowRingSize)); err != nil {
		return nil, fmt.Errorf("--flow-ring-size: %w", err)
	}
	if o.dnsProxySocket == "" {
		o.dnsProxySocket = filepath.Join(filepath.Dir(o.socket), "proxy.sock")
	}
	if o.dnsProxyPort > 65535 || o.httpProxyPort > 65535 {
		return nil, fmt.Errorf("--dns-proxy-port %d, --http-proxy-port %d: not ports", o.dnsProxyPort, o.httpProxyPort)
	}
	if o.dnsRefuse != "refused" && o.dnsRefuse != "nxdomain" {
		return nil, fmt.Errorf("--dns-refuse %q: want refused or nxdomain", o.dnsRefuse)
	}
	if o.fqdnMaxIPs < 1 || o.fqdnMinTTL < 0 || o.dnsTimeout <= 0 {
		return nil, errors.New("--fqdn-max-ips-per-name must be at least 1, --fqdn-min-ttl at least 0 and --dns-upstream-timeout positive")
	}
	sources := 0
	for _, set := range []bool{o.manifests != "", o.kubeconfig != "", o.inCluster} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return nil, errors.New("give exactly one source: --manifests DIR, --kubeconfig FILE or --in-cluster")
	}
	if o.manifests != "" {
		if st, err := os.Stat(o.manifests); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("--manifests %s: not a directory", o.manifests)
		}
	}
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "proxy" {
		if err := runProxy(os.Args[2:]); err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "aegisd proxy:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "aegisd:", err)
		os.Exit(2)
	}
	// A debugging aid for the benchmarks, as AEGIS_PROXY_CPUPROFILE is for
	// the proxy process: aegisd's CPU profile, written when it ends.
	if path := os.Getenv("AEGIS_CPUPROFILE"); path != "" {
		stopProfile, err := startCPUProfile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "aegisd:", err)
			os.Exit(1)
		}
		defer stopProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "aegisd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))
	// client-go logs through klog: one log stream, one format.
	klog.SetSlogLogger(log)
	if err := o.hubble.loadTLS(log); err != nil {
		return err
	}
	a, err := agent.New(agent.Config{
		NodeName: o.nodeName, BPFRoot: o.bpfRoot, StateDir: o.stateDir,
		NodeIPs: o.nodeIPs, SummaryInterval: o.summaryInterval, Log: log,
		FlowRingSize: uint32(o.flowRingSize), NoFlowEvents: !o.flowEvents,
	})
	if err != nil {
		return err
	}
	defer a.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 8)
	obs := observe.New(a.Maps(), a, o.flowCapacity, log)
	a.SetObserver(obs)
	// The DNS proxy runs before the source delivers policy: the datapath
	// redirects to it only under rules it already holds.
	if o.dnsProxyPort != 0 {
		if err := startDNSProxy(ctx, o, a, obs, log); err != nil {
			return err
		}
	} else if err := a.Maps().SetProxyPorts(0, 0); err != nil {
		return err
	}
	go func() { errc <- api.Serve(ctx, o.socket, a, log) }()
	src, err := newSource(o, log)
	if err != nil {
		return err
	}
	// The flow-log exporter exists before the first snapshot, which
	// configures it from the snapshot's ContainerNetworkLogs.
	if o.flowLogFile != "" {
		exp := flowlog.New(o.flowLogFile, int64(o.flowLogMaxMB)<<20, o.flowLogBackups, o.nodeName)
		a.SetFlowLog(exp, o.flowLogFile)
		go exp.Run(ctx, obs)
	}
	go func() {
		errc <- src.run(ctx, func(s *manifests.Snapshot, rejected []manifests.FileError) {
			err := a.ApplySnapshot(ctx, s, rejected, src.kind, src.location)
			if err != nil && ctx.Err() == nil {
				log.Error("apply policy source", "err", err)
			}
			src.report(s, err)
			src.logStatus(ctx, a.FlowLogStatuses())
		})
	}()
	log.Info("aegisd started", "version", agent.Version, "node", o.nodeName, "bpfRoot", o.bpfRoot,
		"socket", o.socket, "source", src.kind+" "+src.location, "nodeIPs", strings.Trim(fmt.Sprint(o.nodeIPs), "[]"))
	go func() {
		if err := obs.Run(ctx); err != nil {
			errc <- fmt.Errorf("flow observer: %w", err)
		}
	}()
	if o.metricsAddr != "" {
		m := metrics.New(a.Maps(), obs)
		go m.Run(ctx)
		go func() {
			if err := m.Serve(ctx, o.metricsAddr); err != nil {
				errc <- err
			}
		}()
	}
	if err := startHubble(ctx, &o.hubble, obs, o.nodeName, o.nodeIPs, log, errc); err != nil {
		return err
	}
	go a.Run(ctx)
	select {
	case <-ctx.Done():
		log.Info("aegisd stopping; pinned programs and maps keep enforcing")
		return nil
	case err := <-errc:
		return err
	}
}
