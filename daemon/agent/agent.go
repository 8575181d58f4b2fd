// Package agent is the heart of aegisd: it turns the desired state (the
// source's namespaces, pods and policies, plus the endpoints the CNI plugin
// registered) into identities, an ipcache and compiled policy, and writes
// them into the pinned maps. Every change goes through one coalescing
// regeneration, so 50 parallel CNI ADDs cost a handful of compilations.
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegis-cni/aegis/bpf"
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/endpoint"
	"github.com/aegis-cni/aegis/daemon/flowlog"
	"github.com/aegis-cni/aegis/daemon/identity"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// Version is stamped at build time.
var Version = "dev"

// Config is what the agent needs to run.
type Config struct {
	NodeName string
	BPFRoot  string
	StateDir string
	// NodeIPs get the host identity. Empty: the addresses of this network
	// namespace's interfaces are used.
	NodeIPs []netip.Addr
	// SummaryInterval of live connections in flow events.
	SummaryInterval time.Duration
	// FlowRingSize is the flow-event ring's size in bytes (0: default).
	FlowRingSize uint32
	// NoFlowEvents stops the datapath writing flow events.
	NoFlowEvents bool
	Log          *slog.Logger
}

// Agent owns the datapath state of the node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	paths   bpf.Paths
	dp      *bpf.Datapath
	writer  *bpf.PolicyWriter
	ipcache *bpf.IPCacheWriter
	ids     *identity.Allocator
	eps     *endpoint.Registry
	jar     *policy.CookieJar
	started time.Time

	// stateMu serialises regenerations and the endpoint fast paths: both
	// write the maps and the view.
	stateMu sync.Mutex
	view    view
	names   atomic.Pointer[names]

	observer    atomic.Pointer[observe.Observer]
	flowLog     atomic.Pointer[flowlog.Exporter]
	flowLogPath string
	dnsProxy    atomic.Pointer[DNSProxy]

	// epMu serialises changes of an endpoint's registry record and map
	// entry, so a regeneration never resurrects an endpoint a concurrent
	// DEL removed.
	epMu sync.Mutex

	// mu guards the desired state and the last results below.
	mu          sync.Mutex
	snap        *manifests.Snapshot
	rejected    []manifests.FileError
	source      api.SourceStatus
	compiled    *policy.Result
	identities  []policy.Identity
	ipcacheSize int
	lastRegen   api.RegenStatus

	regen regenQueue
}

// New loads the datapath (reusing pinned state, so enforcement continues
// across restarts) and the persisted endpoints and identities. The agent
// is not ready until the source delivers its first snapshot.
func New(cfg Config) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: cfg.Log, paths: bpf.Paths{Root: cfg.BPFRoot}, jar: policy.NewCookieJar(), started: time.Now().UTC()}
	dp, linkErrs, err := bpf.Load(a.paths, bpf.Options{SummaryInterval: cfg.SummaryInterval,
		FlowRingSize: cfg.FlowRingSize, NoFlowEvents: cfg.NoFlowEvents})
	if err != nil {
		return nil, err
	}
	a.dp = dp
	for _, e := range linkErrs {
		a.log.Warn("pod link not moved to the new programs", "err", e)
	}
	if err := bpf.CleanTemp(a.paths); err != nil {
		a.log.Warn("clean half-built attachments", "err", err)
	}
	if a.writer, err = bpf.NewPolicyWriter(dp.Maps); err != nil {
		dp.Close()
		return nil, err
	}
	if a.ipcache, err = bpf.NewIPCacheWriter(dp.Maps); err != nil {
		dp.Close()
		return nil, err
	}
	if a.ids, err = identity.NewAllocator(filepath.Join(cfg.StateDir, "identities.json")); err != nil {
		dp.Close()
		return nil, err
	}
	if a.eps, err = endpoint.Open(filepath.Join(cfg.StateDir, "endpoints")); err != nil {
		dp.Close()
		return nil, err
	}
	a.regen.init()
	return a, nil
}

// Run regenerates on demand and collects conntrack garbage until ctx ends.
func (a *Agent) Run(ctx context.Context) {
	a.reconcileAttachments()
	go a.gcLoop(ctx)
	a.regen.run(ctx, a.regenerate)
}

// Close releases the agent's handles; the pinned state stays in force.
func (a *Agent) Close() error { return a.dp.Close() }

// Maps exposes the datapath maps (for the flow reader and metrics).
func (a *Agent) Maps() *bpf.Maps { return a.dp.Maps }

// ApplySnapshot takes a new desired state from the source. Rejected files
// keep their last good content inside the snapshot (the source does that);
// here they are only recorded for status.
func (a *Agent) ApplySnapshot(ctx context.Context, snap *manifests.Snapshot, rejected []manifests.FileError, kind, location string) error {
	a.mu.Lock()
	a.snap = snap
	a.rejected = rejected
	a.source = api.SourceStatus{Kind: kind, Location: location, Generation: snap.Generation, Applied: a.source.Applied, Policies: len(snap.NetworkPolicies) + countCilium(snap)}
	for _, r := range rejected {
		a.source.Rejected = append(a.source.Rejected, r.Error())
	}
	a.mu.Unlock()
	for _, r := range rejected {
		a.log.Error("manifest rejected; its last good content stays in force", "err", r.Error())
	}
	a.configureFlowLog(snap)
	return a.regen.wait(ctx)
}

// ready says whether the datapath state has been built from the source at
// least once since start: before that, ADD must wait (the maps still
// enforce what the previous daemon wrote).
func (a *Agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.compiled != nil
}

// gcLoop removes expired conntrack entries.
func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := a.dp.GCConntrack(); err != nil {
				a.log.Warn("conntrack gc", "err", err)
			} else if n > 0 {
				a.log.Debug("conntrack gc", "removed", n)
			}
		}
	}
}

// reconcileAttachments forgets endpoints whose links are gone: a DEL that
// ran while the daemon was down removed the links and the endpoint map
// entry but could not tell us.
func (a *Agent) reconcileAttachments() {
	atts, err := bpf.ListAttachments(a.paths)
	if err != nil {
		a.log.Warn("list attachments", "err", err)
		return
	}
	live := map[string]int{}
	for _, at := range atts {
		live[filepath.Base(a.paths.Attachment(at.ContainerID, at.IfName))] = at.Ifindex
	}
	for _, ep := range a.eps.List() {
		name := bpf.AttachmentName(ep.ContainerID, ep.IfName)
		if ifindex, ok := live[name]; ok && ifindex == ep.HostIfindex {
			continue
		}
		a.log.Info("forgetting endpoint whose links are gone", "endpoint", ep.Key(), "pod", ep.PodNamespace+"/"+ep.PodName)
		if _, err := a.eps.Delete(ep.Key()); err != nil {
			a.log.Warn("forget endpoint", "err", err)
		}
		if err := a.dp.DeleteEndpoint(uint32(ep.HostIfindex)); err != nil {
			a.log.Warn("forget endpoint", "err", err)
		}
	}
}

func errNotReady(reason string) error { return fmt.Errorf("%w: %s", api.ErrNotReady, reason) }
