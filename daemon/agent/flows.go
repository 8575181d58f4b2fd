package agent

import (
	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/flowlog"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/observe"
)

// SetObserver attaches the flow observer the API reads from.
func (a *Agent) SetObserver(o *observe.Observer) { a.observer.Store(o) }

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

// FlowLogStatuses is each ContainerNetworkLog's verdict from the last
// snapshot: CONFIGURED, or FAILED with the reason. None without flow logs.
func (a *Agent) FlowLogStatuses() []flowlog.Status {
	if e := a.flowLog.Load(); e != nil {
		return e.Statuses()
	}
	return nil
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

func (a *Agent) flowStatus() api.FlowStatus {
	st := api.FlowStatus{Events: !a.cfg.NoFlowEvents}
	if o := a.observer.Load(); o != nil {
		s := o.Stats()
		st.Seen, st.Lost, st.DecodeErrors, st.SubscriberLag = s.Seen, s.KernelLost, s.DecodeErrors, s.SubscriberLag
		st.Stored, st.Capacity = s.Stored, s.Capacity
	}
	return st
}
