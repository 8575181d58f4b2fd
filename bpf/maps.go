package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Map pin names (the names in the C sources; maps are pinned by name).
const (
	MapEndpoints = "aegis_endpoints"
	MapEnforce   = "aegis_enforce"
	MapIPCache   = "aegis_ipcache"
	MapPolicy    = "aegis_policy"
	MapPolicyRev = "aegis_policy_rev"
	MapCT        = "aegis_ct"
	MapEvents    = "aegis_events"
	MapCounters  = "aegis_counters"
	MapLost      = "aegis_lost"
	MapProxy     = "aegis_proxy"
	MapFQDN      = "aegis_fqdn"
)

// Maps are the datapath's pinned maps, whoever opened them: the daemon
// after Load, or the plugin and CLI through OpenMaps.
type Maps struct {
	Endpoints *ebpf.Map
	Enforce   *ebpf.Map
	IPCache   *ebpf.Map
	Policy    *ebpf.Map
	PolicyRev *ebpf.Map
	CT        *ebpf.Map
	Events    *ebpf.Map
	Counters  *ebpf.Map
	Lost      *ebpf.Map
	Proxy     *ebpf.Map
	FQDN      *ebpf.Map
	owned     bool
}

func mapsFromObjects(o *datapathMaps) *Maps {
	return &Maps{
		Endpoints: o.AegisEndpoints,
		Enforce:   o.AegisEnforce,
		IPCache:   o.AegisIpcache,
		Policy:    o.AegisPolicy,
		PolicyRev: o.AegisPolicyRev,
		CT:        o.AegisCt,
		Events:    o.AegisEvents,
		Counters:  o.AegisCounters,
		Lost:      o.AegisLost,
		Proxy:     o.AegisProxy,
		FQDN:      o.AegisFqdn,
	}
}

// ErrNotLoaded says the datapath has never been loaded under this root.
var ErrNotLoaded = errors.New("datapath not loaded (is aegisd running?)")

// OpenMaps opens the pinned maps under paths, for tools that do not own
// the datapath (CNI plugin, CLI).
func OpenMaps(paths Paths) (*Maps, error) {
	m := &Maps{owned: true}
	for name, dst := range map[string]**ebpf.Map{
		MapEndpoints: &m.Endpoints, MapEnforce: &m.Enforce, MapIPCache: &m.IPCache,
		MapPolicy: &m.Policy, MapPolicyRev: &m.PolicyRev, MapCT: &m.CT,
		MapEvents: &m.Events, MapCounters: &m.Counters, MapLost: &m.Lost,
		MapProxy: &m.Proxy, MapFQDN: &m.FQDN,
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(paths.Maps(), name), nil)
		if err != nil {
			m.Close()
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("open map %s: %w", name, ErrNotLoaded)
			}
			return nil, fmt.Errorf("open map %s: %w", name, err)
		}
		*dst = mp
	}
	return m, nil
}

// Close closes maps opened by OpenMaps; the daemon's maps close with it.
func (m *Maps) Close() error {
	if m == nil || !m.owned {
		return nil
	}
	for _, mp := range []*ebpf.Map{m.Endpoints, m.Enforce, m.IPCache, m.Policy, m.PolicyRev, m.CT, m.Events, m.Counters, m.Lost, m.Proxy, m.FQDN} {
		if mp != nil {
			mp.Close()
		}
	}
	return nil
}
