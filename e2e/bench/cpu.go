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
// aegisd and its DNS/L7 proxy process, each negative when it could not be
// read (a process gone, or no pid), so that no figure reads 0 unmeasured.
type cpuUse struct {
	machine, softirq, agent, proxy time.Duration
}

func readCPU(n *node.Node) cpuUse {
	machine, softirq := machineCPU()
	return cpuUse{machine: machine, softirq: softirq, agent: processCPU(n.DaemonPID()), proxy: processCPU(n.DNSProxyPID())}
}

func (u cpuUse) sub(v cpuUse) cpuUse {
	d := func(a, b time.Duration) time.Duration {
		if a < 0 || b < 0 {
			return -1
		}
		return a - b
	}
	return cpuUse{machine: d(u.machine, v.machine), softirq: d(u.softirq, v.softirq), agent: d(u.agent, v.agent), proxy: d(u.proxy, v.proxy)}
}

// perOp divides each CPU time by count operations.
func (u cpuUse) perOp(count float64) string {
	if count <= 0 {
		return "no operations counted"
	}
	us := func(d time.Duration) string {
		if d < 0 {
			return "unknown"
		}
		return fmt.Sprintf("%.1f us", float64(d.Microseconds())/count)
	}
	return fmt.Sprintf("machine %s (packets' softirqs %s), aegisd %s, proxy %s", us(u.machine), us(u.softirq), us(u.agent), us(u.proxy))
}

// machineCPU is the time all processors spent at work (not idle, waiting
// for I/O or stolen by the hypervisor), and the part of it in softirqs,
// where packets delivered through veths are processed: with tick
// accounting, a softirq's time also counts for the task it interrupted.
func machineCPU() (busy, softirq time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1, -1
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
// living and ended), -1 when it cannot be read.
func processCPU(pid int) time.Duration {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name may hold spaces: fields count from its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * clockTick
}
