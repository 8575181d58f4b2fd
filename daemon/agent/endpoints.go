package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

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
	fast, err := a.fastAdd(ep)
	if err != nil {
		return nil, fmt.Errorf("apply endpoint %s: %w", ep.Key(), err)
	}
	if !fast {
		if err := a.putEndpoint(ep); err != nil {
			return nil, err
		}
		if err := a.regen.wait(ctx); err != nil {
			return nil, fmt.Errorf("apply endpoint %s: %w", ep.Key(), err)
		}
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
	if fast, err := a.fastDel(key); err != nil || fast {
		if fast {
			a.log.Info("endpoint deleted", "endpoint", key)
		}
		return err
	}
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

// fastAdd applies an endpoint whose label set already has a compiled local
// identity: only its ipcache entries and its endpoint map entry are new,
// because the identity set, the local identities and (checked here) the
// named ports stay as compiled, so a full regeneration would write exactly
// this. It reports false when a full regeneration is needed.
func (a *Agent) fastAdd(ep *endpoint.Endpoint) (bool, error) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	v := &a.view
	a.mu.Lock()
	gen := a.snap.Generation
	a.mu.Unlock()
	if v.compiled == nil || v.pods == nil || v.pods.gen != gen {
		return false, nil
	}
	if _, exists := a.eps.Get(ep.Key()); exists {
		return false, nil
	}
	id, ok := v.byKey[v.pods.labels(ep.PodNamespace, ep.PodName).Key()]
	if !ok || v.users[id] == 0 {
		return false, nil
	}
	for _, np := range v.pods.namedPorts(ep.PodNamespace, ep.PodName) {
		if !slices.Contains(v.named[id], np) {
			return false, nil
		}
	}
	for _, ip := range ep.IPs {
		p := netip.PrefixFrom(ip, ip.BitLen())
		if err := a.ipcache.Put(p, id); err != nil {
			return false, err
		}
		v.ipcache[p] = id
	}
	ep.Identity = id
	if err := a.putEndpoint(ep); err != nil {
		return false, err
	}
	if err := a.setEndpointIdentity(*ep, id); err != nil {
		return false, err
	}
	v.users[id]++
	a.renameEndpoint(*ep, false)
	a.mu.Lock()
	a.ipcacheSize = a.ipcache.Len()
	a.mu.Unlock()
	return true, nil
}

// fastDel removes an endpoint whose identity other local endpoints still
// use: only its endpoint map entry and its addresses go (an address some
// remote pod or the node also owns falls back to that owner). It reports
// false when a full regeneration is needed.
func (a *Agent) fastDel(key string) (bool, error) {
	a.stateMu.Lock()
	defer a.stateMu.Unlock()
	v := &a.view
	ep, ok := a.eps.Get(key)
	if !ok {
		return true, nil
	}
	if v.compiled == nil || v.users[ep.Identity] <= 1 {
		return false, nil
	}
	if _, _, err := a.removeEndpoint(key); err != nil {
		return false, err
	}
	for _, ip := range ep.IPs {
		p := netip.PrefixFrom(ip, ip.BitLen())
		var err error
		if owner, ok := v.background[ip]; ok {
			err = a.ipcache.Put(p, owner)
			v.ipcache[p] = owner
		} else {
			err = a.ipcache.Remove(p)
			delete(v.ipcache, p)
		}
		if err != nil {
			return false, err
		}
	}
	v.users[ep.Identity]--
	a.renameEndpoint(ep, true)
	a.mu.Lock()
	a.ipcacheSize = a.ipcache.Len()
	a.mu.Unlock()
	return true, nil
}
