package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// Program pin names.
const (
	ProgFromPod = "from_pod" // tcx ingress of the host veth
	ProgToPod   = "to_pod"   // tcx egress of the host veth
)

// DefaultFlowRingSize is the flow-event ring's size in bytes, set at every
// load (events.h's is only the object's own): about 233k events, a
// quarter of a second at a million events a second, so that the reader
// losing its CPU for a while on a busy node costs no events.
const DefaultFlowRingSize = 16 << 20

// Options tune the datapath at load time.
type Options struct {
	// SummaryInterval is how often a live connection is summarised in a
	// flow event; zero keeps the compiled-in default.
	SummaryInterval time.Duration
	// FlowRingSize is the flow-event ring's size in bytes, a power of two
	// of at least a page (CheckFlowRingSize); zero keeps the default.
	FlowRingSize uint32
	// NoFlowEvents stops the datapath writing flow events; the counters
	// still count every packet.
	NoFlowEvents bool
}

// CheckFlowRingSize says whether the kernel takes size for a ring buffer.
func CheckFlowRingSize(size uint32) error {
	page := uint32(os.Getpagesize())
	if size < page || size&(size-1) != 0 {
		return fmt.Errorf("flow ring size %d: want a power of two of at least %d bytes", size, page)
	}
	return nil
}

// Datapath is the loaded datapath as aegisd owns it: maps pinned by name
// (reused across restarts, so enforcement never stops), programs pinned for
// the CNI plugin to attach.
type Datapath struct {
	*Maps
	paths Paths
	objs  datapathObjects
}

// Load loads the datapath, reusing maps already pinned under paths.Root,
// pins the programs, and moves every existing pod link onto the new
// programs (an atomic replace per link, so no packet goes unjudged during a
// restart or upgrade). It returns the links it could not move; the daemon
// reports them (a link whose interface is gone is garbage for GC).
func Load(paths Paths, opts Options) (*Datapath, []error, error) {
	if err := EnsureFS(paths.Root); err != nil {
		return nil, nil, err
	}
	for _, dir := range []string{paths.Maps(), paths.Programs(), paths.Links()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("create pin directory: %w", err)
		}
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, nil, fmt.Errorf("load datapath spec: %w", err)
	}
	if opts.SummaryInterval > 0 {
		if err := spec.Variables["summary_interval_ns"].Set(uint64(opts.SummaryInterval)); err != nil {
			return nil, nil, fmt.Errorf("set summary interval: %w", err)
		}
	}
	if opts.NoFlowEvents {
		if err := spec.Variables["flow_events"].Set(uint8(0)); err != nil {
			return nil, nil, fmt.Errorf("turn flow events off: %w", err)
		}
	}
	ringSize := uint32(DefaultFlowRingSize)
	if opts.FlowRingSize != 0 {
		if err := CheckFlowRingSize(opts.FlowRingSize); err != nil {
			return nil, nil, err
		}
		ringSize = opts.FlowRingSize
	}
	spec.Maps[MapEvents].MaxEntries = ringSize
	oldRing, err := unpinResizedRing(paths, ringSize)
	if err != nil {
		return nil, nil, err
	}
	if oldRing != nil {
		defer oldRing.Close()
	}
	dp := &Datapath{paths: paths}
	err = spec.LoadAndAssign(&dp.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: paths.Maps()},
	})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, nil, fmt.Errorf("load datapath: pinned maps under %s have another layout (remove them to start afresh): %w", paths.Maps(), err)
		}
		return nil, nil, fmt.Errorf("load datapath: %w", err)
	}
	dp.Maps = mapsFromObjects(&dp.objs.datapathMaps)

	progs := map[string]*ebpf.Program{ProgFromPod: dp.objs.AegisFromPod, ProgToPod: dp.objs.AegisToPod}
	for name, prog := range progs {
		if err := pinReplace(prog, paths.Program(name)); err != nil {
			dp.Close()
			return nil, nil, err
		}
	}
	linkErrs := dp.upgradeLinks(progs)
	if oldRing != nil {
		// No link writes to the old ring any more: what is still in it
		// nobody will read, so it counts as lost.
		if err := dp.countLost(drainRing(oldRing)); err != nil {
			linkErrs = append(linkErrs, err)
		}
	}
	return dp, linkErrs, nil
}

// unpinResizedRing removes the pin of a flow-event ring whose size is not
// size and returns the ring, still held open so the programs' links keep
// writing to it until they move to the new one. A ring of the right size,
// or none, is nil.
func unpinResizedRing(paths Paths, size uint32) (*ebpf.Map, error) {
	path := filepath.Join(paths.Maps(), MapEvents)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open flow event ring: %w", err)
	}
	if old.MaxEntries() == size {
		old.Close()
		return nil, nil
	}
	if err := old.Unpin(); err != nil {
		old.Close()
		return nil, fmt.Errorf("unpin flow event ring of %d bytes to resize it to %d: %w", old.MaxEntries(), size, err)
	}
	return old, nil
}

// drainRing counts the records left in a ring no program writes to.
func drainRing(m *ebpf.Map) uint64 {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return 0
	}
	defer rd.Close()
	var n uint64
	var rec ringbuf.Record
	rd.SetDeadline(time.Now())
	for rd.ReadInto(&rec) == nil {
		n++
	}
	return n
}

// countLost adds n events to the lost counter, on the first CPU's slot.
// The read and write are not one step: an event the datapath fails to
// write on that CPU in between could go uncounted, a window of
// microseconds, once, at a restart that resizes the ring.
func (m *Maps) countLost(n uint64) error {
	if n == 0 {
		return nil
	}
	var per []uint64
	if err := m.Lost.Lookup(uint32(0), &per); err != nil {
		return fmt.Errorf("read lost events: %w", err)
	}
	per[0] += n
	if err := m.Lost.Update(uint32(0), per, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("count %d events of the resized flow ring as lost: %w", n, err)
	}
	return nil
}

// Close releases the daemon's handles; pins keep everything running.
func (dp *Datapath) Close() error {
	return dp.objs.Close()
}

// pinReplace pins prog at path, replacing what is there in one rename so a
// CNI ADD running concurrently always finds a program to attach.
func pinReplace(prog *ebpf.Program, path string) error {
	tmp := path + "_new"
	if err := removeIfExists(tmp); err != nil {
		return fmt.Errorf("remove stale pin %s: %w", tmp, err)
	}
	if err := prog.Pin(tmp); err != nil {
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = prog.Unpin()
		return fmt.Errorf("pin program %s: %w", path, err)
	}
	return nil
}

// upgradeLinks points every pinned pod link at the freshly loaded programs.
func (dp *Datapath) upgradeLinks(progs map[string]*ebpf.Program) []error {
	dirs, err := os.ReadDir(dp.paths.Links())
	if err != nil {
		return []error{fmt.Errorf("list links: %w", err)}
	}
	var errs []error
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		for hook, prog := range map[string]*ebpf.Program{hookIngress: progs[ProgFromPod], hookEgress: progs[ProgToPod]} {
			path := filepath.Join(dp.paths.Links(), d.Name(), hook)
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, fmt.Errorf("open link %s: %w", path, err))
				}
				continue
			}
			if err := l.Update(prog); err != nil {
				errs = append(errs, fmt.Errorf("update link %s: %w", path, err))
			}
			l.Close()
		}
	}
	return errs
}
