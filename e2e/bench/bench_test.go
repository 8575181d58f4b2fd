// Package bench measures Aegis against the same namespace node without it:
// pod-to-pod TCP request/response, new-connection rate and iperf3
// throughput through the full chain with a 10k-rule policy and 10k ipcache
// entries, and CNI ADD/DEL latency against ptp alone. Both sides are
// measured alternately in one run and printed as ratios. `make bench`.
package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/e2e/node"
)

// baselineConfList is the same chain without aegis-cni.
const baselineConfList = `{
  "cniVersion": "1.1.0",
  "name": "baseline",
  "plugins": [
    {"type": "ptp", "mtu": 1500, "ipMasq": false,
     "ipam": {"type": "aegis-ipam", "podCIDR": "10.244.1.0/24", "dataDir": "/tmp/aegis-bench-ipam-%d", "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}`

// bigPolicy selects the server and allows the client on the bench ports,
// plus n /32 ipBlock peers: n CIDR identities in the ipcache and n policy
// entries the server's lookups run among.
func bigPolicy(n int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: big, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 5001}, {port: 5201}, {port: 5002}]
`)
	for i := range n {
		fmt.Fprintf(&b, "  - from: [{ipBlock: {cidr: 198.51.%d.%d/32}}]\n    ports: [{port: %d}]\n", 100+i/250, i%250+1, 10000+i%5000)
	}
	return b.String()
}

type side struct {
	name           string
	n              *node.Node
	client, server *node.Pod
}

func newSide(b *testing.B, name string, aegis bool, daemonArgs ...string) *side {
	opts := node.Options{}
	if !aegis {
		opts.ConfList = fmt.Sprintf(baselineConfList, time.Now().UnixNano())
	}
	n := node.New(b, opts)
	n.Apply("00-pods.yaml", node.NamespaceManifest("bench", nil)+"---\n"+
		node.PodManifest("bench", "client", map[string]string{"app": "client"})+"---\n"+
		node.PodManifest("bench", "server", map[string]string{"app": "server"}))
	n.StartDaemon(daemonArgs...)
	s := &side{name: name, n: n}
	s.client = n.NewPod("bench", "client", nil)
	s.server = n.NewPod("bench", "server", nil)
	if aegis {
		start := time.Now()
		n.Apply("10-big.yaml", bigPolicy(10000))
		b.Logf("aegis: 10k-rule policy applied in %s (status: %+v)", time.Since(start).Round(time.Millisecond), n.Status().PolicyEntries)
	}
	s.server.NS.Serve(b, "tcp", s.server.Addr(5001), "")
	s.server.NS.Serve(b, "tcp", s.server.Addr(5002), "")
	return s
}

// rr counts request/response transactions on one connection.
func (s *side) rr(d time.Duration) (float64, error) {
	c, err := s.client.NS.Dial("tcp4", s.server.Addr(5001), time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 64)
	n := 0
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := c.Write([]byte("x")); err != nil {
			return 0, err
		}
		if _, err := c.Read(buf); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / d.Seconds(), nil
}

// crr counts new connections with one exchange each. The whole loop runs
// on a thread inside the client's namespace, so no per-connection
// namespace switch muddies the figure.
func (s *side) crr(d time.Duration) (float64, error) {
	buf := make([]byte, 64)
	n := 0
	err := s.client.NS.Do(func() error {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			c, err := net.DialTimeout("tcp4", s.server.Addr(5002), time.Second)
			if err != nil {
				return err
			}
			if _, err := c.Write([]byte("x")); err != nil {
				c.Close()
				return err
			}
			if _, err := c.Read(buf); err != nil {
				c.Close()
				return err
			}
			c.Close()
			n++
		}
		return nil
	})
	return float64(n) / d.Seconds(), err
}

// iperf runs iperf3 for d and returns bits per second.
func (s *side) iperf(d time.Duration) (float64, error) {
	srv := s.server.NS.Command("iperf3", "-s", "-1", "-B", s.server.IP.String(), "-p", "5201")
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	time.Sleep(200 * time.Millisecond)
	out, err := s.client.NS.Exec(d+20*time.Second, "iperf3", "-c", s.server.IP.String(), "-p", "5201", "-t", fmt.Sprint(int(d.Seconds())), "-J")
	if err != nil {
		return 0, fmt.Errorf("iperf3: %v: %s", err, out)
	}
	return parseIperf(out)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(v []time.Duration, p float64) time.Duration {
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// BenchmarkDatapath compares traffic through Aegis with the baseline.
func BenchmarkDatapath(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing: run `make bench` (it installs it)")
	}
	base := newSide(b, "baseline", false)
	aeg := newSide(b, "aegis", true)
	const rounds = 5
	tests := []struct {
		name string
		unit string
		run  func(*side) (float64, error)
	}{
		{"tcp_rr", "trans/s", func(s *side) (float64, error) { return s.rr(3 * time.Second) }},
		{"tcp_crr", "conn/s", func(s *side) (float64, error) { return s.crr(3 * time.Second) }},
		{"iperf3", "bit/s", func(s *side) (float64, error) { return s.iperf(3 * time.Second) }},
	}
	targets := map[string]float64{"tcp_rr": 0.97, "tcp_crr": 0.90, "iperf3": 0.95}
	b.ResetTimer()
	for range b.N {
		var report []string
		for _, tc := range tests {
			if only := os.Getenv("AEGIS_BENCH_ONLY"); only != "" && only != tc.name {
				continue
			}
			vals := map[string][]float64{}
			for r := range rounds {
				// Alternate which side goes first so drift hits both.
				order := []*side{base, aeg}
				if r%2 == 1 {
					order = []*side{aeg, base}
				}
				for _, s := range order {
					v, err := tc.run(s)
					if err != nil {
						b.Fatalf("%s on %s: %v", tc.name, s.name, err)
					}
					vals[s.name] = append(vals[s.name], v)
				}
			}
			mb, ma := median(vals["baseline"]), median(vals["aegis"])
			ratio := ma / mb
			b.ReportMetric(ratio, tc.name+"_ratio")
			verdict := "meets"
			if ratio < targets[tc.name] {
				verdict = "BELOW"
			}
			report = append(report, fmt.Sprintf("%-8s baseline %14.0f %-7s aegis %14.0f %-7s ratio %.3f (target >= %.2f: %s)",
				tc.name, mb, tc.unit, ma, tc.unit, ratio, targets[tc.name], verdict))
		}
		fmt.Fprintln(os.Stdout, "\n"+strings.Join(report, "\n"))
	}
}

// BenchmarkCNI compares ADD and DEL latency of the full chain with ptp
// alone, sequentially and 20 in parallel.
func BenchmarkCNI(b *testing.B) {
	base := newSide(b, "baseline", false)
	aeg := newSide(b, "aegis", true)
	b.ResetTimer()
	for range b.N {
		var report []string
		for _, mode := range []struct {
			name     string
			parallel int
		}{{"sequential", 1}, {"parallel20", 20}} {
			lat := map[string][2][]time.Duration{}
			for r := range 2 {
				order := []*side{base, aeg}
				if r%2 == 1 {
					order = []*side{aeg, base}
				}
				for _, s := range order {
					add, del := cniLatency(b, s, 20, mode.parallel)
					cur := lat[s.name]
					cur[0] = append(cur[0], add...)
					cur[1] = append(cur[1], del...)
					lat[s.name] = cur
				}
			}
			for i, op := range []string{"ADD", "DEL"} {
				b50, b99 := percentile(lat["baseline"][i], 0.5), percentile(lat["baseline"][i], 0.99)
				a50, a99 := percentile(lat["aegis"][i], 0.5), percentile(lat["aegis"][i], 0.99)
				ratio := float64(a99) / float64(b99)
				b.ReportMetric(ratio, fmt.Sprintf("%s_%s_p99_ratio", op, mode.name))
				line := fmt.Sprintf("%-3s %-10s ptp p50 %8s p99 %8s | aegis p50 %8s p99 %8s | p99 ratio %.2f",
					op, mode.name, b50.Round(time.Microsecond*100), b99.Round(time.Microsecond*100),
					a50.Round(time.Microsecond*100), a99.Round(time.Microsecond*100), ratio)
				if op == "ADD" {
					verdict := "meets"
					if ratio > 1.3 {
						verdict = "ABOVE"
					}
					line += fmt.Sprintf(" (target <= 1.30: %s)", verdict)
				}
				report = append(report, line)
			}
		}
		fmt.Fprintln(os.Stdout, "\n"+strings.Join(report, "\n"))
	}
}

// cniLatency adds count pods (parallel at a time) and deletes them,
// timing each call.
func cniLatency(b *testing.B, s *side, count, parallel int) (add, del []time.Duration) {
	pods := make([]*node.Pod, count)
	var mu sync.Mutex
	run := func(fn func(i int) time.Duration, out *[]time.Duration) {
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for i := range count {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				d := fn(i)
				mu.Lock()
				*out = append(*out, d)
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	run(func(i int) time.Duration {
		p, err := s.n.TryNewPod("bench", fmt.Sprintf("lat%d", i), nil)
		if err != nil {
			b.Errorf("ADD on %s: %v", s.name, err)
		}
		pods[i] = p
		return p.AddTook
	}, &add)
	run(func(i int) time.Duration {
		start := time.Now()
		if err := s.n.DelPod(pods[i]); err != nil {
			b.Errorf("DEL on %s: %v", s.name, err)
		}
		return time.Since(start)
	}, &del)
	return add, del
}
