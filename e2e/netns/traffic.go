package netns

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	cnins "github.com/containernetworking/plugins/pkg/ns"
)

// Do runs fn on a thread switched into the namespace. Sockets opened in fn
// stay in the namespace and may be used afterwards from anywhere.
func (ns *NS) Do(fn func() error) error {
	h, err := cnins.GetNS(ns.Path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.Name, err)
	}
	defer h.Close()
	return h.Do(func(cnins.NetNS) error { return fn() })
}

// Serve starts an echo server on addr ("10.0.0.2:80") for network "tcp" or
// "udp" inside the namespace; each message is answered with prefix+message.
// It stops at cleanup.
func (ns *NS) Serve(t testing.TB, network, addr, prefix string) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		if network == "udp" {
			pc, err = net.ListenPacket("udp4", addr)
		} else {
			ln, err = net.Listen("tcp4", addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	var wg sync.WaitGroup
	if pc != nil {
		t.Cleanup(func() { pc.Close(); wg.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(append([]byte(prefix), buf[:n]...), from)
			}
		}()
		return
	}
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 2048)
				for {
					_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(append([]byte(prefix), buf[:n]...)); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// Dial opens a connection from inside the namespace.
func (ns *NS) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// Exchange sends one message and reads the answer over an open
// connection, with a deadline.
func Exchange(c net.Conn, msg string, timeout time.Duration) (string, error) {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// Probe connects from ns to addr over network, sends "ping" and reports
// whether the expected answer came back within timeout: nil means the
// traffic passed both ways.
func (ns *NS) Probe(network, addr string, timeout time.Duration) error {
	return ns.ProbeFrom("", network, addr, timeout)
}

// ErrBlocked is what ExpectBlocked reports when traffic passed.
var ErrBlocked = errors.New("traffic passed but should be blocked")

// ExpectAllowed fails the test unless the probe passes.
func (ns *NS) ExpectAllowed(t testing.TB, network, addr string) {
	t.Helper()
	if err := ns.Probe(network, addr, 2*time.Second); err != nil {
		t.Errorf("%s -> %s/%s: want allowed, got %v", ns.Name, addr, network, err)
	}
}

// ExpectBlocked fails the test if the probe passes.
func (ns *NS) ExpectBlocked(t testing.TB, network, addr string) {
	t.Helper()
	if err := ns.Probe(network, addr, 700*time.Millisecond); err == nil {
		t.Errorf("%s -> %s/%s: want blocked, but it passed", ns.Name, addr, network)
	}
}

// ProbeFrom is Probe with a chosen source address ("" lets the kernel
// choose), for an outside host with several addresses.
func (ns *NS) ProbeFrom(src, network, addr string, timeout time.Duration) error {
	var c net.Conn
	err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		if src != "" && network == "udp" {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(src)}
		} else if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err = d.Dial(network+"4", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	got, err := Exchange(c, "ping", timeout)
	if err != nil {
		return err
	}
	if !strings.HasSuffix(got, "ping") {
		return fmt.Errorf("unexpected answer %q", got)
	}
	return nil
}
