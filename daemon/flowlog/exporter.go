package flowlog

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/aegis-cni/aegis/daemon/observe"
)

// Source of flows: the observer.
type Source interface {
	Follow() *observe.Cursor
}

// Exporter writes the flows the ContainerNetworkLogs select.
type Exporter struct {
	file *rotatingFile
	node string

	mu        sync.Mutex
	selectors []selector
	statuses  []Status
	changed   chan struct{} // closed at the next Configure
	cursor    *observe.Cursor
}

// New returns an exporter writing to path, rotating at maxSize bytes and
// keeping backups old files.
func New(path string, maxSize int64, backups int, node string) *Exporter {
	return &Exporter{file: newRotatingFile(path, maxSize, backups), node: node, changed: make(chan struct{})}
}

// Configure takes the current ContainerNetworkLogs. Each one is CONFIGURED
// or FAILED with the reason; a failed one selects nothing and leaves the
// others working.
func (e *Exporter) Configure(objs []*unstructured.Unstructured) []Status {
	var sels []selector
	var sts []Status
	for _, o := range objs {
		if o.GetKind() != "ContainerNetworkLog" {
			continue
		}
		s, err := compile(o)
		if err != nil {
			sts = append(sts, Status{Name: o.GetName(), State: "FAILED", Reason: err.Error()})
			continue
		}
		sels = append(sels, s)
		sts = append(sts, Status{Name: o.GetName(), State: "CONFIGURED"})
	}
	e.mu.Lock()
	if len(e.selectors) == 0 && e.cursor != nil {
		// Logging starts now: what came while nothing was selected stays
		// unlogged.
		e.cursor.Skip()
	}
	e.selectors, e.statuses = sels, sts
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
	return sts
}

// Statuses reports the last configuration's result.
func (e *Exporter) Statuses() []Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Status(nil), e.statuses...)
}

// Stats says how many records were written and how many were lost (write
// failures), and the last error.
func (e *Exporter) Stats() (written, lost uint64, lastErr error) { return e.file.stats() }

// Run writes selected flows until ctx ends. While no ContainerNetworkLog
// selects anything it reads nothing (flows then are not logged); while one
// does, it builds the flow of each entry to match it.
func (e *Exporter) Run(ctx context.Context, src Source) {
	defer e.file.close()
	c := src.Follow()
	e.mu.Lock()
	e.cursor = c
	e.mu.Unlock()
	var buf []observe.Entry
	for {
		e.mu.Lock()
		sels, changed := e.selectors, e.changed
		e.mu.Unlock()
		if len(sels) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			continue
		case <-c.Ready():
		}
		buf = c.Take(buf[:0])
		for i := range buf {
			if f := c.Flow(&buf[i]); matchAny(sels, f) {
				e.file.writeLine(e.line(f))
			}
		}
	}
}

func (e *Exporter) selected(f *flow.Flow) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return matchAny(e.selectors, f)
}

func matchAny(sels []selector, f *flow.Flow) bool {
	for _, s := range sels {
		if s.match(f) {
			return true
		}
	}
	return false
}

// line renders a flow in Hubble's export format:
// {"flow": {...}, "node_name": ..., "time": ...}.
func (e *Exporter) line(f *flow.Flow) []byte {
	fj, err := protojson.Marshal(f)
	if err != nil {
		fj = []byte("{}")
	}
	out := make([]byte, 0, len(fj)+128)
	out = append(out, `{"flow":`...)
	out = append(out, fj...)
	out = append(out, `,"node_name":`...)
	out = appendJSONString(out, e.node)
	out = append(out, `,"time":`...)
	out = appendJSONString(out, f.GetTime().AsTime().UTC().Format(time.RFC3339Nano))
	out = append(out, "}\n"...)
	return out
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}
