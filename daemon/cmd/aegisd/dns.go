package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/agent"
	"github.com/aegis-cni/aegis/daemon/dnsproxy"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/l7proxy"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// The proxies (DNS, and HTTP for L7 rules) are a second process of this
// binary (`aegisd proxy`), started by aegisd and left running across
// aegisd's restarts: pods keep resolving, names keep being learned and
// HTTP keeps flowing while the rest of aegisd is down. A new version
// replaces the old one by binding the same ports (SO_REUSEPORT) before the
// old one is told to go.

func proxyFiles(stateDir string) (pidFile, tablesFile, cacheFile, logFile string) {
	return filepath.Join(stateDir, "proxy.pid"), filepath.Join(stateDir, "proxy-rules.json"),
		filepath.Join(stateDir, "fqdn-cache.json"), filepath.Join(stateDir, "proxy.log")
}

// startDNSProxy makes sure a proxy of this version runs and attaches it to
// the agent; its events become flows.
func startDNSProxy(ctx context.Context, o *options, a *agent.Agent, obs *observe.Observer, log *slog.Logger) error {
	c := dnsproxy.NewClient(o.dnsProxySocket)
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	st, err := c.Status(sctx)
	cancel()
	switch {
	case err == nil && st.Version == agent.Version && slices.Equal(st.Args, proxyArgs(o)):
		log.Info("dns proxy already running", "pid", st.PID, "port", st.Port)
	default:
		old := 0
		if err == nil {
			old = st.PID
			log.Info("replacing dns proxy", "pid", old, "version", st.Version, "port", st.Port)
		}
		if err := spawnDNSProxy(ctx, o, c, log); err != nil {
			return err
		}
		if old != 0 && old != os.Getpid() {
			// The new proxy shares the port; the old one may go.
			_ = syscall.Kill(old, syscall.SIGTERM)
		}
	}
	if err := a.SetDNSProxy(c); err != nil {
		return err
	}
	emit := func(ev observe.L7Event) {
		switch {
		case ev.DNS != nil:
			obs.AddDNS(ev.DNS)
		case ev.HTTP != nil:
			obs.AddHTTP(ev.HTTP)
		}
	}
	go c.FollowEvents(ctx, emit, log)
	go superviseDNSProxy(ctx, o, a, c, log)
	return nil
}

// superviseDNSProxy starts the proxy again if it dies while aegisd runs;
// the new one reloads the rules and the learned names from disk, and gets
// the current rules pushed.
func superviseDNSProxy(ctx context.Context, o *options, a *agent.Agent, c *dnsproxy.Client, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Status(sctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			continue
		}
		log.Warn("dns proxy not answering; starting it again", "err", err)
		if err := spawnDNSProxy(ctx, o, c, log); err != nil {
			log.Error("dns proxy", "err", err)
			continue
		}
		if err := a.SetDNSProxy(c); err != nil {
			log.Error("dns proxy: push rules", "err", err)
		}
	}
}

// proxyArgs are the flags aegisd starts the proxy with.
func proxyArgs(o *options) []string {
	return []string{"--bpf-root", o.bpfRoot, "--state-dir", o.stateDir, "--socket", o.dnsProxySocket,
		"--port", strconv.FormatUint(uint64(o.dnsProxyPort), 10), "--http-port", strconv.FormatUint(uint64(o.httpProxyPort), 10), "--dns-refuse", o.dnsRefuse,
		"--dns-upstream-timeout", o.dnsTimeout.String(), "--fqdn-min-ttl", o.fqdnMinTTL.String(),
		"--fqdn-max-ips-per-name", strconv.Itoa(o.fqdnMaxIPs), "--log-level", o.logLevel.String()}
}

func spawnDNSProxy(ctx context.Context, o *options, c *dnsproxy.Client, log *slog.Logger) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	_, _, _, logFile := proxyFiles(o.stateDir)
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return err
	}
	lf, err := os.OpenFile(logFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(self, append([]string{"proxy"}, proxyArgs(o)...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own session: signals to aegisd's group do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dns proxy: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		st, err := c.Status(sctx)
		cancel()
		if err == nil && st.PID == cmd.Process.Pid {
			log.Info("dns proxy started", "pid", st.PID, "port", st.Port, "log", logFile)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("dns proxy (pid %d) not ready after 10s; see %s", cmd.Process.Pid, logFile)
}

// runProxy is `aegisd proxy`: the proxy process.
func runProxy(argv []string) error {
	fs := flag.NewFlagSet("aegisd proxy", flag.ContinueOnError)
	bpfRoot := fs.String("bpf-root", bpf.DefaultRoot, "bpffs directory of aegisd's pinned maps")
	stateDir := fs.String("state-dir", "/var/lib/aegis", "aegisd's state directory (rules, learned names, pid file)")
	socket := fs.String("socket", "/var/run/aegis/proxy.sock", "root-only control socket aegisd drives the proxies through")
	port := fs.Uint("port", 10053, "port of the DNS proxy (UDP and TCP) on the node")
	httpPort := fs.Uint("http-port", 10080, "port of the HTTP proxy on the node; 0 disables it")
	refuse := fs.String("dns-refuse", "refused", "answer to queries no DNS rule allows: refused or nxdomain")
	timeout := fs.Duration("dns-upstream-timeout", 2*time.Second, "how long to wait for a server before answering SERVFAIL")
	minTTL := fs.Duration("fqdn-min-ttl", 0, "shortest time a learned address stays allowed")
	maxIPs := fs.Int("fqdn-max-ips-per-name", 50, "addresses kept per name and identity")
	var level slog.Level
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log level")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: aegisd proxy [flags]\n\nThe transparent DNS and HTTP proxies, a process of its own that aegisd starts\nand drives; it outlives aegisd's restarts. Not meant to be run by hand.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		return err
	}
	if *port == 0 || *port > 65535 || *httpPort > 65535 {
		return fmt.Errorf("--port %d, --http-port %d: not ports", *port, *httpPort)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "proxy")
	// The proxies allocate for every query and request while their live
	// heap stays small (rules, learned names): at Go's default the
	// collector ran every few milliseconds and took about 5% of their CPU
	// under load (perf, 2026-12-03). Collecting at five times the live
	// heap rather than twice still keeps the memory small; GOGC, when
	// set, decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// A debugging aid for the benchmarks: the proxy's CPU profile, written
	// when it ends. An environment variable rather than a flag, so that
	// aegisd does not replace a profiled proxy for its differing flags.
	if path := os.Getenv("AEGIS_PROXY_CPUPROFILE"); path != "" {
		stopProfile, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	pidFile, tablesFile, cacheFile, _ := proxyFiles(*stateDir)

	maps, err := bpf.OpenMaps(bpf.Paths{Root: *bpfRoot})
	if err != nil {
		return err
	}
	defer maps.Close()
	existing, err := maps.ListFQDN()
	if err != nil {
		return err
	}
	cache, err := fqdn.NewCache(maps, fqdn.Options{MinTTL: *minTTL, MaxIPsPerName: *maxIPs, Path: cacheFile}, existing)
	if err != nil {
		return err
	}
	rcode := dns.RcodeRefused
	if *refuse == "nxdomain" {
		rcode = dns.RcodeNameError
	}
	events := &dnsproxy.Events{}
	p, err := dnsproxy.New(dnsproxy.Config{Port: uint16(*port), RefuseCode: rcode, UpstreamTimeout: *timeout}, maps, cache,
		func(ev observe.DNSEvent) { events.Emit(observe.L7Event{DNS: &ev}) }, log)
	if err != nil {
		return err
	}
	var hp *l7proxy.Proxy
	if *httpPort != 0 {
		if err := l7proxy.DisableEarlyDemux(); err != nil {
			return err
		}
		if err := l7proxy.LoosenRPFilter(); err != nil {
			return err
		}
		hp, err = l7proxy.New(l7proxy.Config{Port: uint16(*httpPort)}, maps, func(ev observe.HTTPEvent) { events.Emit(observe.L7Event{HTTP: &ev}) }, log)
		if err != nil {
			return err
		}
	}
	// The policy routing that delivers redirected packets goes in before
	// the first rules that redirect: aegisd writes redirects only once
	// their rules are pushed here.
	setPolicy := func(res *policy.Result) error {
		if dnsproxy.NeedsRouting(res) {
			if err := dnsproxy.EnsureRouting(); err != nil {
				return err
			}
		}
		p.SetPolicy(res)
		if hp != nil {
			hp.SetPolicy(res)
		}
		return nil
	}
	// The rules of the last run hold until aegisd pushes new ones.
	if res, err := dnsproxy.LoadTables(tablesFile); err != nil {
		log.Warn("previous rules unreadable; refusing until aegisd pushes rules", "err", err)
	} else if res != nil {
		if err := setPolicy(res); err != nil {
			return err
		}
	}
	if err := maps.SetProxyPorts(uint16(*port), uint16(*httpPort)); err != nil {
		return err
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() {
		errc <- dnsproxy.ServeControl(ctx, *socket, tablesFile, agent.Version, argv, p, setPolicy, cache, events, log)
	}()
	go func() { errc <- p.Run(ctx) }()
	if hp != nil {
		go func() { errc <- hp.Run(ctx) }()
	}
	go expireFQDN(ctx, maps, cache, log)
	log.Info("proxies running", "dns", *port, "http", *httpPort, "socket", *socket, "pid", os.Getpid())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Leave the pid file to a successor that already replaced it.
	if b, rerr := os.ReadFile(pidFile); rerr == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(pidFile)
	}
	if cerr := cache.Save(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	return err
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// expireFQDN removes learned addresses past their TTL, keeping those live
// connections still use, and persists the cache.
func expireFQDN(ctx context.Context, maps *bpf.Maps, cache *fqdn.Cache, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if cache.Expired(now) {
				live := liveAddrs(maps)
				if _, err := cache.Sweep(now, func(ip netip.Addr) bool { return live[ip] }); err != nil {
					log.Warn("fqdn cache sweep", "err", err)
				}
			}
			if err := cache.Save(); err != nil {
				log.Warn("fqdn cache", "err", err)
			}
		}
	}
}

// liveAddrs is every address in a conntrack entry that has not expired
// and is not closing.
func liveAddrs(maps *bpf.Maps) map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	entries, err := maps.ListCT()
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !e.Closing { // ListCT skips expired entries
			out[e.Src.Addr()] = true
			out[e.Dst.Addr()] = true
		}
	}
	return out
}
