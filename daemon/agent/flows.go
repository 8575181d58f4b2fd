package agent

import (
	"fmt"
	"net/url"
	"strconv"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/flowlog"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/observe"
)

// SetObserver attaches the flow observer the API reads from.
func (a *Agent) SetObserver(o *observe.Observer) { a.observer.Store(o) }

// Flows answers GET /v1/flows.
func (a *Agent) Flows(q url.Values) (*api.FlowsResponse, error) {
	o := a.observer.Load()
	if o == nil {
		return nil, errNotReady("flow observer not running")
	}
	last := 20
	if s := q.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: last %q: want a positive number", api.ErrBadRequest, s)
		}
		last = n
	}
	flt := observe.Filter{Verdict: q.Get("verdict"), Namespace: q.Get("namespace"), Pod: q.Get("pod"), FromPod: q.Get("from-pod"), ToPod: q.Get("to-pod")}
	if v := flt.Verdict; v != "" && v != "FORWARDED" && v != "DROPPED" {
		return nil, fmt.Errorf("%w: verdict %q: want FORWARDED or DROPPED", api.ErrBadRequest, v)
	}
	resp := &api.FlowsResponse{}
	for _, f := range o.Last(last, flt.Match) {
		b, err := protojson.Marshal(f)
		if err != nil {
			return nil, fmt.Errorf("encode flow: %w", err)
		}
		resp.Flows = append(resp.Flows, b)
	}
	st := o.Stats()
	resp.Stats = api.FlowStats{Seen: st.Seen, KernelLost: st.KernelLost, DecodeErrors: st.DecodeErrors, SubscriberLag: st.SubscriberLag, Capacity: st.Capacity, Stored: st.Stored}
	return resp, nil
}

// SetFlowLog attaches the flow-log exporter; each snapshot reconfigures it.
func (a *Agent) SetFlowLog(e *flowlog.Exporter, path string) {
	a.flowLog.Store(e)
	a.mu.Lock()
	a.flowLogPath = path
	a.mu.Unlock()
}

func (a *Agent) configureFlowLog(snap *manifests.Snapshot) {
	if e := a.flowLog.Load(); e != nil {
		for _, st := range e.Configure(snap.Others) {
			if st.State == "FAILED" {
				a.log.Error("ContainerNetworkLog rejected", "name", st.Name, "reason", st.Reason)
			}
		}
	}
}

func (a *Agent) flowLogStatus() api.FlowLogStatus {
	e := a.flowLog.Load()
	if e == nil {
		return api.FlowLogStatus{}
	}
	a.mu.Lock()
	st := api.FlowLogStatus{Path: a.flowLogPath}
	a.mu.Unlock()
	for _, s := range e.Statuses() {
		st.Logs = append(st.Logs, api.ContainerNetLog{Name: s.Name, State: s.State, Reason: s.Reason})
	}
	var err error
	st.Written, st.Lost, err = e.Stats()
	if err != nil {
		st.LastErr = err.Error()
	}
	return st
}
