// Package netns builds the test node out of network namespaces: named
// namespaces created with iproute2, veth pairs between them, and commands
// run inside them. Everything it creates is removed by t.Cleanup.
package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// RequireRoot skips a test that needs root (namespaces, bpffs, tcx).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and loads eBPF programs")
	}
}

// Name returns a short unique name with prefix (interface names are
// limited to 15 bytes, so keep prefixes short).
func Name(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NS is a named network namespace.
type NS struct {
	Name string
	Path string
}

// New creates a namespace with loopback up, removed at cleanup.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	name := Name(prefix)
	Run(t, "ip", "netns", "add", name)
	ns := &NS{Name: name, Path: "/var/run/netns/" + name}
	t.Cleanup(func() { ns.Delete() })
	ns.MustExec(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Delete removes the namespace (and with it its interfaces); idempotent.
func (ns *NS) Delete() {
	_ = exec.Command("ip", "netns", "del", ns.Name).Run()
}

// Exec runs a command inside the namespace with a time limit.
func (ns *NS) Exec(timeout time.Duration, name string, args ...string) (string, error) {
	return runTimeout(timeout, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// MustExec runs a command inside the namespace and fails the test on error.
func (ns *NS) MustExec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Exec(30*time.Second, name, args...)
	if err != nil {
		t.Fatalf("in %s: %s %s: %v\n%s", ns.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Command returns an unstarted command that runs inside the namespace.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command on the host side and fails the test on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runTimeout(30*time.Second, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runTimeout(timeout time.Duration, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return buf.String(), fmt.Errorf("timed out after %s", timeout)
	}
}

// Veth creates a veth pair with one end in a and the other in b, sets
// addresses (CIDR notation, may be empty) and brings both up.
func Veth(t testing.TB, a *NS, aName, aAddr string, b *NS, bName, bAddr string) {
	t.Helper()
	tmp := Name("vt")
	Run(t, "ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp+"p")
	Run(t, "ip", "link", "set", tmp, "netns", a.Name)
	Run(t, "ip", "link", "set", tmp+"p", "netns", b.Name)
	a.MustExec(t, "ip", "link", "set", tmp, "name", aName)
	b.MustExec(t, "ip", "link", "set", tmp+"p", "name", bName)
	if aAddr != "" {
		a.MustExec(t, "ip", "addr", "add", aAddr, "dev", aName)
	}
	if bAddr != "" {
		b.MustExec(t, "ip", "addr", "add", bAddr, "dev", bName)
	}
	a.MustExec(t, "ip", "link", "set", aName, "up")
	b.MustExec(t, "ip", "link", "set", bName, "up")
}

// BPFRoot mounts a private bpffs for one test and unmounts it at cleanup.
func BPFRoot(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	Run(t, "mount", "-t", "bpf", "bpffs", dir)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}
