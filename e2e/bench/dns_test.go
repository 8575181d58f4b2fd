package bench

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/aegis-cni/aegis/e2e/node"
)

// BenchmarkDNSProxy measures DNS through the transparent proxy against
// DNS straight to the same server (CoreDNS answering from a template), in
// one run: added p50/p99 latency at a fixed 1k queries/s, timeouts, and
// the maximum rate dnsperf reaches. The same queries are then handed to a
// bare relay (udprelay.go) in place of the proxy: the bound of what any
// proxy on this path reaches here. The three modes alternate in
// dnsRounds rounds and the medians are the figures. The relay runs in the
// benchmark's process: its CPU shows in the machine's figure only.
func BenchmarkDNSProxy(b *testing.B) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		b.Fatalf("dnsperf missing: run `make bench` (it installs it)")
	}
	cache := os.Getenv("AEGIS_CACHE")
	if cache == "" {
		cache = "/var/cache/aegis"
	}
	coredns := filepath.Join(cache, "coredns-v1.15.0", "coredns")
	if _, err := os.Stat(coredns); err != nil {
		b.Fatalf("CoreDNS not built: run scripts/build-coredns.sh (%v)", err)
	}
	n := node.New(b, node.Options{})
	n.Apply("00-pods.yaml", node.NamespaceManifest("bench", nil)+"---\n"+
		node.PodManifest("bench", "client", map[string]string{"app": "client"})+"---\n"+
		node.PodManifest("bench", "dns", map[string]string{"app": "dns"}))
	n.StartDaemon()
	client := n.NewPod("bench", "client", nil)
	server := n.NewPod("bench", "dns", nil)
	dir := b.TempDir()
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`example.test:53 {
    bind %s
    template IN A example.test {
        answer "{{ .Name }} 60 IN A 203.0.113.1"
    }
}
`, server.IP)), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := server.NS.Command(coredns, "-conf", corefile)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	serverAddr := net.JoinHostPort(server.IP.String(), "53")
	queries := filepath.Join(dir, "queries")
	var qf strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&qf, "q%d.example.test A\n", i)
	}
	if err := os.WriteFile(queries, []byte(qf.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	waitDNS(b, client, serverAddr)
	relay, err := startUDPRelay(n.NS, relayPort)
	if err != nil {
		b.Fatal(err)
	}
	defer relay.stop()
	maps := openMaps(b, n)

	measure := func() dnsFigures {
		var f dnsFigures
		lat, timeouts := fixedRate(b, client, serverAddr, 1000, 5*time.Second)
		f.p50, f.p99, f.timeouts = percentile(lat, 0.5), percentile(lat, 0.99), timeouts
		before := readCPU(n)
		var done int
		f.maxQPS, f.lost, done = dnsperf(b, client, server.IP.String(), queries)
		f.cpu = readCPU(n).sub(before).perOp(float64(done))
		return f
	}
	b.ResetTimer()
	for range b.N {
		// The modes alternate, dnsRounds times: the machine's speed drifts
		// by more than the figures differ, and each ratio compares
		// measurements a minute apart at most; the medians are reported.
		var rounds []dnsRound
		for i := range dnsRounds {
			var rd dnsRound
			rd.direct = measure()
			n.Apply("10-dns.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`)
			waitDNS(b, client, serverAddr)
			rd.proxied = measure()
			// The same queries, redirected to the relay instead.
			dnsPort, httpPort := proxyPorts(b, maps)
			if err := maps.SetProxyPorts(relayPort, httpPort); err != nil {
				b.Fatal(err)
			}
			waitDNS(b, client, serverAddr)
			rd.relayed = measure()
			if err := maps.SetProxyPorts(dnsPort, httpPort); err != nil {
				b.Fatal(err)
			}
			n.Remove("10-dns.yaml")
			waitDNS(b, client, serverAddr)
			fmt.Fprintf(os.Stdout, "\ndns round %d: max qps direct %.0f, proxied %.0f, relay %.0f: ratio %.2f, relay %.2f; added p50 %v, p99 %v\n",
				i+1, rd.direct.maxQPS, rd.proxied.maxQPS, rd.relayed.maxQPS, rd.ratio(), rd.relayed.maxQPS/rd.direct.maxQPS, rd.addP50(), rd.addP99())
			rounds = append(rounds, rd)
		}
		// The round of the median ratio stands for the rest in the lines
		// that give one round's figures.
		slices.SortFunc(rounds, func(a, b dnsRound) int { return cmp.Compare(a.ratio(), b.ratio()) })
		mid := rounds[len(rounds)/2]
		direct, proxied, relayed := mid.direct, mid.proxied, mid.relayed
		ratio := mid.ratio()
		relayRatio := medianOf(rounds, func(r dnsRound) float64 { return r.relayed.maxQPS / r.direct.maxQPS })
		addP50 := time.Duration(medianOf(rounds, func(r dnsRound) float64 { return float64(r.addP50()) }))
		addP99 := time.Duration(medianOf(rounds, func(r dnsRound) float64 { return float64(r.addP99()) }))
		timeouts := 0
		for _, r := range rounds {
			timeouts += r.proxied.timeouts
		}
		b.ReportMetric(float64(addP50.Microseconds()), "added_p50_us")
		b.ReportMetric(float64(addP99.Microseconds()), "added_p99_us")
		b.ReportMetric(ratio, "max_qps_ratio")
		b.ReportMetric(relayRatio, "relay_qps_ratio")
		verdict := func(ok bool) string {
			if ok {
				return "meets"
			}
			return "MISSES"
		}
		fmt.Fprintf(os.Stdout, "\ndns: medians of %d rounds; the lines of one mode's figures are the median round's\n", len(rounds))
		fmt.Fprintf(os.Stdout, "dns at 1k qps, direct:  p50 %v p99 %v timeouts %d\n", direct.p50, direct.p99, direct.timeouts)
		fmt.Fprintf(os.Stdout, "dns at 1k qps, proxied: p50 %v p99 %v timeouts %d\n", proxied.p50, proxied.p99, proxied.timeouts)
		fmt.Fprintf(os.Stdout, "dns at 1k qps, relay:   p50 %v p99 %v timeouts %d (bare transparent relay on the proxy's path)\n", relayed.p50, relayed.p99, relayed.timeouts)
		fmt.Fprintf(os.Stdout, "dns proxy added latency (median): p50 %v (target <= 100us: %s), p99 %v (target <= 1ms: %s)\n",
			addP50, verdict(addP50 <= 100*time.Microsecond), addP99, verdict(addP99 <= time.Millisecond))
		fmt.Fprintf(os.Stdout, "dnsperf max qps: direct %.0f, proxied %.0f, ratio %.2f (median; target >= 0.6: %s); lost direct %d, proxied %d\n",
			direct.maxQPS, proxied.maxQPS, ratio, verdict(ratio >= 0.6), direct.lost, proxied.lost)
		fmt.Fprintf(os.Stdout, "dnsperf max qps: relay %.0f, ratio %.2f (median: the bound); the proxy reaches %.2f of the relay's rate; lost by the relay %d\n",
			relayed.maxQPS, relayRatio, proxied.maxQPS/relayed.maxQPS, relayed.lost)
		fmt.Fprintf(os.Stdout, "dnsperf CPU per query: direct %s\ndnsperf CPU per query: relay %s\ndnsperf CPU per query: proxied %s\n", direct.cpu, relayed.cpu, proxied.cpu)
		fmt.Fprintf(os.Stdout, "dns proxy: %d timeouts at 1k qps over the rounds (target 0: %s)\n", timeouts, verdict(timeouts == 0))
	}
}

// dnsRounds is how many times BenchmarkDNSProxy alternates its modes.
const dnsRounds = 3

// dnsFigures are one mode's measurements in one round.
type dnsFigures struct {
	p50, p99 time.Duration
	timeouts int
	maxQPS   float64
	lost     int
	cpu      string // CPU per query at the maximum rate
}

// dnsRound is one round of the three modes, measured one after another.
type dnsRound struct{ direct, proxied, relayed dnsFigures }

func (r dnsRound) ratio() float64        { return r.proxied.maxQPS / r.direct.maxQPS }
func (r dnsRound) addP50() time.Duration { return r.proxied.p50 - r.direct.p50 }
func (r dnsRound) addP99() time.Duration { return r.proxied.p99 - r.direct.p99 }

// medianOf is the median of f over rounds.
func medianOf[R any](rounds []R, f func(R) float64) float64 {
	v := make([]float64, len(rounds))
	for i, r := range rounds {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func waitDNS(b *testing.B, client *node.Pod, server string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		client.NS.Do(func() error {
			c := &dns.Client{Timeout: 500 * time.Millisecond}
			m := new(dns.Msg)
			m.SetQuestion("ready.example.test.", dns.TypeA)
			_, _, err = c.Exchange(m, server)
			return nil
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("dns server not answering: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fixedRate sends qps queries a second for d from inside the client and
// returns each answer's latency and how many got none within a second.
func fixedRate(b *testing.B, client *node.Pod, server string, qps int, d time.Duration) ([]time.Duration, int) {
	var lat []time.Duration
	timeouts := 0
	err := client.NS.Do(func() error {
		c, err := net.Dial("udp4", server)
		if err != nil {
			return err
		}
		defer c.Close()
		total := int(d.Seconds() * float64(qps))
		sent := make([]time.Time, total)
		got := make([]bool, total)
		var mu sync.Mutex
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 512)
			for {
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				var m dns.Msg
				if m.Unpack(buf[:n]) != nil {
					continue
				}
				id := int(m.Id)
				mu.Lock()
				for i := id; i < total; i += 65536 {
					if !got[i] && !sent[i].IsZero() {
						got[i] = true
						lat = append(lat, time.Since(sent[i]))
						break
					}
				}
				mu.Unlock()
			}
		}()
		interval := time.Second / time.Duration(qps)
		start := time.Now()
		for i := range total {
			time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
			m := new(dns.Msg)
			m.SetQuestion(fmt.Sprintf("q%d.example.test.", i%1000), dns.TypeA)
			m.Id = uint16(i)
			q, _ := m.Pack()
			mu.Lock()
			sent[i] = time.Now()
			mu.Unlock()
			if _, err := c.Write(q); err != nil {
				return err
			}
		}
		wg.Wait()
		for i := range total {
			if !got[i] {
				timeouts++
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return lat, timeouts
}

var (
	qpsRe  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	lostRe = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	doneRe = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
)

// dnsperf runs dnsperf at its maximum rate for 5s and returns the queries
// per second, the queries lost and the queries answered.
func dnsperf(b *testing.B, client *node.Pod, server, queries string) (float64, int, int) {
	out, err := client.NS.Exec(30*time.Second, "dnsperf", "-s", server, "-d", queries, "-l", "5", "-c", "8", "-T", "2", "-q", "200", "-t", "2")
	if err != nil {
		b.Fatalf("dnsperf: %v\n%s", err, out)
	}
	m := qpsRe.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("dnsperf output without a rate:\n%s", out)
	}
	qps, _ := strconv.ParseFloat(m[1], 64)
	lost := 0
	if l := lostRe.FindStringSubmatch(out); l != nil {
		lost, _ = strconv.Atoi(l[1])
	}
	done := 0
	if d := doneRe.FindStringSubmatch(out); d != nil {
		done, _ = strconv.Atoi(d[1])
	}
	return qps, lost, done
}
