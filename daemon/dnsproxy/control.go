package dnsproxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/fqdn"
	"github.com/aegis-cni/aegis/daemon/observe"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/state"
)

// The DNS proxy runs in a process of its own (`aegisd proxy`) so that it
// keeps answering, and learning, while the rest of aegisd restarts or
// upgrades. aegisd drives it over a root-only control socket: it pushes
// the DNS and toFQDNs rules of every compiled policy, reads the proxy's
// DNS events as a stream, and lists or cleans the FQDN cache through it.
// The proxy persists the last rules it got, so a restarted proxy enforces
// them before aegisd speaks to it.

// Tables are the rules aegisd hands the proxy.
type Tables struct {
	DNS  map[uint32][]policy.DNSRule     `json:"dns"`
	FQDN map[uint32][]policy.FQDNRule    `json:"fqdn"`
	HTTP map[uint32][]policy.HTTPRuleSet `json:"http"`
	// HTTPIngress: absent in tables an older aegisd wrote, which had none.
	HTTPIngress map[uint32][]policy.HTTPRuleSet `json:"httpIngress,omitempty"`
}

// Status is what the control socket says about the proxy.
type Status struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
	Port    uint16 `json:"port"`
	// Args are the proxy's command-line flags: aegisd replaces a proxy
	// started with others.
	Args []string `json:"args"`
	// Counters since the proxy started.
	Queries, Allowed, Refused, Malformed, UpstreamErrors, Learned, LostEvents uint64
}

// Events fans the proxy's events out to the control clients that follow
// them. Each event is encoded once, as it happens, into every follower's
// pending buffer; the follower's stream writes what gathered every
// eventsFlushDelay, so aegisd reads and wakes per batch, not per query,
// and a query never waits for the stream. A follower that falls a buffer
// behind, or none at all, loses events; they are counted.
type Events struct {
	mu   sync.Mutex // serializes changes of subs
	subs atomic.Pointer[[]*follower]
	lost atomic.Uint64
}

const (
	eventsFlushDelay = 5 * time.Millisecond
	// maxPending bounds a follower's backlog (~8000 DNS events).
	maxPending = 1 << 20
)

type follower struct {
	mu      sync.Mutex
	pending []byte
	ready   chan struct{} // signalled when pending stops being empty
}

// add appends a frame unless the backlog is full.
func (f *follower) add(frame []byte) bool {
	f.mu.Lock()
	if len(f.pending)+len(frame) > maxPending {
		f.mu.Unlock()
		return false
	}
	wasEmpty := len(f.pending) == 0
	f.pending = append(f.pending, frame...)
	f.mu.Unlock()
	if wasEmpty {
		select {
		case f.ready <- struct{}{}:
		default:
		}
	}
	return true
}

// take swaps the backlog for spare (emptied) and returns it.
func (f *follower) take(spare []byte) []byte {
	f.mu.Lock()
	out := f.pending
	f.pending = spare[:0]
	f.mu.Unlock()
	return out
}

// Emit hands one event to every follower.
func (e *Events) Emit(ev observe.L7Event) {
	subs := e.subs.Load()
	if subs == nil || len(*subs) == 0 {
		e.lost.Add(1)
		return
	}
	var arr [512]byte
	frame, err := appendFrame(arr[:0], &ev)
	if err != nil {
		e.lost.Add(1)
		return
	}
	for _, f := range *subs {
		if !f.add(frame) {
			e.lost.Add(1)
		}
	}
}

func (e *Events) subscribe() (*follower, func()) {
	f := &follower{ready: make(chan struct{}, 1)}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.swap(func(old []*follower) []*follower { return append(old, f) })
	return f, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.swap(func(old []*follower) []*follower {
			return slices.DeleteFunc(old, func(g *follower) bool { return g == f })
		})
	}
}

// swap replaces the follower list by a changed copy (Emit reads it
// without a lock); e.mu held.
func (e *Events) swap(change func([]*follower) []*follower) {
	var old []*follower
	if p := e.subs.Load(); p != nil {
		old = slices.Clone(*p)
	}
	next := change(old)
	e.subs.Store(&next)
}

// LoadTables reads the rules a previous run persisted.
func LoadTables(path string) (*policy.Result, error) {
	var t Tables
	found, err := state.ReadJSON(path, &t)
	if err != nil || !found {
		return nil, err
	}
	return &policy.Result{DNS: t.DNS, FQDN: t.FQDN, HTTP: t.HTTP, HTTPIngress: t.HTTPIngress}, nil
}

// ServeControl serves the control API on socket until ctx ends.
// tablesPath persists the rules pushed to it.
func ServeControl(ctx context.Context, socket, tablesPath, version string, args []string, p *Proxy, setPolicy func(*policy.Result) error, cache *fqdn.Cache, events *Events, log *slog.Logger) error {
	ln, err := api.ListenRootOnly(socket)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			v = map[string]string{"error": err.Error()}
		}
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		s := p.Stats()
		reply(w, Status{Version: version, PID: os.Getpid(), Port: p.cfg.Port, Args: args,
			Queries: s.Queries.Load(), Allowed: s.Allowed.Load(), Refused: s.Refused.Load(), Malformed: s.Malformed.Load(),
			UpstreamErrors: s.UpstreamErrors.Load(), Learned: s.Learned.Load(), LostEvents: events.lost.Load()}, nil)
	})
	mux.HandleFunc("PUT /v1/tables", func(w http.ResponseWriter, r *http.Request) {
		var t Tables
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 256<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&t); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			reply(w, map[string]string{"error": "decode tables: " + err.Error()}, nil)
			return
		}
		// Persist first: a proxy restarted right after enforces them.
		if err := state.WriteJSON(tablesPath, t); err != nil {
			reply(w, nil, err)
			return
		}
		if err := setPolicy(&policy.Result{DNS: t.DNS, FQDN: t.FQDN, HTTP: t.HTTP, HTTPIngress: t.HTTPIngress}); err != nil {
			reply(w, nil, err)
			return
		}
		reply(w, struct{}{}, nil)
	})
	mux.HandleFunc("GET /v1/fqdn/cache", func(w http.ResponseWriter, r *http.Request) {
		reply(w, cache.List(), nil)
	})
	mux.HandleFunc("DELETE /v1/fqdn/cache", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.ParseUint(r.URL.Query().Get("identity"), 10, 32)
		n, err := cache.Clean(uint32(id))
		reply(w, api.FQDNClean{Removed: n}, err)
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		f, cancel := events.subscribe()
		defer cancel()
		w.Header().Set("Content-Type", eventsContentType)
		w.WriteHeader(http.StatusOK)
		fl, _ := w.(http.Flusher)
		if fl != nil {
			fl.Flush()
		}
		delay := time.NewTimer(eventsFlushDelay)
		defer delay.Stop()
		var spare []byte
		for {
			select {
			case <-r.Context().Done():
				return
			case <-f.ready:
			}
			// Let a batch gather.
			delay.Reset(eventsFlushDelay)
			select {
			case <-r.Context().Done():
				return
			case <-delay.C:
			}
			out := f.take(spare)
			if len(out) > 0 {
				if _, err := w.Write(out); err != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
			spare = out
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("dns proxy control: %w", err)
	}
	return nil
}

// Client drives a proxy process from aegisd.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient talks to the control socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := "http://dnsproxy" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("dns proxy %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("dns proxy %s %s: %s", method, path, e["error"])
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// Status asks the proxy how it is.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/status", nil, nil, &s)
}

// SetPolicy pushes the DNS and toFQDNs rules of a compiled policy; it
// implements the agent's DNSProxy and returns once the proxy holds them.
func (c *Client) SetPolicy(res *policy.Result) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.do(ctx, http.MethodPut, "/v1/tables", nil, Tables{DNS: res.DNS, FQDN: res.FQDN, HTTP: res.HTTP, HTTPIngress: res.HTTPIngress}, nil)
}

// FQDNCache lists what the proxy learned.
func (c *Client) FQDNCache(ctx context.Context) ([]fqdn.Learned, error) {
	var l []fqdn.Learned
	return l, c.do(ctx, http.MethodGet, "/v1/fqdn/cache", nil, nil, &l)
}

// CleanFQDNCache forgets what was learned (for one identity, or all).
func (c *Client) CleanFQDNCache(ctx context.Context, identity uint32) (int, error) {
	q := url.Values{}
	if identity != 0 {
		q.Set("identity", strconv.FormatUint(uint64(identity), 10))
	}
	var out api.FQDNClean
	return out.Removed, c.do(ctx, http.MethodDelete, "/v1/fqdn/cache", q, nil, &out)
}

// FollowEvents reads the proxy's events into fn until ctx ends,
// reconnecting when the stream breaks (the proxy restarting).
func (c *Client) FollowEvents(ctx context.Context, fn func(observe.L7Event), log *slog.Logger) {
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://dnsproxy/v1/events", nil)
		resp, err := c.hc.Do(req)
		if err == nil {
			if err := readEvents(resp, fn); err != nil && ctx.Err() == nil {
				log.Warn("dns proxy events", "err", err)
			}
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readEvents reads one event stream until it ends.
func readEvents(resp *http.Response, fn func(observe.L7Event)) error {
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("follow events: status %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != eventsContentType {
		return fmt.Errorf("follow events: content type %q, want %q", ct, eventsContentType)
	}
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	var buf []byte
	for {
		ev, b, err := readFrame(r, buf)
		buf = b
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		fn(ev)
	}
}
