package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/node"
)

// TestLostEvents floods the datapath beyond the reader's rate: aegisd is
// paused (SIGSTOP) while a pod sends UDP its policy denies, each packet a
// drop event, into a 64 KiB ring (about 900 events). Every event the
// datapath emitted must then be either a flow or counted lost, and the
// loss must show in the counters, hubble_lost_events_total, the Hubble
// API's LostEvents, the stock hubble CLI and `aegis status`.
func TestLostEvents(t *testing.T) {
	const packets = 20000
	n := node.New(t, node.Options{})
	n.Apply("00-pods.yaml", node.NamespaceManifest("flood", nil)+"---\n"+
		node.PodManifest("flood", "blaster", map[string]string{"app": "blaster"}))
	// Default deny egress: every packet the pod sends is a drop, and so
	// an event; nothing is forwarded, so drops are all the events there are.
	n.Apply("10-deny.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: flood}
spec:
  podSelector: {matchLabels: {app: blaster}}
  policyTypes: [Egress]
`)
	n.StartDaemon("--flow-ring-size", "65536")
	pod := n.NewPod("flood", "blaster", map[string]string{"app": "blaster"})
	m, err := bpf.OpenMaps(bpf.Paths{Root: n.BPFRoot})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	var conn *net.UDPConn
	if err := pod.NS.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 9})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	denied := func() uint64 {
		t.Helper()
		cs, err := m.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		return cs[bpf.CounterKey{Reason: bpf.DropPolicyDenied, Dir: uint8(policy.Egress)}].Packets
	}
	send := func(count int) {
		t.Helper()
		before := denied()
		for i := range count {
			if _, err := conn.Write([]byte("flood")); err != nil {
				t.Fatalf("send packet %d: %v", i, err)
			}
		}
		// The datapath counts each packet before the pod's write returns;
		// wait only for the counter read to see every CPU's share.
		waitFor(t, 5*time.Second, func() bool { return denied()-before == uint64(count) },
			func() string { return fmt.Sprintf("%d of %d packets counted as POLICY_DENIED", denied()-before, count) })
	}
	// The first packet resolves the gateway's MAC, so that none of the
	// flood waits in the neighbour queue (where packets can be dropped
	// before the datapath sees them).
	send(1)
	deniedBefore := denied()

	n.PauseDaemon()
	paused := true
	defer func() {
		if paused {
			n.ResumeDaemon()
		}
	}()
	send(packets)
	if got := denied() - deniedBefore; got != packets {
		t.Fatalf("POLICY_DENIED egress counted %d packets, want %d", got, packets)
	}
	n.ResumeDaemon()
	paused = false

	hub := hubbleClient(t, n)
	emitted := func() uint64 {
		t.Helper()
		cs, err := m.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		var drops uint64
		for k, c := range cs {
			if k.Reason != bpf.ReasonForwarded {
				drops += c.Packets
			}
		}
		return drops
	}
	var flows []*flow.Flow
	var lostEvents []*flow.LostEvent
	var seen, lost, drops uint64
	waitFor(t, 15*time.Second, func() bool {
		st, err := hub.ServerStatus(context.Background(), &observer.ServerStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		seen = st.GetSeenFlows()
		if lost, err = m.LostEvents(); err != nil {
			t.Fatal(err)
		}
		drops = emitted()
		flows, lostEvents = getAll(t, hub)
		return seen+lost == drops && sumLost(lostEvents) == lost && uint64(len(flows)) == seen
	}, func() string {
		return fmt.Sprintf("datapath emitted %d events (its drop counters); aegisd saw %d flows, %d lost in the ring; GetFlows gave %d flows and LostEvents of %d",
			drops, seen, lost, len(flows), sumLost(lostEvents))
	})
	t.Logf("emitted %d, seen %d, lost %d (in %d LostEvents)", drops, seen, lost, len(lostEvents))
	if lost == 0 {
		t.Fatalf("no event lost: %d packets did not overflow the 64 KiB ring", packets)
	}
	for _, f := range flows {
		if f.GetVerdict() != flow.Verdict_DROPPED {
			t.Errorf("a forwarded event would be outside the drop counters: %v", f)
		}
	}
	for _, l := range lostEvents {
		if l.GetSource() != flow.LostEventSource_PERF_EVENT_RING_BUFFER || l.GetCpu() == nil {
			t.Errorf("LostEvent %v: want source PERF_EVENT_RING_BUFFER and a CPU", l)
		}
	}

	want := fmt.Sprintf("hubble_lost_events_total{source=\"perf_event_ring_buffer\"} %d\n", lost)
	if body := scrapeMetrics(t, n); !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %q", want)
	}

	out, err := n.CLI("status", "-o", "json")
	if err != nil {
		t.Fatalf("aegis status: %v\n%s", err, out)
	}
	var st api.Status
	decodeJSON(t, out, &st)
	if !st.Flows.Events || st.Flows.Lost != lost || st.Flows.Seen != seen {
		t.Errorf("aegis status flows %+v, want events on, %d seen, %d lost", st.Flows, seen, lost)
	}
	out, err = n.CLI("status")
	if w := fmt.Sprintf("%d seen, %d lost in the datapath's ring", seen, lost); err != nil || !strings.Contains(out, w) {
		t.Errorf("aegis status lacks %q: %v\n%s", w, err, out)
	}
	out, err = n.CLI("observe", "--last", "5")
	if w := "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU("; err != nil || !strings.Contains(out, w) {
		t.Errorf("aegis observe lacks %q: %v\n%s", w, err, out)
	}
	checkHubbleCLILost(t, n, lost)
}

// checkHubbleCLILost runs the stock hubble CLI: its "EVENTS LOST" lines
// add up to lost.
func checkHubbleCLILost(t *testing.T, n *node.Node, lost uint64) {
	t.Helper()
	bin := hubbleCLI(t)
	if bin == "" {
		return
	}
	out, err := exec.Command(bin, "observe", "--server", "unix://"+n.HubbleSocket, "--last", "100000", "-o", "jsonpb").CombinedOutput()
	if err != nil {
		t.Fatalf("hubble observe: %v\n%s", err, out)
	}
	var sum uint64
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var rec struct {
			LostEvents *struct {
				Source        string `json:"source"`
				NumEventsLost string `json:"num_events_lost"`
			} `json:"lost_events"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("hubble observe printed %q: %v", line, err)
		}
		if rec.LostEvents != nil && rec.LostEvents.Source == "PERF_EVENT_RING_BUFFER" {
			var v uint64
			fmt.Sscan(rec.LostEvents.NumEventsLost, &v)
			sum += v
		}
	}
	if sum != lost {
		t.Errorf("hubble observe: LostEvents of %d, want %d", sum, lost)
	}
	out, err = exec.Command(bin, "observe", "--server", "unix://"+n.HubbleSocket, "--last", "3").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "EVENTS LOST: PERF_EVENT_RING_BUFFER CPU(") {
		t.Errorf("hubble observe does not print EVENTS LOST: %v\n%s", err, out)
	}
}

func hubbleClient(t *testing.T, n *node.Node) observer.ObserverClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+n.HubbleSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return observer.NewObserverClient(conn)
}

// getAll asks GetFlows for every stored flow, and the LostEvents with them.
func getAll(t *testing.T, c observer.ObserverClient) ([]*flow.Flow, []*flow.LostEvent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := c.GetFlows(ctx, &observer.GetFlowsRequest{Number: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var flows []*flow.Flow
	var lost []*flow.LostEvent
	for {
		resp, err := stream.Recv()
		if err != nil {
			return flows, lost
		}
		if f := resp.GetFlow(); f != nil {
			flows = append(flows, f)
		}
		if l := resp.GetLostEvents(); l != nil {
			lost = append(lost, l)
		}
	}
}

func sumLost(ls []*flow.LostEvent) uint64 {
	var n uint64
	for _, l := range ls {
		n += l.GetNumEventsLost()
	}
	return n
}

// waitFor polls cond every 50 ms until it holds or timeout passes, then
// fails with what() describes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
