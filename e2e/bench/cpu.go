package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aegis-cni/aegis/e2e/node"
)

// The throughput ratios of the proxies swing by ±15% between runs on this
// kind of machine, because the load generator, the server and the proxy
// share two processors. The CPU time each side spends per request does
// not swing so: the benchmarks report it too, so that a change to the
// proxy's cost shows even when the ratio's noise hides it.

// clockTick is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuUse is CPU time spent so far: by the whole machine (not idle), and by
// aegisd and its DNS/L7 proxy process.
type cpuUse struct {
	machine, softirq, agent, proxy time.Duration
}

func readCPU(n *node.Node) cpuUse {
	machine, softirq := machineCPU()
	return cpuUse{machine: machine, softirq: softirq, agent: processCPU(n.DaemonPID()), proxy: processCPU(n.DNSProxyPID())}
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{machine: u.machine - v.machine, softirq: u.softirq - v.softirq, agent: u.agent - v.agent, proxy: u.proxy - v.proxy}
}

// perOp divides each CPU time by count operations.
func (u cpuUse) perOp(count float64) string {
	if count <= 0 {
		return "no operations"
	}
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) / count }
	return fmt.Sprintf("machine %.1f us (packets' softirqs %.1f us), aegisd %.1f us, proxy %.1f us",
		us(u.machine), us(u.softirq), us(u.agent), us(u.proxy))
}

// machineCPU is the time all processors spent at work (not idle, waiting
// for I/O or stolen by the hypervisor), and the part of it in softirqs,
// where packets delivered through veths are processed: with tick
// accounting, a softirq's time also counts for the task it interrupted.
func machineCPU() (busy, softirq time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var total, soft int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i == 7 {
			continue
		}
		if i >= 8 { // guest times are already in user
			break
		}
		x, _ := strconv.ParseInt(v, 10, 64)
		total += x
		if i == 6 {
			soft = x
		}
	}
	return time.Duration(total) * clockTick, time.Duration(soft) * clockTick
}

// processCPU is the user and system time of process pid (its threads,
// living and ended), 0 for none.
func processCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * clockTick
}
