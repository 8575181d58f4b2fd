package hubble

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/aegis-cni/aegis/daemon/certloader"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/e2e/pki"
)

// tlsNode serves a Server holding one flow on 127.0.0.1 over mTLS: the
// server certificate from serverCA, clients from clientCA.
type tlsNode struct {
	addr               string
	files              certloader.Files
	certs              *certloader.Server
	serverCA, clientCA *pki.CA
}

func newTLSNode(t *testing.T) *tlsNode {
	t.Helper()
	n := &tlsNode{serverCA: mustCA(t, "hubble-ca"), clientCA: mustCA(t, "hubble-client-ca")}
	dir := t.TempDir()
	n.files = certloader.Files{Cert: filepath.Join(dir, "server.crt"), Key: filepath.Join(dir, "server.key"),
		ClientCAs: []string{filepath.Join(dir, "client-ca.crt")}}
	n.writeServerCert(t, "first")
	writeFile(t, n.files.ClientCAs[0], n.clientCA.CertPEM)
	certs, err := certloader.NewServer(n.files, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	n.certs = certs
	obs := observe.New(nil, nil, 16, slog.New(slog.DiscardHandler))
	obs.Add(sample())
	srv := NewServer(obs, "node-1.example", "test")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.addr = ln.Addr().String()
	srv.Advertise(n.addr, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, certs.Config()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return n
}

func (n *tlsNode) writeServerCert(t *testing.T, cn string) {
	t.Helper()
	cert, key, err := n.serverCA.Server(cn, "*.default.hubble-grpc.cilium.io")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, n.files.Cert, cert)
	writeFile(t, n.files.Key, key)
}

func mustCA(t *testing.T, cn string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(cn)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// creds trusts the server CA and presents a certificate of ca, if any,
// as hubble --tls-client-cert-file does. seen receives the server's
// certificate.
func (n *tlsNode) creds(t *testing.T, ca *pki.CA, seen *x509.Certificate) credentials.TransportCredentials {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(n.serverCA.Cert)
	conf := &tls.Config{RootCAs: pool, ServerName: TLSServerName("node-1.example"), MinVersion: tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if seen != nil {
				*seen = *cs.PeerCertificates[0]
			}
			return nil
		}}
	if ca != nil {
		cert, key, err := ca.Client("hubble-cli")
		if err != nil {
			t.Fatal(err)
		}
		kp, err := tls.X509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		// Sent whoever signed it, so the server is the one to refuse it.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	}
	return credentials.NewTLS(conf)
}

// flows asks for every stored flow with creds and returns how many came.
func (n *tlsNode) flows(t *testing.T, creds credentials.TransportCredentials) (int, error) {
	t.Helper()
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := observer.NewObserverClient(conn).GetFlows(ctx, &observer.GetFlowsRequest{Number: 10})
	if err != nil {
		return 0, err
	}
	var got int
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		if resp.GetFlow() == nil || resp.GetNodeName() != "node-1.example" {
			t.Errorf("response %v", resp)
		}
		got++
	}
}

func TestTCPMutualTLS(t *testing.T) {
	n := newTLSNode(t)
	if got, err := n.flows(t, n.creds(t, n.clientCA, nil)); err != nil || got != 1 {
		t.Fatalf("client with a certificate of the client CA: %d flows, %v", got, err)
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":          n.creds(t, nil, nil),
		"certificate of another CA":      n.creds(t, mustCA(t, "other-ca"), nil),
		"certificate of the server's CA": n.creds(t, n.serverCA, nil),
		"plain text":                     insecure.NewCredentials(),
	} {
		if got, err := n.flows(t, creds); err == nil {
			t.Errorf("%s: %d flows, want refused", name, got)
		}
	}
}

func TestTCPStatusNodesPeerHealth(t *testing.T) {
	n := newTLSNode(t)
	conn, err := grpc.NewClient(n.addr, grpc.WithTransportCredentials(n.creds(t, n.clientCA, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	oc := observer.NewObserverClient(conn)
	st, err := oc.ServerStatus(ctx, &observer.ServerStatusRequest{})
	if err != nil || st.GetNumFlows() != 1 || st.GetMaxFlows() != 16 || st.GetNumConnectedNodes().GetValue() != 1 {
		t.Errorf("ServerStatus: %v, %v", st, err)
	}
	nodes, err := oc.GetNodes(ctx, &observer.GetNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 1 {
		t.Fatalf("GetNodes: %v, %v", nodes, err)
	}
	nd := nodes.GetNodes()[0]
	if nd.GetName() != "node-1.example" || nd.GetAddress() != n.addr || nd.GetState() != relay.NodeState_NODE_CONNECTED ||
		!nd.GetTls().GetEnabled() || nd.GetTls().GetServerName() != "node-1-example.default.hubble-grpc.cilium.io" || nd.GetNumFlows() != 1 {
		t.Errorf("GetNodes: %v", nd)
	}
	// hubble-relay learns the nodes from the Peer service.
	ps, err := peerpb.NewPeerClient(conn).Notify(ctx, &peerpb.NotifyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cn, err := ps.Recv()
	if err != nil || cn.GetName() != "node-1.example" || cn.GetAddress() != n.addr ||
		cn.GetType() != peerpb.ChangeNotificationType_PEER_ADDED || cn.GetTls().GetServerName() != TLSServerName("node-1.example") {
		t.Errorf("Peer.Notify: %v, %v", cn, err)
	}
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: healthServiceName})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v, %v", h, err)
	}
}

func TestTCPCertificateRotation(t *testing.T) {
	n := newTLSNode(t)
	var seen x509.Certificate
	if _, err := n.flows(t, n.creds(t, n.clientCA, &seen)); err != nil || seen.Subject.CommonName != "first" {
		t.Fatalf("before rotation: %v, served %s", err, seen.Subject)
	}
	n.writeServerCert(t, "rotated")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.certs.Watch(ctx, 20*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := n.flows(t, n.creds(t, n.clientCA, &seen))
		if err == nil && got == 1 && seen.Subject.CommonName == "rotated" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotated certificate not served within 5s: %d flows, %v, served %s", got, err, seen.Subject)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
