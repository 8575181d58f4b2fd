// Package certloader serves TLS with a certificate, key and client CAs
// read from PEM files, and reloads them when the files change, so that a
// rotated certificate (a renewed Kubernetes Secret, cert-manager) is used
// from the next handshake on without a restart. It is what Cilium's
// pkg/crypto/certloader does for the Hubble server, without its hive.
package certloader

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// DefaultInterval is how often Watch looks at the files: a rotated
// certificate is in use within it.
const DefaultInterval = 5 * time.Second

// Files names the PEM files of a TLS server.
type Files struct {
	Cert string
	Key  string
	// ClientCAs, when any, make the server require client certificates
	// they signed (mutual TLS).
	ClientCAs []string
}

// Server is a TLS server's key material, current as of the last reload.
type Server struct {
	files Files
	log   *slog.Logger

	mu     sync.RWMutex
	cur    *material
	failed [][]byte // contents of the last change that did not load, to log it once
}

type material struct {
	cert tls.Certificate
	leaf *x509.Certificate
	pool *x509.CertPool // nil without client CAs
	raw  [][]byte       // the files' contents, to notice a change
}

// NewServer loads the files; an error names the file that is missing or
// does not parse.
func NewServer(f Files, log *slog.Logger) (*Server, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("load TLS key pair: both a certificate file and a key file are needed")
	}
	raw, err := f.read()
	if err != nil {
		return nil, err
	}
	m, err := f.parse(raw)
	if err != nil {
		return nil, err
	}
	return &Server{files: f, log: log, cur: m}, nil
}

// MutualTLS says whether clients must present a certificate.
func (s *Server) MutualTLS() bool { return len(s.files.ClientCAs) > 0 }

// Leaf is the certificate served now.
func (s *Server) Leaf() *x509.Certificate {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur.leaf
}

// Config is a TLS 1.3 server configuration that takes the current
// certificate and client CAs at every handshake.
func (s *Server) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// A tls.Config cannot swap its certificates and CAs in place; one
		// built per handshake from the current material can.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			s.mu.RLock()
			m := s.cur
			s.mu.RUnlock()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{m.cert},
				// gRPC clients refuse a server that negotiates no ALPN.
				NextProtos: []string{"h2"},
			}
			if m.pool != nil {
				c.ClientCAs = m.pool
				c.ClientAuth = tls.RequireAndVerifyClientCert
			}
			return c, nil
		},
	}
}

// Watch reloads the files every interval until ctx ends. A change that
// does not load (a key written after its certificate, a truncated file)
// is logged once and the last good material stays in use.
func (s *Server) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Reload()
		}
	}
}

// Reload reads the files and, if they changed and load, uses them from
// the next handshake on. It reports whether it swapped the material.
func (s *Server) Reload() bool {
	raw, err := s.files.read()
	s.mu.RLock()
	same := err == nil && equal(raw, s.cur.raw)
	s.mu.RUnlock()
	if same {
		return false
	}
	var m *material
	if err == nil {
		m, err = s.files.parse(raw)
	}
	if err != nil {
		s.mu.Lock()
		repeat := raw != nil && equal(raw, s.failed)
		s.failed = raw
		s.mu.Unlock()
		if !repeat {
			s.log.Warn("reload TLS certificate; the previous one stays in use", "err", err)
		}
		return false
	}
	s.mu.Lock()
	s.cur, s.failed = m, nil
	s.mu.Unlock()
	s.log.Info("reloaded TLS certificate", "file", s.files.Cert, "subject", m.leaf.Subject.String(),
		"serial", m.leaf.SerialNumber.Text(16), "notAfter", m.leaf.NotAfter)
	return true
}

// read returns the contents of the certificate, the key and each CA file.
func (f Files) read() ([][]byte, error) {
	var out [][]byte
	for i, p := range append([]string{f.Cert, f.Key}, f.ClientCAs...) {
		what := "client CA file"
		switch i {
		case 0:
			what = "certificate"
		case 1:
			what = "private key"
		}
		// The error names the path.
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// parse builds the material from what read returned.
func (f Files) parse(raw [][]byte) (*material, error) {
	certPEM, keyPEM, caPEMs := raw[0], raw[1], raw[2:]
	if _, err := parseCerts(certPEM); err != nil {
		return nil, fmt.Errorf("parse certificate %s: %w", f.Cert, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The certificate parsed: the key is missing, broken or not its.
		return nil, fmt.Errorf("load private key %s for certificate %s: %w", f.Key, f.Cert, err)
	}
	m := &material{cert: cert, leaf: cert.Leaf, raw: raw}
	if len(caPEMs) > 0 {
		m.pool = x509.NewCertPool()
	}
	for i, b := range caPEMs {
		cas, err := parseCerts(b)
		if err != nil {
			return nil, fmt.Errorf("parse client CA file %s: %w", f.ClientCAs[i], err)
		}
		for _, c := range cas {
			m.pool.AddCert(c)
		}
	}
	return m, nil
}

func equal(a, b [][]byte) bool { return slices.EqualFunc(a, b, bytes.Equal) }

// parseCerts reads every CERTIFICATE block; a file with none, or with a
// block that does not parse, is an error.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}
