package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Program pin names.
const (
	ProgFromPod = "from_pod" // tcx ingress of the host veth
	ProgToPod   = "to_pod"   // tcx egress of the host veth
)

// Options tune the datapath at load time.
type Options struct {
	// SummaryInterval is how often a live connection is summarised in a
	// flow event; zero keeps the compiled-in default.
	SummaryInterval time.Duration
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
	return dp, linkErrs, nil
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
