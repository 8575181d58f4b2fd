package agent

import (
	"context"
	"fmt"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/endpoint"
)

// AddEndpoint registers a pod interface and returns once its identity's
// policy, its ipcache entry and its endpoint map entry are in the maps: the
// plugin attaches the programs only after that, so no packet of the pod is
// ever unjudged.
func (a *Agent) AddEndpoint(ctx context.Context, req api.EndpointRequest) (*api.EndpointResponse, error) {
	if !a.ready() {
		return nil, errNotReady("waiting for the first snapshot of the policy source")
	}
	switch {
	case req.ContainerID == "":
		return nil, fmt.Errorf("%w: containerID is empty", api.ErrBadRequest)
	case req.IfName == "":
		return nil, fmt.Errorf("%w: ifName is empty", api.ErrBadRequest)
	case req.HostIfindex <= 0:
		return nil, fmt.Errorf("%w: hostIfindex %d is not an interface index", api.ErrBadRequest, req.HostIfindex)
	}
	ep := &endpoint.Endpoint{
		ContainerID:  req.ContainerID,
		IfName:       req.IfName,
		Netns:        req.Netns,
		HostIfName:   req.HostIfName,
		HostIfindex:  req.HostIfindex,
		IPs:          req.IPs,
		PodNamespace: req.PodNamespace,
		PodName:      req.PodName,
	}
	if err := a.putEndpoint(ep); err != nil {
		return nil, err
	}
	if err := a.regen.wait(ctx); err != nil {
		return nil, fmt.Errorf("apply endpoint %s: %w", ep.Key(), err)
	}
	got, ok := a.eps.Get(ep.Key())
	if !ok {
		return nil, fmt.Errorf("endpoint %s vanished while being added (a concurrent DEL?)", ep.Key())
	}
	a.log.Info("endpoint added", "endpoint", got.Key(), "pod", got.PodNamespace+"/"+got.PodName, "identity", got.Identity, "ifindex", got.HostIfindex)
	return &api.EndpointResponse{ID: got.ID, Identity: got.Identity}, nil
}

// DeleteEndpoint forgets a pod interface. The endpoint map entry goes
// first, so a reused ifindex can never inherit the pod's identity.
func (a *Agent) DeleteEndpoint(ctx context.Context, containerID, ifName string) error {
	if containerID == "" {
		return fmt.Errorf("%w: containerID is empty", api.ErrBadRequest)
	}
	key := containerID + "/" + ifName
	ep, ok, err := a.removeEndpoint(key)
	if err != nil || !ok {
		return err
	}
	a.log.Info("endpoint deleted", "endpoint", key, "pod", ep.PodNamespace+"/"+ep.PodName)
	if !a.ready() {
		return nil
	}
	return a.regen.wait(ctx)
}

// GC forgets every endpoint the runtime no longer lists.
func (a *Agent) GC(ctx context.Context, req api.GCRequest) (*api.GCResponse, error) {
	valid := map[string]bool{}
	for _, v := range req.Valid {
		valid[v.ContainerID+"/"+v.IfName] = true
	}
	resp := &api.GCResponse{Removed: []api.Attachment{}}
	defer func() {
		if len(resp.Removed) > 0 && a.ready() {
			if err := a.regen.wait(ctx); err != nil {
				a.log.Error("regenerate after gc", "err", err)
			}
		}
	}()
	for _, ep := range a.eps.List() {
		if valid[ep.Key()] {
			continue
		}
		if _, _, err := a.removeEndpoint(ep.Key()); err != nil {
			return resp, err
		}
		resp.Removed = append(resp.Removed, api.Attachment{ContainerID: ep.ContainerID, IfName: ep.IfName})
	}
	// Entries for ifindexes no endpoint owns (left by a crash between
	// steps) go too.
	a.epMu.Lock()
	defer a.epMu.Unlock()
	if m, err := a.dp.ListEndpoints(); err == nil {
		owned := map[uint32]bool{}
		for _, ep := range a.eps.List() {
			owned[uint32(ep.HostIfindex)] = true
		}
		for ifindex := range m {
			if !owned[ifindex] {
				_ = a.dp.DeleteEndpoint(ifindex)
			}
		}
	}
	return resp, nil
}

// putEndpoint stores a registration. A re-registration on a new veth (the
// sandbox was re-created) first takes the old ifindex out of the map, so
// it cannot keep the endpoint's identity.
func (a *Agent) putEndpoint(ep *endpoint.Endpoint) error {
	a.epMu.Lock()
	defer a.epMu.Unlock()
	if old, ok := a.eps.Get(ep.Key()); ok {
		ep.Identity = old.Identity
		if old.HostIfindex != ep.HostIfindex {
			if err := a.dp.DeleteEndpoint(uint32(old.HostIfindex)); err != nil {
				return err
			}
		}
	}
	return a.eps.Put(ep)
}

// removeEndpoint takes an endpoint out of the map, then the registry.
func (a *Agent) removeEndpoint(key string) (endpoint.Endpoint, bool, error) {
	a.epMu.Lock()
	defer a.epMu.Unlock()
	ep, ok := a.eps.Get(key)
	if !ok {
		return ep, false, nil
	}
	if err := a.dp.DeleteEndpoint(uint32(ep.HostIfindex)); err != nil {
		return ep, false, err
	}
	if _, err := a.eps.Delete(key); err != nil {
		return ep, false, err
	}
	return ep, true, nil
}
