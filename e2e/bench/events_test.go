package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/observer"
	"github.com/cilium/ebpf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/e2e/node"
)

// denyEgress makes every packet the flooder sends a drop, and so a flow
// event: the datapath's drop counter is the count of events emitted.
const denyEgress = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: bench}
spec:
  podSelector: {matchLabels: {app: flooder}}
  policyTypes: [Egress]
`

// flood is a node whose pod's every packet is a drop event, and the
// means to count what aegisd made of them.
type flood struct {
	n    *node.Node
	pod  *node.Pod
	maps *bpf.Maps
	hub  observer.ObserverClient
	prog *ebpf.Program
	host int // the pod's host-side ifindex
}

func newFlood(b *testing.B, daemonArgs ...string) *flood {
	n := node.New(b, node.Options{})
	n.Apply("00-pods.yaml", node.NamespaceManifest("bench", nil)+"---\n"+
		node.PodManifest("bench", "flooder", map[string]string{"app": "flooder"}))
	n.Apply("10-deny.yaml", denyEgress)
	n.StartDaemon(daemonArgs...)
	f := &flood{n: n, pod: n.NewPod("bench", "flooder", nil)}
	eps, err := n.Client().Endpoints(context.Background())
	if err != nil || len(eps) != 1 {
		b.Fatalf("endpoints: %v %v", eps, err)
	}
	f.host = eps[0].HostIfindex
	paths := bpf.Paths{Root: n.BPFRoot}
	if f.maps, err = bpf.OpenMaps(paths); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.maps.Close() })
	if f.prog, err = ebpf.LoadPinnedProgram(paths.Program(bpf.ProgFromPod), nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.prog.Close() })
	conn, err := grpc.NewClient("unix://"+n.HubbleSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	f.hub = observer.NewObserverClient(conn)
	return f
}

// tally is what the datapath emitted and aegisd read and lost, at one
// moment.
type tally struct{ emitted, seen, lost uint64 }

func (f *flood) tally(b *testing.B) tally {
	t := f.datapathTally(b)
	st, err := f.hub.ServerStatus(context.Background(), &observer.ServerStatusRequest{})
	if err != nil {
		b.Fatal(err)
	}
	t.seen = st.GetSeenFlows()
	return t
}

// datapathTally is tally without what aegisd saw: it reads the pinned maps
// only, so it works while aegisd is paused.
func (f *flood) datapathTally(b *testing.B) tally {
	cs, err := f.maps.ReadCounters()
	if err != nil {
		b.Fatal(err)
	}
	var t tally
	for k, c := range cs {
		if k.Reason != bpf.ReasonForwarded {
			t.emitted += c.Packets
		}
	}
	if t.lost, err = f.maps.LostEvents(); err != nil {
		b.Fatal(err)
	}
	return t
}

// measure runs drive, then waits (at most 5 s) for aegisd to read what is
// still in the ring, and returns emitted, read and lost events of drive's
// span, with how long drive ran.
func (f *flood) measure(b *testing.B, drive func() time.Duration) (tally, time.Duration) {
	before := f.tally(b)
	took := drive()
	var d tally
	for deadline := time.Now().Add(5 * time.Second); ; {
		after := f.tally(b)
		d = tally{after.emitted - before.emitted, after.seen - before.seen, after.lost - before.lost}
		if d.seen+d.lost >= d.emitted || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return d, took
}

// deniedPacket is a UDP packet from the pod to TEST-NET-2, as the pod's
// host veth sees it: Ethernet, IPv4, UDP.
func deniedPacket(src netip.Addr) []byte {
	p := make([]byte, 14+20+8+18)
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)-14))
	s, d := src.As4(), netip.MustParseAddr("198.51.100.7").As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 9)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+18))
	return p
}

// testRun runs the pinned from_pod program on the pod's packet through
// BPF_PROG_TEST_RUN for d, at rate runs a second (0: as fast as it goes),
// on a thread in the node's namespace (the kernel finds the ifindex the
// context names there). Each run is the datapath's real work for one
// denied packet, drop event included, without a packet's travel.
func (f *flood) testRun(b *testing.B, d time.Duration, rate float64) time.Duration {
	data := deniedPacket(f.pod.IP)
	ctx := make([]byte, 192) // struct __sk_buff
	binary.LittleEndian.PutUint32(ctx[40:], uint32(f.host))
	var took time.Duration
	err := f.n.NS.Do(func() error {
		start := time.Now()
		var done float64
		for {
			el := time.Since(start)
			if el >= d {
				took = el
				return nil
			}
			batch := uint32(4096)
			if rate > 0 {
				behind := rate*el.Seconds() - done
				if behind < 1 {
					time.Sleep(100 * time.Microsecond)
					continue
				}
				batch = uint32(min(behind, 4096))
			}
			rc, err := f.prog.Run(&ebpf.RunOptions{Data: data, Context: ctx, Repeat: batch})
			if err != nil {
				return fmt.Errorf("test run from_pod: %w", err)
			}
			if rc != 2 { // TCX_DROP
				return fmt.Errorf("test run from_pod returned %d, want a drop", rc)
			}
			done += float64(batch)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	return took
}

// packets has the pod send denied UDP as fast as it can for d.
func (f *flood) packets(b *testing.B, d time.Duration) time.Duration {
	var conn *net.UDPConn
	if err := f.pod.NS.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 9})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	msg := []byte("flood")
	start := time.Now()
	for time.Since(start) < d {
		for range 256 {
			if _, err := conn.Write(msg); err != nil {
				b.Fatalf("send: %v", err)
			}
		}
	}
	return time.Since(start)
}

// BenchmarkEvents measures flow events read by aegisd: from the real
// datapath program driven through BPF_PROG_TEST_RUN (no packet travels,
// so it emits events faster than a pod's packets can on two cores) paced
// at 1M events/s for 60 s, and unpaced for 10 s; from a pod sending denied
// UDP as fast as it can for 10 s; and each side alone: the datapath's
// emission rate with aegisd paused, and aegisd's read rate draining a
// ring filled meanwhile.
func BenchmarkEvents(b *testing.B) {
	f := newFlood(b)
	big := newFlood(b, "--flow-ring-size", fmt.Sprint(128<<20))
	b.ResetTimer()
	for range b.N {
		var report []string
		line := func(what string, t tally, took time.Duration, target string) {
			s := took.Seconds()
			report = append(report, fmt.Sprintf("%-44s emitted %9.0f/s  read by aegisd %9.0f/s  lost %d of %d%s",
				what, float64(t.emitted)/s, float64(t.seen)/s, t.lost, t.emitted, target))
		}
		t, took := f.measure(b, func() time.Duration { return f.testRun(b, 60*time.Second, 1e6) })
		verdict := "meets"
		if t.lost > 0 || float64(t.seen)/took.Seconds() < 0.99e6 {
			verdict = "MISSED"
		}
		b.ReportMetric(float64(t.seen)/took.Seconds(), "test_run_1M_read/s")
		b.ReportMetric(float64(t.lost), "test_run_1M_lost")
		line("test_run paced at 1M/s, 60 s", t, took, " (target >= 1M/s with 0 lost: "+verdict+")")
		t, took = f.measure(b, func() time.Duration { return f.testRun(b, 10*time.Second, 0) })
		b.ReportMetric(float64(t.seen)/took.Seconds(), "test_run_max_read/s")
		line("test_run unpaced, 10 s", t, took, "")
		t, took = f.measure(b, func() time.Duration { return f.packets(b, 10*time.Second) })
		b.ReportMetric(float64(t.seen)/took.Seconds(), "packets_read/s")
		line("pod sending denied UDP, 10 s", t, took, "")
		// Each side alone: the datapath with aegisd paused, then aegisd
		// reading a ring filled meanwhile (128 MiB, 1.8M events).
		before := big.tally(b)
		big.n.PauseDaemon()
		took = big.testRun(b, 5*time.Second, 0)
		filled := big.datapathTally(b)
		big.n.ResumeDaemon()
		start := time.Now()
		emitted, lost := filled.emitted-before.emitted, filled.lost-before.lost
		for time.Since(start) < 30*time.Second && big.tally(b).seen-before.seen < emitted-lost {
			time.Sleep(10 * time.Millisecond)
		}
		drain := time.Since(start)
		read := big.tally(b).seen - before.seen
		b.ReportMetric(float64(emitted)/took.Seconds(), "test_run_alone_emitted/s")
		b.ReportMetric(float64(read)/drain.Seconds(), "reader_alone_read/s")
		report = append(report,
			fmt.Sprintf("%-44s emitted %9.0f/s (aegisd paused; %d of %d did not fit the ring)", "test_run alone, 5 s", float64(emitted)/took.Seconds(), lost, emitted),
			fmt.Sprintf("%-44s read by aegisd %9.0f/s (%d events in %s)", "aegisd alone, draining that ring", float64(read)/drain.Seconds(), read, drain.Round(time.Millisecond)))
		fmt.Fprintln(os.Stdout, "\n"+strings.Join(report, "\n"))
	}
}

// BenchmarkEventsOnOff compares TCP request/response (and new
// connections, which is where a connection's events are) through a node
// with flow events against the same node with --flow-events=false.
func BenchmarkEventsOnOff(b *testing.B) {
	on := newSide(b, "events-on", true)
	off := newSide(b, "events-off", true, "--flow-events=false")
	if st := off.n.Status(); st.Flows.Events {
		b.Fatalf("--flow-events=false: status says events are on")
	}
	const rounds = 5
	tests := []struct {
		name, unit string
		run        func(*side) (float64, error)
		target     float64
	}{
		{"tcp_rr", "trans/s", func(s *side) (float64, error) { return s.rr(3 * time.Second) }, 0.95},
		{"tcp_crr", "conn/s", func(s *side) (float64, error) { return s.crr(3 * time.Second) }, 0},
	}
	b.ResetTimer()
	for range b.N {
		var report []string
		for _, tc := range tests {
			vals := map[string][]float64{}
			for r := range rounds {
				order := []*side{off, on}
				if r%2 == 1 {
					order = []*side{on, off}
				}
				for _, s := range order {
					v, err := tc.run(s)
					if err != nil {
						b.Fatalf("%s on %s: %v", tc.name, s.name, err)
					}
					vals[s.name] = append(vals[s.name], v)
				}
			}
			moff, mon := median(vals["events-off"]), median(vals["events-on"])
			ratio := mon / moff
			b.ReportMetric(ratio, tc.name+"_events_on_off_ratio")
			l := fmt.Sprintf("%-8s events off %10.0f %-7s events on %10.0f %-7s ratio %.3f", tc.name, moff, tc.unit, mon, tc.unit, ratio)
			if tc.target > 0 {
				verdict := "meets"
				if ratio < tc.target {
					verdict = "BELOW"
				}
				l += fmt.Sprintf(" (target >= %.2f: %s)", tc.target, verdict)
			}
			report = append(report, l)
		}
		st := off.n.Status()
		if st.Flows.Lost != 0 {
			b.Errorf("events off: %d events counted lost", st.Flows.Lost)
		}
		drops, err := countersOf(off)
		if err != nil {
			b.Fatal(err)
		}
		report = append(report, fmt.Sprintf("events off: %d flows seen, counters still count %d forwarded packets", st.Flows.Seen, drops))
		fmt.Fprintln(os.Stdout, "\n"+strings.Join(report, "\n"))
	}
}

// countersOf sums the forwarded packets the side's datapath counted.
func countersOf(s *side) (uint64, error) {
	m, err := bpf.OpenMaps(bpf.Paths{Root: s.n.BPFRoot})
	if err != nil {
		return 0, err
	}
	defer m.Close()
	cs, err := m.ReadCounters()
	if err != nil {
		return 0, err
	}
	var n uint64
	for k, c := range cs {
		if k.Reason == bpf.ReasonForwarded {
			n += c.Packets
		}
	}
	return n, nil
}
