// Command azure-cns-standin serves the few CNS endpoints that Azure CNI
// (azure-vnet v1.7.0) calls in transparent overlay mode, handing out pod IPs
// from one pod CIDR. See package github.com/aegis-cni/aegis/e2e/azurecns.
//
//	azure-cns-standin --pod-cidr 10.244.1.0/24 --host-ip 192.0.2.1/24 \
//	    [--listen 127.0.0.1:10090] [--host-gateway IP] [--cluster-cidr CIDR] \
//	    [--gateway 169.254.1.1] [--state FILE]
//
// It prints "listening on ADDR" on stderr once it accepts connections and
// stops cleanly on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aegis-cni/aegis/e2e/azurecns"
)

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("azure-cns-standin: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	var (
		listen      = flag.String("listen", azurecns.DefaultListen, "address to serve the CNS API on (azure-vnet's DEL always uses localhost:10090)")
		podCIDR     = flag.String("pod-cidr", "", "the node's pod CIDR; pod IPs are handed out from it (required)")
		clusterCIDR = flag.String("cluster-cidr", "", "overlay address space whose prefix length CNS reports (default: --pod-cidr)")
		hostIP      = flag.String("host-ip", "", "the node's primary IP with its subnet, e.g. 192.0.2.1/24; azure-vnet picks the master interface by this subnet (required)")
		hostGW      = flag.String("host-gateway", "", "the primary NIC's gateway (default: first address of --host-ip's subnet)")
		gateway     = flag.String("gateway", azurecns.OverlayGateway.String(), "NC gateway reported to the CNI")
		state       = flag.String("state", "", "file to persist allocations in (optional)")
	)
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments: %v", flag.Args())
	}

	var cfg azurecns.Config
	var err error
	if *podCIDR == "" || *hostIP == "" {
		return errors.New("--pod-cidr and --host-ip are required")
	}
	if cfg.PodCIDR, err = netip.ParsePrefix(*podCIDR); err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	if *clusterCIDR != "" {
		if cfg.ClusterCIDR, err = netip.ParsePrefix(*clusterCIDR); err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
	}
	if cfg.HostIP, err = netip.ParsePrefix(*hostIP); err != nil {
		return fmt.Errorf("--host-ip (an address with its subnet, e.g. 192.0.2.1/24): %w", err)
	}
	if *hostGW != "" {
		if cfg.HostGateway, err = netip.ParseAddr(*hostGW); err != nil {
			return fmt.Errorf("--host-gateway: %w", err)
		}
	}
	if cfg.Gateway, err = netip.ParseAddr(*gateway); err != nil {
		return fmt.Errorf("--gateway: %w", err)
	}
	cfg.StatePath = *state
	cfg.Logf = log.Printf

	srv, err := azurecns.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	eff := srv.Config()
	log.Printf("listening on %s (pod CIDR %s, host %s, host gateway %s, gateway %s, %d allocations)",
		ln.Addr(), eff.PodCIDR, eff.HostIP, eff.HostGateway, eff.Gateway, len(srv.Allocations()))

	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Printf("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}
