package observe

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/ebpf/ringbuf"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/bpf"
)

// Stats counts what the observer saw and lost.
type Stats struct {
	Seen          uint64 // events decoded into flows
	KernelLost    uint64 // events the ring had no room for
	DecodeErrors  uint64 // records that did not decode
	SubscriberLag uint64 // flows a slow follower missed
	Capacity      int
	Stored        int
}

// Observer reads the ring and keeps the last flows.
type Observer struct {
	maps     *bpf.Maps
	resolver Resolver
	log      *slog.Logger
	clock    bpf.Clock

	mu     sync.Mutex
	ring   []*flow.Flow
	next   uint64 // sequence number of the next flow
	subs   map[chan *flow.Flow]struct{}
	notify chan struct{}

	// Losses the datapath counted, as Hubble reports them: each CPU's
	// increase since the last look is one LostEvent.
	lost     []Lost
	lostSubs map[chan Lost]struct{}
	lostSeen []uint64 // per CPU, what is already in lost

	seen, decodeErrs, lag atomic.Uint64

	dns *dnsNames // names DNS answers gave pods for addresses
}

// New returns an observer keeping capacity flows.
func New(maps *bpf.Maps, r Resolver, capacity int, log *slog.Logger) *Observer {
	return &Observer{maps: maps, resolver: r, log: log, clock: bpf.NewClock(),
		ring: make([]*flow.Flow, capacity), subs: map[chan *flow.Flow]struct{}{},
		lostSubs: map[chan Lost]struct{}{}, dns: newDNSNames()}
}

// Lost is a LostEvent and when the observer found it.
type Lost struct {
	Time  time.Time
	Event *flow.LostEvent
}

// lostCapacity bounds the LostEvents kept for GetFlows' history.
const lostCapacity = 256

// lostInterval is how often the datapath's lost counter is read, and so
// how soon a loss shows in the Hubble API (Hubble sends its own ring's
// losses at most once a second).
const lostInterval = 250 * time.Millisecond

// pollInterval bounds how long an event waits in the ring: the datapath
// wakes the reader only when much is waiting, so it looks on its own.
const pollInterval = 50 * time.Millisecond

// Run reads events until ctx ends.
func (o *Observer) Run(ctx context.Context) error {
	rd, err := o.maps.EventReader()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); rd.Close() }()
	go o.watchLost(ctx)
	names := addrNames{}
	var rec ringbuf.Record
	for {
		rd.SetDeadline(time.Now().Add(pollInterval))
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		ev, err := bpf.DecodeFlowEvent(rec.RawSample, o.clock)
		if err != nil {
			if o.decodeErrs.Add(1) == 1 {
				o.log.Warn("undecodable flow event", "err", err)
			}
			continue
		}
		f := toFlowNamed(ev, o.resolver, names)
		o.dns.annotate(f, ev.Src.Addr(), ev.Dst.Addr(), ev.Time)
		o.add(f)
	}
}

func (o *Observer) add(f *flow.Flow) {
	o.seen.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ring[o.next%uint64(len(o.ring))] = f
	o.next++
	for ch := range o.subs {
		select {
		case ch <- f:
		default:
			o.lag.Add(1)
		}
	}
}

// watchLost turns increases of the datapath's per-CPU lost counter into
// LostEvents until ctx ends. Losses from before this observer started
// (aegisd down, the ring full) come first, in one LostEvent per CPU.
func (o *Observer) watchLost(ctx context.Context) {
	t := time.NewTicker(lostInterval)
	defer t.Stop()
	for {
		o.checkLost(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (o *Observer) checkLost(now time.Time) {
	per, err := o.maps.LostEventsPerCPU()
	if err != nil {
		o.log.Warn("read lost flow events", "err", err)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.lostSeen) < len(per) {
		o.lostSeen = append(o.lostSeen, make([]uint64, len(per)-len(o.lostSeen))...)
	}
	for cpu, n := range per {
		if n <= o.lostSeen[cpu] {
			continue
		}
		l := Lost{Time: now, Event: &flow.LostEvent{
			Source:        flow.LostEventSource_PERF_EVENT_RING_BUFFER,
			NumEventsLost: n - o.lostSeen[cpu],
			Cpu:           wrapperspb.Int32(int32(cpu)),
		}}
		o.lostSeen[cpu] = n
		if len(o.lost) == lostCapacity {
			o.lost = append(o.lost[:0], o.lost[1:]...)
		}
		o.lost = append(o.lost, l)
		for ch := range o.lostSubs {
			select {
			case ch <- l:
			default:
				o.lag.Add(1)
			}
		}
	}
}

// LostEvents returns the kept LostEvents, oldest first.
func (o *Observer) LostEvents() []Lost {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.lost)
}

// SubscribeLost delivers new LostEvents until cancel is called.
func (o *Observer) SubscribeLost(buffer int) (<-chan Lost, func()) {
	ch := make(chan Lost, buffer)
	o.mu.Lock()
	o.lostSubs[ch] = struct{}{}
	o.mu.Unlock()
	return ch, func() {
		o.mu.Lock()
		delete(o.lostSubs, ch)
		o.mu.Unlock()
	}
}

// Last returns up to n of the most recent flows matching keep, oldest
// first.
func (o *Observer) Last(n int, keep func(*flow.Flow) bool) []*flow.Flow {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []*flow.Flow
	size := uint64(len(o.ring))
	for i := uint64(0); i < min(o.next, size) && len(out) < n; i++ {
		f := o.ring[(o.next-1-i)%size]
		if keep == nil || keep(f) {
			out = append(out, f)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Subscribe delivers new flows until cancel is called; a follower that
// falls behind loses flows, counted in Stats.SubscriberLag.
func (o *Observer) Subscribe(buffer int) (<-chan *flow.Flow, func()) {
	ch := make(chan *flow.Flow, buffer)
	o.mu.Lock()
	o.subs[ch] = struct{}{}
	o.mu.Unlock()
	return ch, func() {
		o.mu.Lock()
		delete(o.subs, ch)
		o.mu.Unlock()
	}
}

// Stats reports the counters.
func (o *Observer) Stats() Stats {
	var lost uint64
	if o.maps != nil { // an observer fed by Add only, as its consumers' tests feed it
		lost, _ = o.maps.LostEvents()
	}
	o.mu.Lock()
	stored := int(min(o.next, uint64(len(o.ring))))
	o.mu.Unlock()
	return Stats{Seen: o.seen.Load(), KernelLost: lost, DecodeErrors: o.decodeErrs.Load(), SubscriberLag: o.lag.Load(), Capacity: len(o.ring), Stored: stored}
}
