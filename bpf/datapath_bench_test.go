package bpf_test

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/e2e/netns"
)

// BenchmarkEstablished measures the datapath's own cost for the packets
// most traffic is made of: a packet of an established TCP connection,
// judged through conntrack alone (BPF_PROG_TEST_RUN on the pinned from_pod
// program, an endpoint on the test run's ifindex 1, no policy). It reports
// nanoseconds per packet, the figure request/response latency is made of.
func BenchmarkEstablished(b *testing.B) {
	netns.RequireRoot(b)
	paths := bpf.Paths{Root: netns.BPFRoot(b)}
	dp, _, err := bpf.Load(paths, bpf.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	if err := dp.Maps.SetEndpoint(1, bpf.EndpointInfo{Identity: 300, EndpointID: 1}); err != nil {
		b.Fatal(err)
	}
	prog, err := ebpf.LoadPinnedProgram(paths.Program(bpf.ProgFromPod), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer prog.Close()
	p := make([]byte, 14+20+20+64)
	binary.BigEndian.PutUint16(p[12:], 0x0800)
	ip := p[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(len(p)-14))
	copy(ip[12:], []byte{10, 9, 0, 2})
	copy(ip[16:], []byte{10, 9, 0, 3})
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5001)
	tcp[12] = 5 << 4
	tcp[13] = 0x10 | 0x08 // ACK, PSH: mid-connection
	// The first run creates the connection; the rest find it.
	if _, err := prog.Run(&ebpf.RunOptions{Data: p}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	ret, per, err := prog.Benchmark(p, b.N, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != 0 && ret != 0xffffffff { // TCX_PASS / TCX_NEXT (-1): forwarded
		b.Fatalf("from_pod returned %d for an established packet", ret)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
}
