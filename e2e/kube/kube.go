// Package kube runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver v1.37.2 (built by scripts/build-kube-apiserver.sh), on
// loopback, optionally inside a test node's network namespace, with TLS,
// an admin client certificate and the Aegis CRDs installed. There is no
// controller-manager, scheduler or kubelet: tests create the objects (and
// set pod status) themselves. Everything is stopped and removed at
// t.Cleanup.
package kube

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// Version is the Kubernetes release the build script builds.
const Version = "v1.37.2"

// ServiceCIDR is the cluster's service range.
const ServiceCIDR = "10.96.0.0/16"

// Options shape the cluster. The zero value is a cluster on this
// process's loopback with RBAC and the repository's CRDs.
type Options struct {
	// NetNS is the path of a network namespace (/var/run/netns/NAME) to
	// run etcd and the API server in, through nsenter, so a daemon in that
	// namespace reaches the API on 127.0.0.1. Its loopback is brought up.
	// Needs root. Empty: this process's namespace.
	NetNS string
	// Namespaces are created, each with its default ServiceAccount, once
	// the API is up.
	Namespaces []string
	// CRDDir holds the CustomResourceDefinitions to install (every .yaml
	// file in it; an empty directory installs none). Default: conf/crds of
	// this repository.
	CRDDir string
	// Authorization is the API server's --authorization-mode (default
	// RBAC; the admin user is in system:masters either way).
	Authorization string
	// ExtraArgs are more kube-apiserver flags.
	ExtraArgs []string
}

// Cluster is a running control plane.
type Cluster struct {
	// Dir holds the certificates, the kubeconfig, etcd's data and the logs.
	Dir string
	// Server is the API server's URL (https://127.0.0.1:PORT, inside
	// NetNS when one was given).
	Server string
	// Kubeconfig is a kubeconfig file for the admin user, for processes
	// that run where the API server listens (inside NetNS, if any).
	Kubeconfig string
	// Config is the admin's client configuration; when the cluster runs
	// in NetNS, its dialer connects from inside that namespace, so clients
	// in this process reach the API from anywhere.
	Config *rest.Config
	// Client and Dynamic are admin clients built from Config.
	Client  *kubernetes.Clientset
	Dynamic dynamic.Interface
	// NetNS is Options.NetNS.
	NetNS string

	procs []*process
}

// Binaries returns the paths of etcd and kube-apiserver: $AEGIS_ETCD or
// etcd on PATH (Debian's etcd-server), and $AEGIS_KUBE_APISERVER or the
// one scripts/build-kube-apiserver.sh leaves in the cache.
func Binaries() (etcd, apiserver string, err error) {
	etcd = os.Getenv("AEGIS_ETCD")
	if etcd == "" {
		if p, lerr := exec.LookPath("etcd"); lerr == nil {
			etcd = p
		} else {
			etcd = "/usr/bin/etcd"
		}
	}
	apiserver = os.Getenv("AEGIS_KUBE_APISERVER")
	if apiserver == "" {
		cache := os.Getenv("AEGIS_CACHE")
		if cache == "" {
			cache = "/var/cache/aegis"
		}
		apiserver = filepath.Join(cache, "kube-"+Version, "kube-apiserver")
	}
	var missing []string
	for _, f := range []string{etcd, apiserver} {
		if st, serr := os.Stat(f); serr != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return etcd, apiserver, fmt.Errorf("%s missing", strings.Join(missing, " and "))
	}
	return etcd, apiserver, nil
}

// requireBinaries skips the test loudly when the control plane binaries
// are not built, and fails it under CI, where they must be.
func requireBinaries(t testing.TB) (etcd, apiserver string) {
	t.Helper()
	etcd, apiserver, err := Binaries()
	if err == nil {
		return etcd, apiserver
	}
	msg := fmt.Sprintf("%v: run scripts/build-kube-apiserver.sh (it builds kube-apiserver %s into the cache and installs etcd-server)", err, Version)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Log(strings.Repeat("!", 78))
	t.Logf("!!! SKIPPING %s: NO KUBERNETES CONTROL PLANE", t.Name())
	t.Logf("!!! %s", msg)
	t.Log(strings.Repeat("!", 78))
	t.Skip("SKIPPED: " + msg)
	return "", ""
}

// Start runs etcd and kube-apiserver and returns once the API is ready,
// the CRDs are established and the default ServiceAccounts exist.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	etcdBin, apiserverBin := requireBinaries(t)
	if opts.NetNS != "" && os.Geteuid() != 0 {
		t.Skip("needs root: runs the control plane inside a network namespace")
	}
	if opts.CRDDir == "" {
		opts.CRDDir = repoCRDDir()
	}
	if opts.Authorization == "" {
		opts.Authorization = "RBAC"
	}
	c := &Cluster{Dir: t.TempDir(), NetNS: opts.NetNS}
	// Stop the processes before the directory goes (cleanups run last
	// registered first; TempDir registered its own above).
	t.Cleanup(func() { c.stop(t) })

	pki, err := writePKI(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := c.freePorts(3)
	if err != nil {
		t.Fatal(err)
	}
	etcdClient, etcdPeer, secure := ports[0], ports[1], ports[2]
	c.Server = "https://127.0.0.1:" + strconv.Itoa(secure)

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcdArgs := []string{
		"--name", "aegis-test",
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "aegis-test=" + peerURL,
		"--initial-cluster-state", "new",
		"--logger", "zap", "--log-level", "warn",
	}
	if err := c.spawn("etcd", etcdBin, etcdArgs); err != nil {
		t.Fatal(err)
	}

	apiArgs := []string{
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(secure),
		"--tls-cert-file", pki.serverCert, "--tls-private-key-file", pki.serverKey,
		"--client-ca-file", pki.caCert,
		"--authorization-mode", opts.Authorization,
		"--service-cluster-ip-range", ServiceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pki.saPub,
		"--service-account-signing-key-file", pki.saKey,
		// No controller-manager keeps the kubernetes Service's endpoints;
		// nothing reaches the API through it here.
		"--endpoint-reconciler-type", "none",
		"--allow-privileged",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--v", "1",
	}
	apiArgs = append(apiArgs, opts.ExtraArgs...)
	if err := c.spawn("kube-apiserver", apiserverBin, apiArgs); err != nil {
		t.Fatal(err)
	}

	c.Config = &rest.Config{
		Host: c.Server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: pki.caPEM, CertData: pki.adminCertPEM, KeyData: pki.adminKeyPEM,
		},
		QPS: 100, Burst: 200,
		UserAgent: "aegis-e2e",
	}
	if c.NetNS != "" {
		path := c.NetNS
		c.Config.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := ns.WithNetNSPath(path, func(ns.NetNS) error {
				var derr error
				conn, derr = (&net.Dialer{}).DialContext(ctx, network, addr)
				return derr
			})
			return conn, err
		}
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		t.Fatal(err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		t.Fatal(err)
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, c.Server, pki); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.waitReady(ctx); err != nil {
		c.dumpLogs(t)
		t.Fatalf("kube-apiserver not ready: %v", err)
	}
	crds, err := filepath.Glob(filepath.Join(opts.CRDDir, "*.yaml"))
	if err == nil {
		_, err = os.Stat(opts.CRDDir)
	}
	if err != nil {
		t.Fatalf("CRDs: %v", err)
	}
	if err := c.installCRDs(ctx, crds); err != nil {
		c.dumpLogs(t)
		t.Fatal(err)
	}
	if err := c.waitBootstrap(ctx); err != nil {
		c.dumpLogs(t)
		t.Fatal(err)
	}
	for _, name := range append([]string{metav1.NamespaceDefault}, opts.Namespaces...) {
		if err := c.createNamespace(ctx, name, nil); err != nil {
			c.dumpLogs(t)
			t.Fatal(err)
		}
	}
	t.Logf("kube-apiserver %s ready at %s in %s (kubeconfig %s)", Version, c.Server, time.Since(start).Round(time.Millisecond), c.Kubeconfig)
	return c
}

// CreateNamespace creates a namespace with labels and its default
// ServiceAccount (which pods need, and which no controller-manager makes
// here). An existing namespace is fine.
func (c *Cluster) CreateNamespace(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.createNamespace(ctx, name, labels); err != nil {
		t.Fatal(err)
	}
}

func (c *Cluster) createNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	// The API server creates the default namespace itself, shortly after
	// it is ready; until then the ServiceAccount's namespace is missing.
	for {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("create service account %s/default: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create service account %s/default: %w", name, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady polls /readyz until it answers ok, a process exits or ctx
// ends.
func (c *Cluster) waitReady(ctx context.Context) error {
	var last error
	for {
		for _, p := range c.procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited: %v (log %s)", p.name, p.err, p.log)
			default:
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(body)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitBootstrap waits for what the API server creates itself shortly after
// it is ready (the system namespaces, the kubernetes Service), so tests
// start from a cluster that no longer changes on its own.
func (c *Cluster) waitBootstrap(ctx context.Context) error {
	for {
		var missing []string
		for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease} {
			if _, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
				missing = append(missing, "namespace "+ns)
			}
		}
		if _, err := c.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{}); err != nil {
			missing = append(missing, "service default/kubernetes")
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("API server bootstrap: still missing %s", strings.Join(missing, ", "))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// CRDFile is the path of one of the repository's CRDs, by file name
// ("ciliumnetworkpolicies.cilium.io.yaml").
func CRDFile(name string) string { return filepath.Join(repoCRDDir(), name) }

// InstallCRDs installs CustomResourceDefinitions from YAML files and waits
// until their resources are served.
func (c *Cluster) InstallCRDs(t testing.TB, files ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.installCRDs(ctx, files); err != nil {
		t.Fatal(err)
	}
}

// installCRDs creates the CRDs in files and waits until each one's
// resource answers a list.
func (c *Cluster) installCRDs(ctx context.Context, files []string) error {
	var gvrs []schema.GroupVersionResource
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("install CRDs: %w", err)
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &u.Object); err != nil {
			return fmt.Errorf("install CRD %s: %w", f, err)
		}
		if _, err := c.Dynamic.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("install CRD %s: %w", f, err)
		}
		group, _, _ := unstructured.NestedString(u.Object, "spec", "group")
		plural, _, _ := unstructured.NestedString(u.Object, "spec", "names", "plural")
		versions, _, _ := unstructured.NestedSlice(u.Object, "spec", "versions")
		for _, v := range versions {
			if name, _, _ := unstructured.NestedString(v.(map[string]any), "name"); name != "" {
				gvrs = append(gvrs, schema.GroupVersionResource{Group: group, Version: name, Resource: plural})
			}
		}
	}
	for _, gvr := range gvrs {
		for {
			_, err := c.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not served: %w", gvr, err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// repoCRDDir finds conf/crds from this file's place in the repository.
func repoCRDDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "conf", "crds")
}

// freePorts picks n free loopback ports where the control plane will run
// (in NetNS, bringing its loopback up first).
func (c *Cluster) freePorts(n int) ([]int, error) {
	pick := func() ([]int, error) {
		var ports []int
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("pick a free port: %w", err)
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return ports, nil
	}
	if c.NetNS == "" {
		return pick()
	}
	var ports []int
	err := ns.WithNetNSPath(c.NetNS, func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		ports, err = pick()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("in %s: %w", c.NetNS, err)
	}
	return ports, nil
}

// process is one control plane process.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// spawn starts a binary (through nsenter when the cluster has a
// namespace), logging to a file in Dir.
func (c *Cluster) spawn(name, bin string, args []string) error {
	logPath := filepath.Join(c.Dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	defer logFile.Close()
	var cmd *exec.Cmd
	if c.NetNS != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + c.NetNS, "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so a terminal's ^C goes to the test alone;
	// killed with the test process if that dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.procs = append(c.procs, p)
	return nil
}

// stop ends the processes, the API server first, each with SIGTERM and,
// after a grace period, SIGKILL.
func (c *Cluster) stop(t testing.TB) {
	if t.Failed() {
		c.dumpLogs(t)
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	c.procs = nil
}

// dumpLogs puts the end of each process's log into the test's output.
func (c *Cluster) dumpLogs(t testing.TB) {
	for _, p := range c.procs {
		data, err := os.ReadFile(p.log)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("--- last lines of %s ---\n%s", p.log, strings.Join(lines, "\n"))
	}
}

// writeKubeconfig writes a kubeconfig for the admin user.
func writeKubeconfig(path, server string, pki *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["aegis-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: pki.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: pki.adminCertPEM, ClientKeyData: pki.adminKeyPEM}
	cfg.Contexts["aegis-test"] = &clientcmdapi.Context{Cluster: "aegis-test", AuthInfo: "admin"}
	cfg.CurrentContext = "aegis-test"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}
