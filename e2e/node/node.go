// Package node builds an Aegis node out of network namespaces for the e2e
// tests: a node namespace running the real aegisd, pods created through a
// real conflist chain executed by libcni, and outside hosts on TEST-NET
// addresses. Everything is removed by t.Cleanup; nothing routes off the
// machine.
package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// PodCIDR is the node's pod range in the e2e tests.
const PodCIDR = "10.244.1.0/24"

// Binaries locates the built binaries and the reference CNI plugins.
type Binaries struct {
	Aegis      string // directory with aegis-cni, aegis-ipam, aegisd, aegis
	CNIPlugins string // directory with ptp, host-local
}

// FindBinaries uses AEGIS_BIN and AEGIS_CNI_PLUGINS (the Makefile sets
// both) and skips the test loudly when they are missing.
func FindBinaries(t testing.TB) Binaries {
	t.Helper()
	b := Binaries{Aegis: os.Getenv("AEGIS_BIN"), CNIPlugins: os.Getenv("AEGIS_CNI_PLUGINS")}
	if b.Aegis == "" {
		b.Aegis = filepath.Join(moduleRoot(t), "bin")
	}
	if b.CNIPlugins == "" {
		b.CNIPlugins = "/var/cache/aegis/cni-plugins-v1.9.1"
	}
	for _, f := range []string{filepath.Join(b.Aegis, "aegisd"), filepath.Join(b.Aegis, "aegis-cni"), filepath.Join(b.Aegis, "aegis-ipam"), filepath.Join(b.CNIPlugins, "ptp")} {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s missing: run `make build peers` first", f)
			}
			t.Skipf("SKIPPED: %s missing: run `make build peers` (or `make test`) first", f)
		}
	}
	return b
}

func moduleRoot(t testing.TB) string {
	dir, _ := os.Getwd()
	for i := 0; i < 10; i++ {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		dir = filepath.Dir(dir)
	}
	t.Fatal("cannot find the module root")
	return ""
}

// Node is one namespace node.
type Node struct {
	t        testing.TB
	Bin      Binaries
	NS       *netns.NS
	Dir      string // scratch: state, manifests, logs, CNI cache
	BPFRoot  string
	StateDir string
	Socket   string
	// HubbleSocket serves the Hubble Observer API.
	HubbleSocket string
	// FlowLog is the flow log file.
	FlowLog string
	// MetricsAddr is the daemon's /metrics endpoint, on the node
	// namespace's loopback.
	MetricsAddr string
	Manifests   string
	CNILog      string
	DaemonLog   string
	ConfList    *libcni.NetworkConfigList
	cni         *libcni.CNIConfig
	azure       bool
	// uplinkPeer is the outside host's first address, once there is one.
	uplinkPeer string
	// Kubeconfig, when set before StartDaemon, makes the Kubernetes API
	// the daemon's source instead of the manifest directory.
	Kubeconfig string

	mu     sync.Mutex
	daemon *exec.Cmd
	logF   *os.File
	waitc  chan error
}

// Options shape a node.
type Options struct {
	// ConfList is the conflist JSON; the text AEGIS_CNI_ENTRY is replaced
	// by the aegis-cni entry for this node. Empty: ptp with aegis-ipam,
	// then aegis-cni.
	ConfList string
	// ExtraPluginDirs are searched for plugins too (azure-vnet).
	ExtraPluginDirs []string

	// Set by AzureOptions.
	azure     bool
	azureRoot string
}

// New creates the node namespace, a private bpffs, and the scratch
// directories. The daemon is not started.
func New(t testing.TB, opts Options) *Node {
	t.Helper()
	netns.RequireRoot(t)
	n := &Node{t: t, Bin: FindBinaries(t)}
	n.Dir = t.TempDir()
	n.BPFRoot = netns.BPFRoot(t)
	n.StateDir = filepath.Join(n.Dir, "state")
	n.Socket = filepath.Join(n.Dir, "run", "aegisd.sock")
	n.HubbleSocket = filepath.Join(n.Dir, "run", "hubble.sock")
	n.FlowLog = filepath.Join(n.Dir, "log", "events.log")
	n.MetricsAddr = "127.0.0.1:9965"
	n.Manifests = filepath.Join(n.Dir, "manifests")
	n.CNILog = filepath.Join(n.Dir, "cni.log")
	n.DaemonLog = filepath.Join(n.Dir, "aegisd.log")
	if err := os.MkdirAll(n.Manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	n.NS = netns.New(t, "node")
	n.NS.MustExec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	entry := fmt.Sprintf(`{"type": "aegis-cni", "socket": %q, "bpfRoot": %q, "logFile": %q, "timeoutSeconds": 20}`, n.Socket, n.BPFRoot, n.CNILog)
	conf := opts.ConfList
	if conf == "" {
		conf = fmt.Sprintf(`{
  "cniVersion": "1.1.0",
  "name": "aegis-e2e",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipMasq": false,
     "ipam": {"type": "aegis-ipam", "podCIDR": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}},
    AEGIS_CNI_ENTRY
  ]
}`, PodCIDR, filepath.Join(n.Dir, "ipam"))
	}
	cl, err := libcni.ConfListFromBytes([]byte(strings.Replace(conf, "AEGIS_CNI_ENTRY", entry, 1)))
	if err != nil {
		t.Fatalf("parse conflist: %v", err)
	}
	n.ConfList = cl
	dirs := append([]string{n.Bin.Aegis, n.Bin.CNIPlugins}, opts.ExtraPluginDirs...)
	n.cni = libcni.NewCNIConfigWithCacheDir(dirs, filepath.Join(n.Dir, "cnicache"), nil)
	n.azure = opts.azure
	t.Cleanup(func() {
		n.StopDaemon(syscall.SIGTERM)
		n.StopDNSProxy()
		if t.Failed() || os.Getenv("AEGIS_E2E_LOGS") != "" {
			n.dumpLogs()
		}
	})
	return n
}

// DNSProxyPID is the pid of the node's DNS proxy process (aegisd starts
// it and leaves it running across its own restarts), or 0.
func (n *Node) DNSProxyPID() int {
	b, err := os.ReadFile(filepath.Join(n.StateDir, "proxy.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// DaemonPID is the pid of the running aegisd (nsenter execs it), or 0.
func (n *Node) DaemonPID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.daemon == nil || n.daemon.Process == nil {
		return 0
	}
	return n.daemon.Process.Pid
}

// StopDNSProxy ends the node's DNS proxy process, by the pid it recorded
// in this node's own state directory, and waits until it is gone.
func (n *Node) StopDNSProxy() {
	pid := n.DNSProxyPID()
	if pid <= 0 {
		return
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func (n *Node) dumpLogs() {
	for _, f := range []string{n.DaemonLog, n.CNILog, filepath.Join(n.StateDir, "proxy.log")} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		keep := 60
		if os.Getenv("AEGIS_E2E_LOGS") != "" {
			keep = 400
		}
		if len(lines) > keep {
			lines = lines[len(lines)-keep:]
		}
		n.t.Logf("--- last lines of %s:\n%s", filepath.Base(f), strings.Join(lines, "\n"))
	}
}

// StartDaemon starts aegisd inside the node namespace and waits until it
// is ready.
func (n *Node) StartDaemon(extraArgs ...string) {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.daemon != nil {
		n.t.Fatal("daemon already running")
	}
	logF, err := os.OpenFile(n.DaemonLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	source := []string{"--manifests", n.Manifests}
	if n.Kubeconfig != "" {
		source = []string{"--kubeconfig", n.Kubeconfig}
	}
	args := append([]string{"--net=" + n.NS.Path, filepath.Join(n.Bin.Aegis, "aegisd"),
		"--bpf-root", n.BPFRoot, "--state-dir", n.StateDir, "--socket", n.Socket,
		"--node-name", "e2e-node", "--log-level", "debug", "--hubble-socket", n.HubbleSocket,
		"--flow-log-file", n.FlowLog, "--metrics-addr", n.MetricsAddr}, append(source, extraArgs...)...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logF, logF
	if err := cmd.Start(); err != nil {
		logF.Close()
		n.t.Fatalf("start aegisd: %v", err)
	}
	n.daemon, n.logF, n.waitc = cmd, logF, make(chan error, 1)
	go func(c chan error) { c <- cmd.Wait() }(n.waitc)
	n.waitReady()
}

func (n *Node) waitReady() {
	n.t.Helper()
	c := api.NewClient(n.Socket, time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-n.waitc:
			n.dumpLogs()
			n.t.Fatalf("aegisd exited during start: %v", err)
		default:
		}
		st, err := c.Status(context.Background())
		if err == nil && st.Ready {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.dumpLogs()
	n.t.Fatal("aegisd not ready after 20s")
}

// StopDaemon stops aegisd with sig (SIGKILL for a crash) and waits for it.
func (n *Node) StopDaemon(sig syscall.Signal) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.daemon == nil {
		return
	}
	// A paused daemon acts on no signal but SIGKILL until it goes on.
	_ = n.daemon.Process.Signal(syscall.SIGCONT)
	_ = n.daemon.Process.Signal(sig)
	select {
	case <-n.waitc:
	case <-time.After(10 * time.Second):
		_ = n.daemon.Process.Kill()
		<-n.waitc
	}
	n.logF.Close()
	n.daemon = nil
}

// PauseDaemon stops aegisd (SIGSTOP, by the pid this node started) until
// ResumeDaemon: the datapath goes on enforcing and writing flow events,
// and nobody reads them.
func (n *Node) PauseDaemon() {
	n.t.Helper()
	n.signalDaemon(syscall.SIGSTOP)
}

// ResumeDaemon lets a paused aegisd go on (SIGCONT).
func (n *Node) ResumeDaemon() {
	n.t.Helper()
	n.signalDaemon(syscall.SIGCONT)
}

func (n *Node) signalDaemon(sig syscall.Signal) {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.daemon == nil {
		n.t.Fatal("daemon not running")
	}
	if err := n.daemon.Process.Signal(sig); err != nil {
		n.t.Fatalf("signal aegisd (pid %d) %s: %v", n.daemon.Process.Pid, sig, err)
	}
}

// Client talks to the node's daemon.
func (n *Node) Client() *api.Client { return api.NewClient(n.Socket, 10*time.Second) }

// CLI runs the aegis CLI against this node and returns its stdout.
func (n *Node) CLI(args ...string) (string, error) {
	full := append([]string{"--socket", n.Socket, "--bpf-root", n.BPFRoot, "--hubble-socket", n.HubbleSocket}, args...)
	out, err := exec.Command(filepath.Join(n.Bin.Aegis, "aegis"), full...).CombinedOutput()
	return string(out), err
}

// Apply writes a manifest file and waits until the daemon applied it.
func (n *Node) Apply(file, yaml string) {
	n.t.Helper()
	n.changeManifests(func() error { return writeAtomic(filepath.Join(n.Manifests, file), []byte(yaml)) })
}

// writeAtomic replaces a manifest in one step, as kubectl-like tooling and
// config management do: the watcher could otherwise read a large file half
// written, and a half cut at a line boundary is valid YAML of another policy.
// The temporary name starts with a dot, which the watcher ignores.
func writeAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Remove deletes a manifest file and waits until the daemon applied that.
func (n *Node) Remove(file string) {
	n.t.Helper()
	n.changeManifests(func() error { return os.Remove(filepath.Join(n.Manifests, file)) })
}

// Change makes a change to the daemon's source (a manifest file or an API
// object) and waits until the daemon has taken in the new generation and
// regenerated after it.
func (n *Node) Change(change func() error) {
	n.t.Helper()
	n.changeManifests(change)
}

func (n *Node) changeManifests(change func() error) {
	n.t.Helper()
	n.mu.Lock()
	running := n.daemon != nil
	n.mu.Unlock()
	if !running {
		// The daemon reads the directory when it starts.
		if err := change(); err != nil {
			n.t.Fatal(err)
		}
		return
	}
	c := n.Client()
	before, err := c.Status(context.Background())
	if err != nil {
		n.t.Fatalf("status: %v", err)
	}
	if err := change(); err != nil {
		n.t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		st, err := c.Status(context.Background())
		if err == nil && st.Source.Generation > before.Source.Generation && st.Source.Applied >= st.Source.Generation {
			if st.LastRegen.Error != "" {
				n.t.Fatalf("regeneration failed: %s", st.LastRegen.Error)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _ := c.Status(context.Background())
	n.t.Fatalf("manifest change not applied within 15s (status %+v)", st)
}

// Status returns the daemon's status.
func (n *Node) Status() *api.Status {
	n.t.Helper()
	st, err := n.Client().Status(context.Background())
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// errNoIP says a pod came up without an address.
var errNoIP = errors.New("pod has no IPv4 address in the CNI result")
