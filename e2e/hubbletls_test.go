package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aegis-cni/aegis/e2e/node"
	"github.com/aegis-cni/aegis/e2e/pki"
)

// hubbleTCP is where aegisd serves the Hubble API on TCP in the node
// namespace, and hubbleServerName the name its certificate is checked
// for, as Cilium forms it.
const (
	hubbleTCP        = "127.0.0.1:4244"
	hubbleServerName = "e2e-node.default.hubble-grpc.cilium.io"
)

// hubblePKI is the key material of the TCP listener and its clients, as
// files: one CA for servers and clients, as Cilium's Helm chart makes it.
type hubblePKI struct {
	dir                                                  string
	ca, serverCert, serverKey, clientCert, clientKey     string
	otherCert, otherKey, relayClientCert, relayClientKey string
	authority                                            *pki.CA
}

func writeHubblePKI(t *testing.T, dir string) *hubblePKI {
	t.Helper()
	p := &hubblePKI{dir: dir}
	ca, err := pki.NewCA("hubble-ca.cilium.io")
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	p.authority = ca
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	issue := func(certName, keyName string, c *pki.CA, client bool, cn string) (string, string) {
		var cert, key []byte
		var err error
		if client {
			cert, key, err = c.Client(cn)
		} else {
			// One wildcard for every node and the Peer service's name.
			cert, key, err = c.Server(cn, "*.default.hubble-grpc.cilium.io")
		}
		if err != nil {
			t.Fatal(err)
		}
		return write(certName, cert), write(keyName, key)
	}
	p.ca = write("ca.crt", ca.CertPEM)
	p.serverCert, p.serverKey = issue("server.crt", "server.key", ca, false, "first")
	p.clientCert, p.clientKey = issue("client.crt", "client.key", ca, true, "hubble-cli")
	p.relayClientCert, p.relayClientKey = issue("relay.crt", "relay.key", ca, true, "hubble-relay")
	p.otherCert, p.otherKey = issue("other.crt", "other.key", other, true, "intruder")
	return p
}

// TestHubbleTCPMutualTLS runs the stock hubble CLI against aegisd's TCP
// listener with mTLS, inside the node namespace, then hubble-relay with
// aegisd as its peer and the CLI through relay.
func TestHubbleTCPMutualTLS(t *testing.T) {
	hubbleBin := peerBinary(t, "hubble-v1.20.2", "hubble", "scripts/build-hubble-cli.sh")
	n := node.New(t, node.Options{})
	p := writeHubblePKI(t, filepath.Join(n.Dir, "hubble-tls"))
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("prod", nil))
	n.Apply("01-pods.yaml", node.PodManifest("prod", "web", map[string]string{"app": "web"}, "http:8080/TCP")+"---\n"+
		node.PodManifest("prod", "client", map[string]string{"app": "client"}))
	n.StartDaemon("--hubble-listen-address", hubbleTCP, "--hubble-tls-cert-file", p.serverCert, "--hubble-tls-key-file", p.serverKey,
		"--hubble-tls-client-ca-files", p.ca, "--hubble-tls-reload-interval", "200ms")
	web := n.NewPod("prod", "web", map[string]string{"app": "web"})
	client := n.NewPod("prod", "client", map[string]string{"app": "client"})
	web.NS.Serve(t, "tcp", web.Addr(8080), "web:")
	client.NS.ExpectAllowed(t, "tcp", web.Addr(8080))

	tlsArgs := func(cert, key string) []string {
		args := []string{"--server", hubbleTCP, "--tls", "--tls-ca-cert-files", p.ca, "--tls-server-name", hubbleServerName}
		if cert != "" {
			args = append(args, "--tls-client-cert-file", cert, "--tls-client-key-file", key)
		}
		return args
	}
	observeArgs := []string{"--to-pod", "prod/web", "--last", "50", "-o", "json", "--timeout", "5s"}
	hubble := func(args ...string) (string, error) {
		out, err := n.NS.Command(hubbleBin, args...).CombinedOutput()
		return string(out), err
	}
	waitForwarded(t, "hubble observe over mTLS", func() (string, error) {
		return hubble(append(append([]string{"observe"}, tlsArgs(p.clientCert, p.clientKey)...), observeArgs...)...)
	})
	out, err := hubble(append([]string{"status"}, tlsArgs(p.clientCert, p.clientKey)...)...)
	if err != nil || !strings.Contains(out, "Healthcheck (via "+hubbleTCP+"): Ok") || !strings.Contains(out, "Connected Nodes: 1/1") {
		t.Errorf("hubble status over mTLS: %v\n%s", err, out)
	}
	t.Logf("hubble status over mTLS:\n%s", out)
	for name, args := range map[string][]string{
		"without a client certificate":  tlsArgs("", ""),
		"with another CA's certificate": tlsArgs(p.otherCert, p.otherKey),
		"in plain text":                 {"--server", hubbleTCP},
	} {
		out, err := hubble(append(append([]string{"observe"}, args...), observeArgs...)...)
		// Refused at the handshake: the connection is never available.
		if err == nil || !strings.Contains(out, "code = Unavailable") {
			t.Errorf("hubble observe %s: %v, want refused\n%s", name, err, out)
		}
	}

	checkServedRotation(t, n, p)
	checkRelay(t, n, p, hubbleBin)
}

// checkServedRotation writes a new server certificate and waits until
// aegisd serves it, without a restart.
func checkServedRotation(t *testing.T, n *node.Node, p *hubblePKI) {
	t.Helper()
	cert, key, err := p.authority.Server("rotated", "*.default.hubble-grpc.cilium.io")
	if err != nil {
		t.Fatal(err)
	}
	// The key first: the daemon keeps the old pair while they disagree.
	for path, b := range map[string][]byte{p.serverKey: key, p.serverCert: cert} {
		if err := os.WriteFile(path+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(p.serverKey+".new", p.serverKey); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p.serverCert+".new", p.serverCert); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.authority.Cert)
	served := func() (string, error) {
		conn, err := n.NS.Dial("tcp", hubbleTCP, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer conn.Close()
		c := tls.Client(conn, &tls.Config{RootCAs: roots, ServerName: hubbleServerName, Certificates: []tls.Certificate{pair}, NextProtos: []string{"h2"}})
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if err := c.Handshake(); err != nil {
			return "", err
		}
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		cn, err := served()
		if err == nil && cn == "rotated" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("aegisd serves %q (%v) 10s after the certificate was rotated", cn, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkRelay runs hubble-relay in the node namespace with aegisd's TCP
// listener as its Peer service, over mTLS, and the hubble CLI through
// relay.
func checkRelay(t *testing.T, n *node.Node, p *hubblePKI, hubbleBin string) {
	t.Helper()
	relayBin := peerBinary(t, "hubble-relay-v1.20.2", "hubble-relay", "scripts/build-hubble-relay.sh")
	const relayAddr = "127.0.0.1:4245"
	startProcess(t, n.NS, "hubble-relay.log", relayBin, "serve", "--peer-service", hubbleTCP, "--listen-address", relayAddr,
		"--health-listen-address", "127.0.0.1:4222", "--gops=false", "--retry-timeout", "2s",
		"--tls-hubble-server-ca-files", p.ca, "--tls-hubble-client-cert-file", p.relayClientCert,
		"--tls-hubble-client-key-file", p.relayClientKey, "--disable-server-tls")
	hubble := func(args ...string) (string, error) {
		out, err := n.NS.Command(hubbleBin, append(args, "--server", relayAddr)...).CombinedOutput()
		return string(out), err
	}
	// Relay learns the node from aegisd's Peer service and connects to
	// the address and TLS server name it announced.
	var out string
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err = hubble("status")
		if err == nil && strings.Contains(out, "Connected Nodes: 1/1") {
			t.Logf("hubble status through relay:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hubble status through relay after 30s: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, err = hubble("list", "nodes", "-o", "json")
	t.Logf("hubble list nodes through relay:\n%s", out)
	if err != nil || !strings.Contains(out, `"name": "e2e-node"`) ||
		!strings.Contains(out, `"state": "NODE_CONNECTED"`) || !strings.Contains(out, `"address": "`+hubbleTCP+`"`) {
		t.Errorf("hubble list nodes through relay: %v\n%s", err, out)
	}
	waitForwarded(t, "hubble observe through relay", func() (string, error) {
		return hubble("observe", "--to-pod", "prod/web", "--last", "50", "-o", "json", "--timeout", "5s")
	})
}

// waitForwarded runs a `hubble observe -o json --to-pod prod/web` until it
// prints FORWARDED flows to prod/web on e2e-node (events reach the API
// within a poll interval), and checks every line it printed.
func waitForwarded(t *testing.T, what string, run func() (string, error)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := run()
		if err != nil {
			t.Fatalf("%s: %v\n%s", what, err, out)
		}
		var n int
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			var rec struct {
				Flow     json.RawMessage `json:"flow"`
				NodeName string          `json:"node_name"`
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Flow == nil {
				t.Fatalf("%s printed %q", what, line)
			}
			var f flow.Flow
			if err := protojson.Unmarshal(rec.Flow, &f); err != nil {
				t.Fatal(err)
			}
			if f.GetDestination().GetNamespace() != "prod" || f.GetDestination().GetPodName() != "web" || f.GetNodeName() != "e2e-node" {
				t.Errorf("%s --to-pod prod/web printed %v", what, &f)
			}
			if f.GetVerdict() == flow.Verdict_FORWARDED {
				n++
			}
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed no FORWARDED flow to prod/web in 10s:\n%s", what, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// peerBinary finds a peer that make peers builds into the cache; without
// it the test fails in CI and skips the rest loudly elsewhere.
func peerBinary(t *testing.T, dir, name, script string) string {
	t.Helper()
	bin, ok := findPeer(t, dir, name, script)
	if !ok {
		t.Skipf("SKIPPED: %s missing (make peers builds it with %s)", bin, script)
	}
	return bin
}

// findPeer is the path of a peer binary make peers builds into the cache,
// and whether it is there; under CI a missing one fails the test.
func findPeer(t *testing.T, dir, name, script string) (string, bool) {
	t.Helper()
	bin := filepath.Join(cacheDir(), dir, name)
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing: run %s (make peers does)", bin, script)
		}
		return bin, false
	}
	return bin, true
}
