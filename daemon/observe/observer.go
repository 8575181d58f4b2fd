package observe

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
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
	Seen          uint64 // events and L7 flows taken in
	KernelLost    uint64 // events the ring had no room for
	DecodeErrors  uint64 // records that did not decode
	SubscriberLag uint64 // entries a slow follower missed
	Capacity      int
	Stored        int
}

// Tap sees every batch of entries as it is taken in, on the taker's
// goroutine (the reader's, or a proxy's for an L7 flow): it must be quick
// and must not keep the slice.
type Tap func(batch []Entry)

// Observer reads the ring and keeps the last flows.
type Observer struct {
	maps  *bpf.Maps
	names *resolver // the reader's; nil without a resolver
	l7    *l7Builder
	node  string
	log   *slog.Logger
	clock bpf.Clock

	mu       sync.Mutex
	ring     []Entry // capacity for history, plus slack for followers
	capacity int
	next     uint64 // sequence number of the next entry
	waiting  bool   // a follower waits on notify
	notify   chan struct{}

	taps atomic.Pointer[[]*Tap]

	// Losses the datapath counted, as Hubble reports them: each CPU's
	// increase since the last look is one LostEvent.
	lost     []Lost
	lostSubs map[chan Lost]struct{}
	lostSeen []uint64 // per CPU, what is already in lost

	seen, decodeErrs, lag atomic.Uint64

	dns *dnsNames // names DNS answers gave pods for addresses
}

// followSlack is how many entries past the history a follower may fall
// behind before it loses any: at a million events a second the history
// alone turns over in milliseconds.
const followSlack = 16384

// readBatch is how many events the reader takes in at a time: one lock,
// one wakeup of followers and one call of each tap per batch, not per
// event.
const readBatch = 256

// New returns an observer keeping capacity flows.
func New(maps *bpf.Maps, r Resolver, capacity int, log *slog.Logger) *Observer {
	o := &Observer{maps: maps, log: log, clock: bpf.NewClock(),
		ring: make([]Entry, capacity+followSlack), capacity: capacity, notify: make(chan struct{}),
		lostSubs: map[chan Lost]struct{}{}, dns: newDNSNames()}
	if r != nil {
		o.names, o.node = newResolver(r), r.NodeName()
		o.names.dns = o.dns
	}
	o.l7 = newL7Builder(r)
	o.taps.Store(&[]*Tap{})
	return o
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
	batch := make([]Entry, 0, readBatch)
	var rec ringbuf.Record
	for {
		// Before a read that may wait, hand over what was read: the
		// deadline is set only then (it takes the clock and a lock).
		if rec.Remaining == 0 {
			o.take(batch)
			batch = batch[:0]
			rd.SetDeadline(time.Now().Add(pollInterval))
		}
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			rec.Remaining = 0
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
			o.take(batch)
			return nil
		}
		if err != nil {
			o.take(batch)
			return err
		}
		ev, err := bpf.DecodeFlowEvent(rec.RawSample, o.clock)
		if err != nil {
			if o.decodeErrs.Add(1) == 1 {
				o.log.Warn("undecodable flow event", "err", err)
			}
			continue
		}
		batch = o.collect(batch, ev)
	}
}

// collect resolves one event into the reader's batch, taking the batch in
// when it is full. The resolver's tables are checked once a batch.
func (o *Observer) collect(batch []Entry, ev bpf.FlowEvent) []Entry {
	if len(batch) == 0 {
		o.names.refresh()
	}
	batch = append(batch, Entry{ev: ev})
	o.names.resolve(&batch[len(batch)-1])
	if len(batch) == cap(batch) {
		o.take(batch)
		batch = batch[:0]
	}
	return batch
}

// AddEvents takes decoded datapath events in as the reader does, resolving
// them now: for tests and replays, never at the same time as Run.
func (o *Observer) AddEvents(evs ...bpf.FlowEvent) {
	batch := make([]Entry, 0, len(evs))
	o.names.refresh()
	for _, ev := range evs {
		batch = append(batch, Entry{ev: ev})
		o.names.resolve(&batch[len(batch)-1])
	}
	o.take(batch)
}

// AddDNS takes in an event of the DNS proxy as its L7 flow.
func (o *Observer) AddDNS(ev *DNSEvent) { o.Add(o.l7.dnsFlow(ev)) }

// AddHTTP takes in an event of the HTTP proxy, its flow to be built when
// asked for (http.go); it keeps ev.
func (o *Observer) AddHTTP(ev *HTTPEvent) {
	e := o.l7.httpEntry(ev)
	src, dst := ev.flowAddrs()
	e.srcNames, e.dstNames = o.dns.pair(e.src.ep.PodName != "", e.dst.ep.PodName != "", src.Addr(), dst.Addr(), ev.Time)
	o.take([]Entry{e})
}

// Add stores a flow that did not come from the ring (an L7 flow of a
// proxy), for the APIs, taps and followers: a DNS answer teaches the
// names later flows carry, any other flow is named by them.
func (o *Observer) Add(f *flow.Flow) {
	if f.GetL7().GetDns() != nil {
		o.dns.learn(f, time.Now())
	} else if src, err := netip.ParseAddr(f.GetIP().GetSource()); err == nil {
		if dst, err := netip.ParseAddr(f.GetIP().GetDestination()); err == nil {
			o.dns.annotate(f, src, dst, f.GetTime().AsTime())
		}
	}
	o.take([]Entry{{l7: f}})
}

// take appends a batch to the ring, wakes followers and runs the taps.
func (o *Observer) take(batch []Entry) {
	if len(batch) == 0 {
		return
	}
	o.mu.Lock()
	size := uint64(len(o.ring))
	for i := range batch {
		o.ring[o.next%size] = batch[i]
		o.next++
	}
	if o.waiting {
		close(o.notify)
		o.notify, o.waiting = make(chan struct{}), false
	}
	o.mu.Unlock()
	o.seen.Add(uint64(len(batch)))
	for _, t := range *o.taps.Load() {
		(*t)(batch)
	}
}

// AddTap runs t on every batch taken in from now on, until remove.
func (o *Observer) AddTap(t Tap) (remove func()) {
	p := &t
	o.mu.Lock()
	ts := append(slices.Clone(*o.taps.Load()), p)
	o.taps.Store(&ts)
	o.mu.Unlock()
	return func() {
		o.mu.Lock()
		ts := slices.DeleteFunc(slices.Clone(*o.taps.Load()), func(x *Tap) bool { return x == p })
		o.taps.Store(&ts)
		o.mu.Unlock()
	}
}

// Flow builds the Hubble flow of an entry.
func (o *Observer) Flow(e *Entry) *flow.Flow {
	f := build(e, o.node)
	if e.l7 == nil && e.http == nil && e.srcNames == nil && e.dstNames == nil {
		// The DNS proxy's answers reach aegisd apart from the datapath's
		// events, so the first packets of a connection opened right after
		// an answer can be read before it: names learned since still
		// name them.
		f.SourceNames, f.DestinationNames = o.dns.pair(e.src.ep.PodName != "", e.dst.ep.PodName != "", e.ev.Src.Addr(), e.ev.Dst.Addr(), e.ev.Time)
	}
	return f
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
	end := o.next
	o.mu.Unlock()
	return o.lastBefore(end, n, keep)
}

// historyChunk is how many entries a look back copies per lock: the
// reader waits for no more than that, and a request for the last few
// flows builds few.
const historyChunk = 256

// lastBefore is Last over the history as it was when end was next: the
// flows are built outside the lock, newest first, until n match.
func (o *Observer) lastBefore(end uint64, n int, keep func(*flow.Flow) bool) []*flow.Flow {
	var out []*flow.Flow
	buf := make([]Entry, 0, historyChunk)
	for seq := end; len(out) < n; {
		o.mu.Lock()
		low := max(end, uint64(o.capacity)) - uint64(o.capacity)
		low = max(low, max(o.next, uint64(len(o.ring)))-uint64(len(o.ring)))
		if seq <= low {
			o.mu.Unlock()
			break
		}
		from := max(low, max(seq, historyChunk)-historyChunk)
		buf = buf[:0]
		for s := from; s < seq; s++ {
			buf = append(buf, o.ring[s%uint64(len(o.ring))])
		}
		o.mu.Unlock()
		for i := len(buf) - 1; i >= 0 && len(out) < n; i-- {
			if f := o.Flow(&buf[i]); keep == nil || keep(f) {
				out = append(out, f)
			}
		}
		seq = from
	}
	slices.Reverse(out)
	return out
}

// Cursor follows the entries taken in after it was made, in order. A
// follower that falls more than the ring's slack behind loses the oldest,
// counted in Stats.SubscriberLag.
type Cursor struct {
	o           *Observer
	start, next uint64
}

// Follow returns a cursor at the next entry.
func (o *Observer) Follow() *Cursor {
	o.mu.Lock()
	defer o.mu.Unlock()
	return &Cursor{o: o, start: o.next, next: o.next}
}

// History is Last over the flows before the cursor's start: history then
// follow, with nothing twice and nothing between.
func (c *Cursor) History(n int, keep func(*flow.Flow) bool) []*flow.Flow {
	return c.o.lastBefore(c.start, n, keep)
}

// closed is a channel that is always ready.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Ready is a channel that is ready once there are entries after the cursor.
func (c *Cursor) Ready() <-chan struct{} {
	o := c.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if c.next < o.next {
		return closed
	}
	o.waiting = true
	return o.notify
}

// Take appends up to cap(buf) entries after the cursor (readBatch if buf
// has no room) to buf, without waiting, and moves past them.
func (c *Cursor) Take(buf []Entry) []Entry {
	if cap(buf) == len(buf) {
		buf = slices.Grow(buf, readBatch)
	}
	o := c.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if oldest := max(o.next, uint64(len(o.ring))) - uint64(len(o.ring)); c.next < oldest {
		o.lag.Add(oldest - c.next)
		c.next = oldest
	}
	for c.next < o.next && len(buf) < cap(buf) {
		buf = append(buf, o.ring[c.next%uint64(len(o.ring))])
		c.next++
	}
	return buf
}

// Skip moves the cursor past everything taken in so far: for a follower
// that wants none of it.
func (c *Cursor) Skip() {
	c.o.mu.Lock()
	c.next = c.o.next
	c.o.mu.Unlock()
}

// Flow builds the Hubble flow of an entry.
func (c *Cursor) Flow(e *Entry) *flow.Flow { return c.o.Flow(e) }

// Stats reports the counters.
func (o *Observer) Stats() Stats {
	var lost uint64
	if o.maps != nil { // an observer fed by Add only, as its consumers' tests feed it
		lost, _ = o.maps.LostEvents()
	}
	o.mu.Lock()
	stored := int(min(o.next, uint64(o.capacity)))
	o.mu.Unlock()
	return Stats{Seen: o.seen.Load(), KernelLost: lost, DecodeErrors: o.decodeErrs.Load(), SubscriberLag: o.lag.Load(), Capacity: o.capacity, Stored: stored}
}
