package certloader

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/pki"
)

// files writes a server certificate from ca and the client CAs to dir.
func files(t testing.TB, dir string, ca *pki.CA, clientCAs ...*pki.CA) Files {
	t.Helper()
	f := Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
	writeServer(t, f, ca, "server")
	for i, c := range clientCAs {
		p := filepath.Join(dir, "client-ca-"+string(rune('a'+i))+".crt")
		write(t, p, c.CertPEM)
		f.ClientCAs = append(f.ClientCAs, p)
	}
	return f
}

func writeServer(t testing.TB, f Files, ca *pki.CA, cn string) {
	t.Helper()
	cert, key, err := ca.Server(cn, "server.test")
	if err != nil {
		t.Fatal(err)
	}
	write(t, f.Cert, cert)
	write(t, f.Key, key)
}

func write(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func newCA(t testing.TB, cn string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(cn)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// serve accepts TLS connections with s's configuration and writes "ok"
// on each, until the test ends.
func serve(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", s.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = io.WriteString(c, "ok")
			}()
		}
	}()
	return ln.Addr().String()
}

// dial handshakes as a client trusting ca, with the client certificate
// if any, and returns what the server wrote and the certificate it
// presented.
func dial(addr string, ca *pki.CA, client *tls.Certificate, maxVersion uint16) (string, *x509.Certificate, error) {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	conf := &tls.Config{RootCAs: pool, ServerName: "server.test", MaxVersion: maxVersion}
	if client != nil {
		// Sent whoever signed it: the server, not the client, is to judge.
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return "", nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	// TLS 1.3 reports a refused client certificate on the first read.
	b, err := io.ReadAll(c)
	if err != nil {
		return "", nil, err
	}
	return string(b), c.ConnectionState().PeerCertificates[0], nil
}

func clientCert(t testing.TB, ca *pki.CA) *tls.Certificate {
	t.Helper()
	cert, key, err := ca.Client("client")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return &kp
}

func TestMutualTLS(t *testing.T) {
	serverCA, clientCA, otherCA := newCA(t, "server-ca"), newCA(t, "client-ca"), newCA(t, "other-ca")
	s, err := NewServer(files(t, t.TempDir(), serverCA, clientCA), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !s.MutualTLS() {
		t.Fatal("client CAs given, MutualTLS false")
	}
	addr := serve(t, s)
	if got, _, err := dial(addr, serverCA, clientCert(t, clientCA), 0); err != nil || got != "ok" {
		t.Errorf("client with a certificate of the client CA: %q, %v", got, err)
	}
	for name, cert := range map[string]*tls.Certificate{
		"no certificate":            nil,
		"certificate from other CA": clientCert(t, otherCA),
		"server's CA, not a client": clientCert(t, serverCA),
	} {
		if got, _, err := dial(addr, serverCA, cert, 0); err == nil {
			t.Errorf("client with %s got %q, want refused", name, got)
		}
	}
	if _, _, err := dial(addr, serverCA, clientCert(t, clientCA), tls.VersionTLS12); err == nil {
		t.Error("TLS 1.2 client accepted, want TLS 1.3 only")
	}
}

func TestServerTLSWithoutClientCAs(t *testing.T) {
	ca := newCA(t, "server-ca")
	s, err := NewServer(files(t, t.TempDir(), ca), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if s.MutualTLS() {
		t.Fatal("no client CAs, MutualTLS true")
	}
	if got, _, err := dial(serve(t, s), ca, nil, 0); err != nil || got != "ok" {
		t.Errorf("client without certificate: %q, %v", got, err)
	}
}

func TestRotation(t *testing.T) {
	ca, clientCA := newCA(t, "server-ca"), newCA(t, "client-ca")
	f := files(t, t.TempDir(), ca, clientCA)
	s, err := NewServer(f, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s)
	client := clientCert(t, clientCA)
	_, first, err := dial(addr, ca, client, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s.Reload() {
		t.Error("Reload swapped unchanged files")
	}

	// A certificate written before its key does not load: the old pair
	// stays in use.
	cert, key, err := ca.Server("rotated", "server.test")
	if err != nil {
		t.Fatal(err)
	}
	write(t, f.Cert, cert)
	if s.Reload() {
		t.Error("Reload took a certificate without its key")
	}
	if _, got, err := dial(addr, ca, client, 0); err != nil || !got.Equal(first) {
		t.Errorf("during a half-written rotation: %v, serial %v, want the first certificate", err, got.SerialNumber)
	}
	write(t, f.Key, key)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, 20*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, got, err := dial(addr, ca, client, 0)
		if err == nil && got.Subject.CommonName == "rotated" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotated certificate not served within 5s: %v %v", err, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.Leaf().Subject.CommonName != "rotated" {
		t.Errorf("Leaf is %s", s.Leaf().Subject)
	}

	// A new client CA replaces the old one: its clients get in, the old
	// one's no longer do.
	newClientCA := newCA(t, "client-ca-2")
	write(t, f.ClientCAs[0], newClientCA.CertPEM)
	if !s.Reload() {
		t.Fatal("Reload ignored a new client CA")
	}
	if _, _, err := dial(addr, ca, clientCert(t, newClientCA), 0); err != nil {
		t.Errorf("client of the new CA: %v", err)
	}
	if _, _, err := dial(addr, ca, client, 0); err == nil {
		t.Error("client of the replaced CA accepted")
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	ca := newCA(t, "ca")
	dir := t.TempDir()
	good := files(t, dir, ca, ca)
	other := files(t, t.TempDir(), ca)
	garbage := filepath.Join(dir, "garbage.pem")
	write(t, garbage, []byte("not PEM\n"))
	missing := filepath.Join(dir, "missing.pem")
	for name, tc := range map[string]struct {
		f    Files
		want string
	}{
		"missing cert":  {Files{Cert: missing, Key: good.Key}, missing},
		"garbage cert":  {Files{Cert: garbage, Key: good.Key}, "parse certificate " + garbage},
		"missing key":   {Files{Cert: good.Cert, Key: missing}, missing},
		"garbage key":   {Files{Cert: good.Cert, Key: garbage}, "load private key " + garbage},
		"key not its":   {Files{Cert: good.Cert, Key: other.Key}, "load private key " + other.Key},
		"missing CA":    {Files{Cert: good.Cert, Key: good.Key, ClientCAs: []string{good.ClientCAs[0], missing}}, missing},
		"garbage CA":    {Files{Cert: good.Cert, Key: good.Key, ClientCAs: []string{garbage}}, "parse client CA file " + garbage},
		"key is no CA":  {Files{Cert: good.Cert, Key: good.Key, ClientCAs: []string{good.Key}}, "parse client CA file " + good.Key},
		"no key given":  {Files{Cert: good.Cert}, "both a certificate file and a key file"},
		"no cert given": {Files{Key: good.Key}, "both a certificate file and a key file"},
	} {
		_, err := NewServer(tc.f, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
		if strings.HasPrefix(name, "missing") && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v does not wrap ErrNotExist", name, err)
		}
	}
	if _, err := NewServer(good, slog.New(slog.DiscardHandler)); err != nil {
		t.Errorf("good files: %v", err)
	}
}
