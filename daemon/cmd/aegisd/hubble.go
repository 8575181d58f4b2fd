package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/aegis-cni/aegis/daemon/agent"
	"github.com/aegis-cni/aegis/daemon/certloader"
	"github.com/aegis-cni/aegis/daemon/hubble"
	"github.com/aegis-cni/aegis/daemon/observe"
)

// hubbleOptions are the Hubble API's flags, named as Cilium's agent names
// them.
type hubbleOptions struct {
	socket        string
	listenAddress string
	certFile      string
	keyFile       string
	clientCAFiles []string
	disableTLS    bool
	certReload    time.Duration

	certs *certloader.Server // loaded by loadTLS
}

func (h *hubbleOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&h.socket, "hubble-socket", hubble.DefaultSocket, "unix socket of the Hubble Observer API (root only); empty disables it")
	fs.StringVar(&h.listenAddress, "hubble-listen-address", "", `an additional TCP address for the Hubble API (Observer, Peer, health), e.g. ":4244", for hubble-relay and remote hubble CLIs; needs --hubble-tls-cert-file and --hubble-tls-key-file unless --hubble-disable-tls`)
	fs.StringVar(&h.certFile, "hubble-tls-cert-file", "", "PEM certificate (chain) the Hubble TCP listener serves; reloaded when it changes")
	fs.StringVar(&h.keyFile, "hubble-tls-key-file", "", "PEM private key of --hubble-tls-cert-file; reloaded when it changes")
	fs.Func("hubble-tls-client-ca-files", "PEM CA certificates that sign the clients of the Hubble TCP listener (comma-separated, repeatable); when given, clients must present a certificate one of them signed (mTLS)", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				h.clientCAFiles = append(h.clientCAFiles, f)
			}
		}
		return nil
	})
	fs.BoolVar(&h.disableTLS, "hubble-disable-tls", false, "serve --hubble-listen-address in plain text: anyone who reaches it reads every flow of the node")
	fs.DurationVar(&h.certReload, "hubble-tls-reload-interval", certloader.DefaultInterval, "how often the Hubble TLS files are checked for a new certificate, key or CA")
}

// validate checks the combination: a TCP listener is TLS unless plain
// text was asked for, and TLS files without a listener are a mistake.
func (h *hubbleOptions) validate() error {
	tlsFiles := h.certFile != "" || h.keyFile != "" || len(h.clientCAFiles) > 0
	switch {
	case h.listenAddress == "" && (tlsFiles || h.disableTLS):
		return errors.New("--hubble-tls-* and --hubble-disable-tls apply to --hubble-listen-address, which is not set")
	case h.listenAddress == "":
		return nil
	case h.disableTLS && tlsFiles:
		return errors.New("--hubble-disable-tls with --hubble-tls-* files: choose TLS or plain text")
	case !h.disableTLS && (h.certFile == "" || h.keyFile == ""):
		return fmt.Errorf("--hubble-listen-address %s needs --hubble-tls-cert-file and --hubble-tls-key-file (or --hubble-disable-tls to serve it in plain text)", h.listenAddress)
	case h.certReload <= 0:
		return fmt.Errorf("--hubble-tls-reload-interval %s: want a positive duration", h.certReload)
	}
	if _, _, err := net.SplitHostPort(h.listenAddress); err != nil {
		return fmt.Errorf("--hubble-listen-address %q: %w", h.listenAddress, err)
	}
	return nil
}

// loadTLS reads the TCP listener's key material, before aegisd pins or
// starts anything: a file that is missing or does not parse stops it
// with an error naming the file.
func (h *hubbleOptions) loadTLS(log *slog.Logger) error {
	if h.listenAddress == "" || h.disableTLS {
		return nil
	}
	certs, err := certloader.NewServer(certloader.Files{Cert: h.certFile, Key: h.keyFile, ClientCAs: h.clientCAFiles}, log)
	if err != nil {
		return fmt.Errorf("hubble TLS: %w", err)
	}
	h.certs = certs
	return nil
}

// startHubble serves the Hubble API on the unix socket and, if asked, on
// TCP, with the key material loadTLS loaded.
func startHubble(ctx context.Context, h *hubbleOptions, obs *observe.Observer, node string, nodeIPs []netip.Addr, log *slog.Logger, errc chan<- error) error {
	if h.socket == "" && h.listenAddress == "" {
		return nil
	}
	srv := hubble.NewServer(obs, node, agent.Version)
	var tlsConf *tls.Config
	if h.listenAddress != "" {
		if h.certs != nil {
			if !h.certs.MutualTLS() {
				log.Warn("Hubble TCP listener without --hubble-tls-client-ca-files: any client that trusts its certificate reads every flow")
			}
			go h.certs.Watch(ctx, h.certReload)
			tlsConf = h.certs.Config()
		} else {
			log.Warn("Hubble API served in plain text", "address", h.listenAddress)
		}
		ln, err := net.Listen("tcp", h.listenAddress)
		if err != nil {
			return fmt.Errorf("listen on --hubble-listen-address: %w", err)
		}
		addr := advertised(ln.Addr().(*net.TCPAddr), nodeIPs)
		srv.Advertise(addr, tlsConf != nil)
		log.Info("serving the Hubble API on TCP", "address", ln.Addr().String(), "advertised", addr, "tls", tlsConf != nil,
			"mtls", tlsConf != nil && len(h.clientCAFiles) > 0, "tlsServerName", hubble.TLSServerName(node))
		go func() {
			if err := srv.Serve(ctx, ln, tlsConf); err != nil {
				errc <- err
			}
		}()
	}
	if h.socket != "" {
		go func() {
			if err := srv.ServeUnix(ctx, h.socket); err != nil {
				errc <- err
			}
		}()
	}
	return nil
}

// advertised is the address hubble-relay dials for this node: the
// listener's own address when it is bound to one, else the node's first
// address (IPv4 first, as Cilium prefers), else this namespace's.
func advertised(ln *net.TCPAddr, nodeIPs []netip.Addr) string {
	port := strconv.Itoa(ln.Port)
	if ip, ok := netip.AddrFromSlice(ln.IP); ok && !ip.Unmap().IsUnspecified() {
		return net.JoinHostPort(ip.Unmap().String(), port)
	}
	candidates := nodeIPs
	if len(candidates) == 0 {
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						candidates = append(candidates, ip.Unmap())
					}
				}
			}
		}
	}
	var best netip.Addr
	for _, ip := range candidates {
		if !ip.IsGlobalUnicast() && !ip.IsLoopback() {
			continue
		}
		if !best.IsValid() || rank(ip) < rank(best) {
			best = ip
		}
	}
	if !best.IsValid() {
		return ""
	}
	return net.JoinHostPort(best.String(), port)
}

// rank orders candidate addresses: IPv4 before IPv6, loopback last.
func rank(ip netip.Addr) int {
	r := 0
	if ip.IsLoopback() {
		r += 2
	}
	if !ip.Is4() {
		r++
	}
	return r
}
