// Package metrics exports Prometheus metrics: the pod-level hubble_*
// families counted from the flow stream, with source and destination pod
// and namespace as context labels (as Hubble's labelsContext does), and
// node-level forward and drop counters read from the datapath at scrape
// time.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// DefaultAddr is Hubble's metrics port, on loopback.
const DefaultAddr = "127.0.0.1:9965"

var contextLabels = []string{"source_namespace", "source_pod", "destination_namespace", "destination_pod"}

// Metrics holds the collectors.
type Metrics struct {
	reg      *prometheus.Registry
	flows    *prometheus.CounterVec
	drops    *prometheus.CounterVec
	tcpFlags *prometheus.CounterVec
	verdicts *prometheus.CounterVec
	dnsQ     *prometheus.CounterVec
	dnsR     *prometheus.CounterVec
	dnsTypes *prometheus.CounterVec
	httpReq  *prometheus.CounterVec
	httpDur  *prometheus.HistogramVec
	observer *observe.Observer
	maps     *bpf.Maps

	mu       sync.Mutex
	l4Series map[l4Key][]prometheus.Counter
	l7Series map[l7Key]*l7Counters

	// The counters of the observer's entries by their keys, for the
	// reader's batches (its own lock: an L7 entry in a batch counts
	// through Count).
	entryMu     sync.Mutex
	entrySeries map[observe.L4Key][]prometheus.Counter
}

// New registers the collectors.
func New(maps *bpf.Maps, obs *observe.Observer) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), maps: maps, observer: obs, l4Series: map[l4Key][]prometheus.Counter{},
		l7Series: map[l7Key]*l7Counters{}, entrySeries: map[observe.L4Key][]prometheus.Counter{}}
	m.flows = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_flows_processed_total", Help: "Total number of flows processed"},
		append([]string{"type", "subtype", "verdict"}, contextLabels...))
	m.drops = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_drop_total", Help: "Number of drops"},
		append([]string{"reason", "protocol", "traffic_direction"}, contextLabels...))
	m.tcpFlags = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_tcp_flags_total", Help: "TCP flag occurrences"},
		append([]string{"flag", "family"}, contextLabels...))
	m.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_policy_verdicts_total", Help: "Number of policy verdicts"},
		append([]string{"direction", "match", "action"}, contextLabels...))
	dnsLabels := append([]string{"rcode", "qtypes", "ips_returned"}, contextLabels...)
	m.dnsQ = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_dns_queries_total", Help: "Number of DNS queries observed"}, dnsLabels)
	m.dnsR = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_dns_responses_total", Help: "Number of DNS responses observed"}, dnsLabels)
	m.dnsTypes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_dns_response_types_total", Help: "Number of DNS response types"},
		append([]string{"type", "qtypes"}, contextLabels...))
	m.httpReq = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_http_requests_total", Help: "Count of HTTP requests"},
		append([]string{"method", "protocol", "status", "reporter"}, contextLabels...))
	m.httpDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hubble_http_request_duration_seconds", Help: "Quantiles of HTTP request duration in seconds",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}},
		append([]string{"method", "reporter"}, contextLabels...))
	m.reg.MustRegister(m.flows, m.drops, m.tcpFlags, m.verdicts, m.dnsQ, m.dnsR, m.dnsTypes, m.httpReq, m.httpDur, &nodeCollector{m: m})
	return m
}

func ctxValues(f *flow.Flow) []string {
	return []string{f.GetSource().GetNamespace(), f.GetSource().GetPodName(), f.GetDestination().GetNamespace(), f.GetDestination().GetPodName()}
}

// Count accounts one flow.
func (m *Metrics) Count(f *flow.Flow) {
	if l7 := f.GetL7(); l7.GetDns() != nil || l7.GetHttp() != nil {
		m.countL7(l7KeyOf(f), func() *flow.Flow { return f }, time.Duration(l7.GetLatencyNs()))
		return
	}
	k := l4KeyOf(f)
	m.mu.Lock()
	cs, ok := m.l4Series[k]
	if !ok {
		cs = m.l4Counters(f, ctxValues(f))
		m.l4Series[k] = cs
	}
	m.mu.Unlock()
	for _, x := range cs {
		x.Inc()
	}
}

// l4Key is everything the series an L3/L4 flow counts in depend on: flows
// that share it count in the same counters, found without building and
// hashing label lists per flow (at hundreds of thousands of flows a
// second, that was most of the cost).
type l4Key struct {
	srcNS, srcPod, dstNS, dstPod string
	verdict                      flow.Verdict
	reason                       flow.DropReason
	dir                          flow.TrafficDirection
	proto                        string
	flags                        uint8 // SYN, SYN-ACK, FIN, RST
	verdictCounted, matched      bool
}

func l4KeyOf(f *flow.Flow) l4Key {
	k := l4Key{srcNS: f.GetSource().GetNamespace(), srcPod: f.GetSource().GetPodName(),
		dstNS: f.GetDestination().GetNamespace(), dstPod: f.GetDestination().GetPodName(),
		verdict: f.GetVerdict(), dir: f.GetTrafficDirection(), proto: protocol(f)}
	if k.verdict == flow.Verdict_DROPPED {
		k.reason = f.GetDropReasonDesc()
	}
	if fl := f.GetL4().GetTCP().GetFlags(); fl != nil {
		for i, on := range []bool{fl.GetSYN() && !fl.GetACK(), fl.GetSYN() && fl.GetACK(), fl.GetFIN(), fl.GetRST()} {
			if on {
				k.flags |= 1 << i
			}
		}
	}
	k.verdictCounted = k.verdict == flow.Verdict_DROPPED || (f.GetL4().GetTCP().GetFlags().GetSYN() && !f.GetIsReply().GetValue())
	k.matched = len(f.GetIngressAllowedBy())+len(f.GetEgressAllowedBy())+len(f.GetIngressDeniedBy())+len(f.GetEgressDeniedBy()) > 0
	return k
}

// l4Counters are the counters an L3/L4 flow counts in, with context c.
// l7Key is everything the series an L7 flow counts in depend on, as l4Key
// is for L3/L4 flows: the label lists are built and hashed once per key,
// not per request or query.
type l7Key struct {
	srcNS, srcPod, dstNS, dstPod string
	verdict                      flow.Verdict
	typ                          flow.L7FlowType
	dir                          flow.TrafficDirection
	dns                          bool
	// HTTP
	method, protocol string
	code             uint32
	// DNS
	qtypes, rrtypes string
	rcode           uint32
	ips             int
}

// countL7 counts an L7 flow in the series of k, which flow (called only
// for a series not seen before) labels.
func (m *Metrics) countL7(k l7Key, flow func() *flow.Flow, latency time.Duration) {
	m.mu.Lock()
	cs, ok := m.l7Series[k]
	if !ok {
		cs = m.l7Counters(flow())
		m.l7Series[k] = cs
	}
	m.mu.Unlock()
	for _, x := range cs.counters {
		x.Inc()
	}
	if cs.duration != nil {
		cs.duration.Observe(latency.Seconds())
	}
}

// countHTTP counts an HTTP entry without building its flow, unless its
// series is new.
func (m *Metrics) countHTTP(e *observe.Entry, h observe.HTTPKey, latency time.Duration) {
	k := l7Key{srcNS: h.SrcNamespace, srcPod: h.SrcPod, dstNS: h.DstNamespace, dstPod: h.DstPod, verdict: h.Verdict,
		typ: flow.L7FlowType_REQUEST, dir: flow.TrafficDirection_EGRESS, method: h.Method, protocol: h.Protocol, code: h.Code}
	if h.Response {
		k.typ = flow.L7FlowType_RESPONSE
	}
	if h.Ingress {
		k.dir = flow.TrafficDirection_INGRESS
	}
	m.countL7(k, func() *flow.Flow { return m.observer.Flow(e) }, latency)
}

func l7KeyOf(f *flow.Flow) l7Key {
	l7 := f.GetL7()
	k := l7Key{srcNS: f.GetSource().GetNamespace(), srcPod: f.GetSource().GetPodName(),
		dstNS: f.GetDestination().GetNamespace(), dstPod: f.GetDestination().GetPodName(),
		verdict: f.GetVerdict(), typ: l7.GetType(), dir: f.GetTrafficDirection()}
	if d := l7.GetDns(); d != nil {
		k.dns = true
		k.qtypes = strings.Join(d.GetQtypes(), ",")
		k.rrtypes = strings.Join(d.GetRrtypes(), ",")
		k.rcode, k.ips = d.GetRcode(), len(d.GetIps())
	} else if h := l7.GetHttp(); h != nil {
		k.method, k.protocol, k.code = h.GetMethod(), h.GetProtocol(), h.GetCode()
	}
	return k
}

// l7Counters are the series one L7 flow counts in.
type l7Counters struct {
	counters []prometheus.Counter
	duration prometheus.Observer
}

func (m *Metrics) l7Counters(f *flow.Flow) *l7Counters {
	c := ctxValues(f)
	cs := &l7Counters{}
	if d := f.GetL7().GetDns(); d != nil {
		cs.counters = m.dnsCounters(f, d, c)
		return cs
	}
	h := f.GetL7().GetHttp()
	if h == nil {
		return cs
	}
	cs.counters = append(cs.counters, m.flows.WithLabelValues(append([]string{"L7", "http", f.GetVerdict().String()}, c...)...))
	// Counted on the response, as Hubble's http handler does, with the
	// request's direction (client to server) as context.
	if f.GetL7().GetType() == flow.L7FlowType_RESPONSE {
		rc := ctxValues(reverse(f))
		// The reporter is the side whose proxy saw it, as Hubble labels
		// it: the server for ingress, the client for egress.
		reporter := "client"
		if f.GetTrafficDirection() == flow.TrafficDirection_INGRESS {
			reporter = "server"
		}
		cs.counters = append(cs.counters, m.httpReq.WithLabelValues(append([]string{h.GetMethod(), h.GetProtocol(), fmt.Sprint(h.GetCode()), reporter}, rc...)...))
		cs.duration = m.httpDur.WithLabelValues(append([]string{h.GetMethod(), reporter}, rc...)...)
	}
	return cs
}

func (m *Metrics) l4Counters(f *flow.Flow, c []string) []prometheus.Counter {
	cs := []prometheus.Counter{m.flows.WithLabelValues(append([]string{"L3_L4", "to-endpoint", f.GetVerdict().String()}, c...)...)}
	if f.GetVerdict() == flow.Verdict_DROPPED {
		cs = append(cs, m.drops.WithLabelValues(append([]string{f.GetDropReasonDesc().String(), protocol(f), strings.ToLower(f.GetTrafficDirection().String())}, c...)...))
	}
	if fl := f.GetL4().GetTCP().GetFlags(); fl != nil {
		for _, x := range []struct {
			on   bool
			name string
		}{{fl.GetSYN() && !fl.GetACK(), "SYN"}, {fl.GetSYN() && fl.GetACK(), "SYN-ACK"}, {fl.GetFIN(), "FIN"}, {fl.GetRST(), "RST"}} {
			if x.on {
				cs = append(cs, m.tcpFlags.WithLabelValues(append([]string{x.name, "IPv4"}, c...)...))
			}
		}
	}
	// A policy verdict is the decision on a new connection (or a drop).
	if f.GetVerdict() == flow.Verdict_DROPPED || (f.GetL4().GetTCP().GetFlags().GetSYN() && !f.GetIsReply().GetValue()) {
		match := "none"
		if len(f.GetIngressAllowedBy())+len(f.GetEgressAllowedBy())+len(f.GetIngressDeniedBy())+len(f.GetEgressDeniedBy()) > 0 {
			match = "l3-l4"
		}
		action := "forwarded"
		if f.GetVerdict() == flow.Verdict_DROPPED {
			action = "dropped"
		}
		cs = append(cs, m.verdicts.WithLabelValues(append([]string{strings.ToLower(f.GetTrafficDirection().String()), match, action}, c...)...))
	}
	return cs
}

func protocol(f *flow.Flow) string {
	switch f.GetL4().GetProtocol().(type) {
	case *flow.Layer4_TCP:
		return "TCP"
	case *flow.Layer4_UDP:
		return "UDP"
	case *flow.Layer4_SCTP:
		return "SCTP"
	case *flow.Layer4_ICMPv4:
		return "ICMPv4"
	}
	return "Unknown"
}

// Run counts the observer's entries as they are taken in, until ctx ends.
func (m *Metrics) Run(ctx context.Context) {
	remove := m.observer.AddTap(m.CountEntries)
	defer remove()
	<-ctx.Done()
}

// entrySeriesMax bounds the remembered keys: past that many (ends are
// remembered per address) it starts again.
const entrySeriesMax = 16384

// CountEntries accounts a batch of the observer's entries. An L3/L4 entry
// counts in the series of its key, found without building its flow; a
// key's first entry builds one to name them, with the same labels as
// Count. Runs of one key count with one add per counter.
func (m *Metrics) CountEntries(batch []observe.Entry) {
	m.entryMu.Lock()
	defer m.entryMu.Unlock()
	var (
		last observe.L4Key
		cs   []prometheus.Counter
		run  float64
	)
	flush := func() {
		for _, c := range cs {
			c.Add(run)
		}
		cs, run = nil, 0
	}
	for i := range batch {
		e := &batch[i]
		k, ok := e.L4Key()
		if !ok {
			if h, latency, ok := e.HTTP(); ok {
				m.countHTTP(e, h, latency)
			} else {
				m.Count(e.L7())
			}
			continue
		}
		if cs != nil && k == last {
			run++
			continue
		}
		flush()
		var found bool
		if cs, found = m.entrySeries[k]; !found {
			if len(m.entrySeries) >= entrySeriesMax {
				clear(m.entrySeries)
			}
			f := m.observer.Flow(e)
			cs = m.l4Counters(f, ctxValues(f))
			m.entrySeries[k] = cs
		}
		last, run = k, 1
	}
	flush()
}

// Serve exposes /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// nodeCollector reads the datapath's per-CPU counters and the loss
// counters at scrape time.
type nodeCollector struct{ m *Metrics }

var (
	fwdDesc   = prometheus.NewDesc("aegis_forward_count_total", "Packets forwarded by the datapath", []string{"direction"}, nil)
	fwdBytes  = prometheus.NewDesc("aegis_forward_bytes_total", "Bytes forwarded by the datapath", []string{"direction"}, nil)
	dropDesc  = prometheus.NewDesc("aegis_drop_count_total", "Packets dropped by the datapath", []string{"reason", "direction"}, nil)
	dropBytes = prometheus.NewDesc("aegis_drop_bytes_total", "Bytes dropped by the datapath", []string{"reason", "direction"}, nil)
	lostDesc  = prometheus.NewDesc("hubble_lost_events_total", "Number of lost events", []string{"source"}, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fwdDesc, fwdBytes, dropDesc, dropBytes, lostDesc} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	if cs, err := c.m.maps.ReadCounters(); err == nil {
		for k, v := range cs {
			dir := policy.Direction(k.Dir).String()
			if k.Reason == bpf.ReasonForwarded {
				ch <- prometheus.MustNewConstMetric(fwdDesc, prometheus.CounterValue, float64(v.Packets), dir)
				ch <- prometheus.MustNewConstMetric(fwdBytes, prometheus.CounterValue, float64(v.Bytes), dir)
				continue
			}
			ch <- prometheus.MustNewConstMetric(dropDesc, prometheus.CounterValue, float64(v.Packets), bpf.ReasonName(k.Reason), dir)
			ch <- prometheus.MustNewConstMetric(dropBytes, prometheus.CounterValue, float64(v.Bytes), bpf.ReasonName(k.Reason), dir)
		}
	}
	st := c.m.observer.Stats()
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(st.KernelLost), "perf_event_ring_buffer")
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(st.DecodeErrors), "decode")
	ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(st.SubscriberLag), "observer_events_queue")
}

// countDNS accounts an L7 DNS flow of the DNS proxy, labelled as Hubble's
// dns handler labels it (a refused query counts as a query with rcode
// Refused, as the pod sees it).
func (m *Metrics) dnsCounters(f *flow.Flow, d *flow.DNS, c []string) []prometheus.Counter {
	cs := []prometheus.Counter{m.flows.WithLabelValues(append([]string{"L7", "dns", f.GetVerdict().String()}, c...)...)}
	qtypes := strings.Join(d.GetQtypes(), ",")
	if f.GetL7().GetType() == flow.L7FlowType_REQUEST {
		rcode := ""
		if f.GetVerdict() == flow.Verdict_DROPPED {
			rcode = "Refused"
		}
		return append(cs, m.dnsQ.WithLabelValues(append([]string{rcode, qtypes, "0"}, c...)...))
	}
	// The proxy reports an allowed query once, with its answer: count the
	// query here (from the pod to the server).
	cs = append(cs, m.dnsQ.WithLabelValues(append([]string{"", qtypes, "0"}, ctxValues(reverse(f))...)...),
		m.dnsR.WithLabelValues(append([]string{dnsRcode(d.GetRcode()), qtypes, fmt.Sprint(len(d.GetIps()))}, c...)...))
	for _, t := range d.GetRrtypes() {
		cs = append(cs, m.dnsTypes.WithLabelValues(append([]string{t, qtypes}, c...)...))
	}
	return cs
}

func dnsRcode(rc uint32) string {
	switch rc {
	case 0:
		return "No Error"
	case 1:
		return "Format Error"
	case 2:
		return "Server Failure"
	case 3:
		return "Non-Existent Domain"
	case 5:
		return "Query Refused"
	}
	return fmt.Sprint(rc)
}

// reverse is f seen the other way: for an answer, the query's direction.
func reverse(f *flow.Flow) *flow.Flow {
	return &flow.Flow{Source: f.GetDestination(), Destination: f.GetSource()}
}
