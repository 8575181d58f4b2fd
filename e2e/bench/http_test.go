package bench

import (
	"cmp"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/e2e/node"
)

// BenchmarkHTTPProxy measures HTTP through the L7 proxy (a rule allowing
// GET /) against the same server straight, with wrk: requests per second
// and p99 latency. The same connections are then handed to a bare relay
// (relay.go) in place of the proxy: the bound of what any proxy on this
// path can reach here, so that the ratio the target asks for reads against
// what is possible. The three modes alternate httpRounds times and the
// medians are the figures, as for DNS. The relay runs in the benchmark's
// process: its CPU shows in the machine's figure only.
func BenchmarkHTTPProxy(b *testing.B) {
	if _, err := exec.LookPath("wrk"); err != nil {
		b.Fatalf("wrk missing: run `make bench` (it installs it)")
	}
	n := node.New(b, node.Options{})
	n.Apply("00-pods.yaml", node.NamespaceManifest("bench", nil)+"---\n"+
		node.PodManifest("bench", "client", map[string]string{"app": "client"})+"---\n"+
		node.PodManifest("bench", "web", map[string]string{"app": "web"}))
	n.StartDaemon()
	client := n.NewPod("bench", "client", nil)
	web := n.NewPod("bench", "web", nil)
	var ln net.Listener
	if err := web.NS.Do(func() (err error) { ln, err = net.Listen("tcp4", web.Addr(8080)); return err }); err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello from web\n"))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	url := "http://" + web.Addr(8080) + "/"
	relay, err := startRelay(n.NS, relayPort)
	if err != nil {
		b.Fatal(err)
	}
	defer relay.stop()
	maps := openMaps(b, n)
	measure := func() httpFigures {
		before := readCPU(n)
		var f httpFigures
		var count float64
		f.rps, f.p99, count = runWrk(b, client, url)
		f.cpu = readCPU(n).sub(before).perOp(count)
		return f
	}

	b.ResetTimer()
	for range b.N {
		var rounds []httpRound
		for i := range httpRounds {
			var rd httpRound
			rd.direct = measure()
			n.Apply("10-http.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET, path: "/"}]}}]
`)
			rd.proxied = measure()
			// The same connections, redirected to the relay instead.
			dnsPort, httpPort := proxyPorts(b, maps)
			if err := maps.SetProxyPorts(dnsPort, relayPort); err != nil {
				b.Fatal(err)
			}
			rd.relayed = measure()
			if err := maps.SetProxyPorts(dnsPort, httpPort); err != nil {
				b.Fatal(err)
			}
			n.Remove("10-http.yaml")
			fmt.Fprintf(os.Stdout, "\nhttp round %d: req/s direct %.0f, proxied %.0f, relay %.0f: ratio %.2f, relay %.2f; added p99 %v\n",
				i+1, rd.direct.rps, rd.proxied.rps, rd.relayed.rps, rd.ratio(), rd.relayed.rps/rd.direct.rps, rd.addP99())
			rounds = append(rounds, rd)
		}
		slices.SortFunc(rounds, func(a, b httpRound) int { return cmp.Compare(a.ratio(), b.ratio()) })
		mid := rounds[len(rounds)/2]
		direct, proxied, relayed := mid.direct, mid.proxied, mid.relayed
		ratio := mid.ratio()
		relayRatio := medianOf(rounds, func(r httpRound) float64 { return r.relayed.rps / r.direct.rps })
		added := time.Duration(medianOf(rounds, func(r httpRound) float64 { return float64(r.addP99()) }))
		b.ReportMetric(ratio, "rps_ratio")
		b.ReportMetric(float64(added.Microseconds()), "added_p99_us")
		b.ReportMetric(relayRatio, "relay_rps_ratio")
		verdict := func(ok bool) string {
			if ok {
				return "meets"
			}
			return "MISSES"
		}
		fmt.Fprintf(os.Stdout, "\nhttp: medians of %d rounds; the lines of one mode's figures are the median round's\n", len(rounds))
		fmt.Fprintf(os.Stdout, "http direct:  %.0f req/s, p99 %v\nhttp relay:   %.0f req/s, p99 %v (bare transparent relay on the proxy's path: ratio %.2f, the bound)\nhttp proxied: %.0f req/s, p99 %v\n",
			direct.rps, direct.p99, relayed.rps, relayed.p99, relayRatio, proxied.rps, proxied.p99)
		fmt.Fprintf(os.Stdout, "http proxy: rps ratio %.2f (median; target >= 0.5: %s), added p99 %v (median; target <= 2ms: %s)\n",
			ratio, verdict(ratio >= 0.5), added, verdict(added <= 2*time.Millisecond))
		fmt.Fprintf(os.Stdout, "http proxy: %.2f of the relay's rate\n", proxied.rps/relayed.rps)
		fmt.Fprintf(os.Stdout, "http CPU per request: direct %s\nhttp CPU per request: relay %s\nhttp CPU per request: proxied %s\n", direct.cpu, relayed.cpu, proxied.cpu)
	}
}

// httpRounds is how many times BenchmarkHTTPProxy alternates its modes.
const httpRounds = 3

// httpFigures are one mode's measurements in one round.
type httpFigures struct {
	rps float64
	p99 time.Duration
	cpu string // CPU per request
}

// httpRound is one round of the three modes, measured one after another.
type httpRound struct{ direct, proxied, relayed httpFigures }

func (r httpRound) ratio() float64        { return r.proxied.rps / r.direct.rps }
func (r httpRound) addP99() time.Duration { return r.proxied.p99 - r.direct.p99 }

var (
	rpsRe = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	p99Re = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)`)
	reqRe = regexp.MustCompile(`([0-9]+) requests in`)
)

// runWrk runs wrk for 5s from inside the client and returns requests per
// second, the p99 latency and the requests answered; it fails on any
// non-2xx answer or socket error.
func runWrk(b *testing.B, client *node.Pod, url string) (float64, time.Duration, float64) {
	out, err := client.NS.Exec(30*time.Second, "wrk", "-t", "2", "-c", "16", "-d", "5s", "--latency", url)
	if err != nil {
		b.Fatalf("wrk: %v\n%s", err, out)
	}
	if strings.Contains(out, "Non-2xx") || strings.Contains(out, "Socket errors") {
		b.Fatalf("wrk saw errors:\n%s", out)
	}
	m := rpsRe.FindStringSubmatch(out)
	l := p99Re.FindStringSubmatch(out)
	if m == nil || l == nil {
		b.Fatalf("wrk output without a rate or p99:\n%s", out)
	}
	rps, _ := strconv.ParseFloat(m[1], 64)
	v, _ := strconv.ParseFloat(l[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[l[2]]
	var count float64
	if r := reqRe.FindStringSubmatch(out); r != nil {
		count, _ = strconv.ParseFloat(r[1], 64)
	}
	return rps, time.Duration(v * float64(unit)), count
}

// relayPort is where the relay listens in the node's namespace.
const relayPort = 18080

// openMaps opens the node's pinned maps until the benchmark ends.
func openMaps(b *testing.B, n *node.Node) *bpf.Maps {
	m, err := bpf.OpenMaps(bpf.Paths{Root: n.BPFRoot})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// proxyPorts reads the ports the datapath hands DNS and HTTP to.
func proxyPorts(b *testing.B, m *bpf.Maps) (dns, http uint16) {
	var cfg struct {
		DNS, HTTP uint16
		_         uint32
	}
	if err := m.Proxy.Lookup(uint32(0), &cfg); err != nil {
		b.Fatalf("read the proxy ports: %v", err)
	}
	if cfg.HTTP == 0 {
		b.Fatal("the datapath has no HTTP proxy port")
	}
	return cfg.DNS, cfg.HTTP
}
