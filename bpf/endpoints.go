package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// EndpointInfo is what the datapath knows of a pod, by host veth ifindex.
type EndpointInfo struct {
	Identity   uint32
	EndpointID uint32
}

// SetEndpoint registers (or updates) the endpoint behind a host veth.
func (m *Maps) SetEndpoint(ifindex uint32, info EndpointInfo) error {
	v := datapathEndpointInfo{Identity: info.Identity, EndpointId: info.EndpointID}
	if err := m.Endpoints.Put(ifindex, &v); err != nil {
		return fmt.Errorf("set endpoint %d: %w", ifindex, err)
	}
	return nil
}

// DeleteEndpoint forgets a host veth; forgetting an unknown one succeeds.
func (m *Maps) DeleteEndpoint(ifindex uint32) error {
	if err := m.Endpoints.Delete(ifindex); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %d: %w", ifindex, err)
	}
	return nil
}

// ListEndpoints dumps the endpoints map.
func (m *Maps) ListEndpoints() (map[uint32]EndpointInfo, error) {
	out := map[uint32]EndpointInfo{}
	var k uint32
	var v datapathEndpointInfo
	it := m.Endpoints.Iterate()
	for it.Next(&k, &v) {
		out[k] = EndpointInfo{Identity: v.Identity, EndpointID: v.EndpointId}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	return out, nil
}

// LookupEndpoint reads one endpoint entry.
func (m *Maps) LookupEndpoint(ifindex uint32) (EndpointInfo, bool) {
	var v datapathEndpointInfo
	if err := m.Endpoints.Lookup(ifindex, &v); err != nil {
		return EndpointInfo{}, false
	}
	return EndpointInfo{Identity: v.Identity, EndpointID: v.EndpointId}, true
}
