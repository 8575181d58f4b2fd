package main

import (
	"flag"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func parseHubble(args ...string) (*hubbleOptions, error) {
	h := &hubbleOptions{}
	fs := flag.NewFlagSet("aegisd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	h.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return h, h.validate()
}

func TestHubbleFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string   // error text; empty: valid
		cas  []string // client CA files it gives
	}{
		{nil, "", nil},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-tls-cert-file", "c", "--hubble-tls-key-file", "k"}, "", nil},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-tls-cert-file", "c", "--hubble-tls-key-file", "k", "--hubble-tls-client-ca-files", "a,b", "--hubble-tls-client-ca-files", "c"}, "", []string{"a", "b", "c"}},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-disable-tls"}, "", nil},
		{[]string{"--hubble-listen-address", ":4244"}, "needs --hubble-tls-cert-file and --hubble-tls-key-file (or --hubble-disable-tls", nil},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-tls-cert-file", "c"}, "needs --hubble-tls-cert-file and --hubble-tls-key-file", nil},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-disable-tls", "--hubble-tls-cert-file", "c"}, "choose TLS or plain text", nil},
		{[]string{"--hubble-tls-cert-file", "c", "--hubble-tls-key-file", "k"}, "--hubble-listen-address, which is not set", nil},
		{[]string{"--hubble-disable-tls"}, "--hubble-listen-address, which is not set", nil},
		{[]string{"--hubble-listen-address", "4244", "--hubble-disable-tls"}, `--hubble-listen-address "4244"`, nil},
		{[]string{"--hubble-listen-address", ":4244", "--hubble-disable-tls", "--hubble-tls-reload-interval", "0s"}, "--hubble-tls-reload-interval 0s", nil},
	} {
		h, err := parseHubble(tc.args...)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
		if err == nil && !slices.Equal(h.clientCAFiles, tc.cas) {
			t.Errorf("client CA files %q", h.clientCAFiles)
		}
	}
}

func TestAdvertised(t *testing.T) {
	ips := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	for _, tc := range []struct {
		ln   string
		node []netip.Addr
		want string
	}{
		{"192.0.2.5:4244", ips("198.51.100.1"), "192.0.2.5:4244"},
		{"[::]:4244", ips("127.0.0.1", "2001:db8::1", "198.51.100.1"), "198.51.100.1:4244"},
		{"0.0.0.0:4244", ips("2001:db8::1", "127.0.0.1"), "[2001:db8::1]:4244"},
		{"0.0.0.0:4244", ips("fe80::1", "127.0.0.1"), "127.0.0.1:4244"},
		{"0.0.0.0:4244", ips("fe80::1"), ""},
	} {
		a, err := net.ResolveTCPAddr("tcp", tc.ln)
		if err != nil {
			t.Fatal(err)
		}
		if got := advertised(a, tc.node); got != tc.want {
			t.Errorf("advertised(%s, %v) = %q, want %q", tc.ln, tc.node, got, tc.want)
		}
	}
}

func TestHubbleLoadTLSNamesFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "tls.crt")
	h, err := parseHubble("--hubble-listen-address", ":4244", "--hubble-tls-cert-file", missing, "--hubble-tls-key-file", missing+".key")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.loadTLS(slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "hubble TLS: read certificate: open "+missing+":") {
		t.Errorf("loadTLS with a missing certificate: %v", err)
	}
	// Plain text by choice loads nothing.
	if h, err = parseHubble("--hubble-listen-address", ":4244", "--hubble-disable-tls"); err != nil || h.loadTLS(slog.New(slog.DiscardHandler)) != nil || h.certs != nil {
		t.Errorf("--hubble-disable-tls: %v, %v", err, h.certs)
	}
}
