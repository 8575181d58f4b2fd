// Package azurecns is a small stand-in for Azure's CNS (Container Networking
// Service), just enough of it for the real Azure CNI plugin (azure-vnet,
// github.com/Azure/azure-container-networking v1.7.0) to run ADD and DEL in
// transparent overlay mode:
//
//	{"type": "azure-vnet", "mode": "transparent",
//	 "ipam": {"type": "azure-cns", "mode": "v4overlay"}}
//
// In that mode azure-vnet asks CNS for nothing but pod IPs: ADD calls
// POST /network/requestipconfigs (falling back to /network/requestipconfig
// when that answers 404), DEL and a failed ADD call
// POST /network/releaseipconfigs (falling back to /network/releaseipconfig).
// Network-container and NMAgent calls happen only in the multitenancy
// (swift v1) and UPDATE paths; they are answered the way CNS answers for a
// pod that has no network container of its own. Every other path is a 404,
// which Azure's CNS client reads as "unsupported API".
//
// Requests and responses are the module's own cns types, so the wire format
// is the one azure-vnet v1.7.0 was built against. IPs are handed out from
// one pod CIDR (the node's overlay block), one per pod interface ID (CNS's
// InterfaceIDPodInfoScheme: containerID[:8]+"-"+ifName), idempotently, and
// can be persisted to a state file.
package azurecns

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-container-networking/cns"
	"github.com/Azure/azure-container-networking/cns/types"
)

// DefaultListen is where azure-vnet's CNS client looks for CNS: the DEL path
// of v1.7.0 ignores the conflist's "cnsurl" and always uses
// http://localhost:10090.
const DefaultListen = "127.0.0.1:10090"

// OverlayGateway is the pod gateway in Azure CNI overlay: the transparent
// endpoint client routes the pod's default route via 169.254.1.1 with a
// static neighbour entry for the host-side veth.
var OverlayGateway = netip.MustParseAddr("169.254.1.1")

// NCID is the ID of the one (overlay) network container the stand-in serves.
const NCID = "aegis-standin-overlay-nc"

// Config describes the node the stand-in serves.
type Config struct {
	// PodCIDR is the node's pod block; pod IPs are handed out from it.
	PodCIDR netip.Prefix
	// ClusterCIDR is the overlay address space (the NC's subnet address
	// space); its prefix length is what CNS reports for pod IPs. Zero means
	// PodCIDR.
	ClusterCIDR netip.Prefix
	// HostIP is the node's primary IP with its subnet, e.g. 192.0.2.1/24.
	// azure-vnet picks the master interface by this subnet: an interface in
	// the node's namespace must carry an address in exactly this prefix.
	HostIP netip.Prefix
	// HostGateway is the primary NIC's gateway. Zero means the first address
	// of HostIP's subnet (Azure's convention).
	HostGateway netip.Addr
	// Gateway is the NC gateway reported to the CNI. Zero means
	// OverlayGateway.
	Gateway netip.Addr
	// StatePath, if set, persists the allocations across restarts.
	StatePath string
	// Logf, if set, gets one line per request.
	Logf func(format string, args ...any)
}

// Allocation is one pod interface's IP.
type Allocation struct {
	IP               netip.Addr `json:"ip"`
	PodInterfaceID   string     `json:"podInterfaceID"`
	InfraContainerID string     `json:"infraContainerID"`
	PodName          string     `json:"podName"`
	PodNamespace     string     `json:"podNamespace"`
	Assigned         time.Time  `json:"assigned"`
}

// Server is the stand-in; its Handler serves the CNS HTTP API.
type Server struct {
	cfg Config

	mu    sync.Mutex
	byKey map[string]Allocation // pod interface ID -> allocation
	byIP  map[netip.Addr]string // IP -> pod interface ID
	mux   *http.ServeMux
}

// New validates cfg, fills defaults and loads the state file if there is one.
func New(cfg Config) (*Server, error) {
	if !cfg.PodCIDR.IsValid() || !cfg.PodCIDR.Addr().Is4() {
		return nil, errors.New("pod CIDR: need an IPv4 prefix")
	}
	cfg.PodCIDR = cfg.PodCIDR.Masked()
	if !cfg.ClusterCIDR.IsValid() {
		cfg.ClusterCIDR = cfg.PodCIDR
	}
	cfg.ClusterCIDR = cfg.ClusterCIDR.Masked()
	if !cfg.ClusterCIDR.Contains(cfg.PodCIDR.Addr()) || cfg.ClusterCIDR.Bits() > cfg.PodCIDR.Bits() {
		return nil, fmt.Errorf("cluster CIDR %s does not contain pod CIDR %s", cfg.ClusterCIDR, cfg.PodCIDR)
	}
	if !cfg.HostIP.IsValid() || !cfg.HostIP.Addr().Is4() {
		return nil, errors.New("host IP: need an IPv4 address with its subnet, e.g. 192.0.2.1/24")
	}
	if !cfg.HostGateway.IsValid() {
		cfg.HostGateway = cfg.HostIP.Masked().Addr().Next()
	}
	if !cfg.Gateway.IsValid() {
		cfg.Gateway = OverlayGateway
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	s := &Server{
		cfg:   cfg,
		byKey: map[string]Allocation{},
		byIP:  map[netip.Addr]string{},
	}
	if err := s.load(); err != nil {
		return nil, err
	}
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST "+cns.RequestIPConfigs, s.requestIPConfigs)
	s.mux.HandleFunc("POST "+cns.RequestIPConfig, s.requestIPConfig)
	s.mux.HandleFunc("POST "+cns.ReleaseIPConfigs, s.releaseIPConfigs)
	s.mux.HandleFunc("POST "+cns.ReleaseIPConfig, s.releaseIPConfig)
	s.mux.HandleFunc("POST "+cns.GetNetworkContainerByOrchestratorContext, s.getNetworkContainer)
	s.mux.HandleFunc("POST "+cns.GetAllNetworkContainers, s.getAllNetworkContainers)
	s.mux.HandleFunc("POST "+cns.PathDebugIPAddresses, s.debugIPAddresses)
	return s, nil
}

// Config returns the effective configuration (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// Handler serves the CNS API.
func (s *Server) Handler() http.Handler { return s.mux }

// Allocations returns the current allocations, sorted by IP.
func (s *Server) Allocations() []Allocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sortedLocked()
}

func (s *Server) sortedLocked() []Allocation {
	out := make([]Allocation, 0, len(s.byKey))
	for _, a := range s.byKey {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// podIPInfo is what CNS answers for one overlay pod IP
// (restserver.populateIPConfigInfoUntransacted with an overlay NC built by
// nodenetworkconfig.CreateNCRequestFromStaticNC).
func (s *Server) podIPInfo(ip netip.Addr) cns.PodIpInfo {
	bits := uint8(s.cfg.ClusterCIDR.Bits())
	return cns.PodIpInfo{
		PodIPConfig: cns.IPSubnet{IPAddress: ip.String(), PrefixLength: bits},
		NetworkContainerPrimaryIPConfig: cns.IPConfiguration{
			IPSubnet:         cns.IPSubnet{IPAddress: s.cfg.PodCIDR.Addr().String(), PrefixLength: bits},
			GatewayIPAddress: s.cfg.Gateway.String(),
		},
		HostPrimaryIPInfo: cns.HostIPInfo{
			Gateway:   s.cfg.HostGateway.String(),
			PrimaryIP: s.cfg.HostIP.Addr().String(),
			Subnet:    s.cfg.HostIP.Masked().String(),
		},
		NICType: cns.InfraNIC,
	}
}

// podKey validates a request the way CNS does and returns the pod's key.
func podKey(req cns.IPConfigsRequest) (cns.KubernetesPodInfo, types.ResponseCode, string) {
	var pod cns.KubernetesPodInfo
	if oc := bytes.TrimSpace(req.OrchestratorContext); len(oc) == 0 || bytes.Equal(oc, []byte("null")) {
		return pod, types.EmptyOrchestratorContext, "OrchestratorContext is not set in the request"
	}
	if err := json.Unmarshal(req.OrchestratorContext, &pod); err != nil {
		return pod, types.UnsupportedOrchestratorContext, err.Error()
	}
	if req.PodInterfaceID == "" {
		return pod, types.UnsupportedOrchestratorContext, "need interfaceID for pod info but request was empty"
	}
	return pod, types.Success, ""
}

// allocate returns the pod interface's IP, assigning one if it has none.
func (s *Server) allocate(req cns.IPConfigsRequest) ([]cns.PodIpInfo, types.ResponseCode, string) {
	pod, code, msg := podKey(req)
	if code != types.Success {
		return nil, code, msg
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if a, ok := s.byKey[req.PodInterfaceID]; ok {
		for _, d := range req.DesiredIPAddresses {
			if d != a.IP.String() {
				return nil, types.FailedToAllocateIPConfig,
					fmt.Sprintf("pod interface %s already has %s, not desired %s", req.PodInterfaceID, a.IP, d)
			}
		}
		return []cns.PodIpInfo{s.podIPInfo(a.IP)}, types.Success, ""
	}
	var ip netip.Addr
	switch len(req.DesiredIPAddresses) {
	case 0:
		ip = s.freeLocked()
		if !ip.IsValid() {
			return nil, types.FailedToAllocateIPConfig, fmt.Sprintf("no free IP left in %s", s.cfg.PodCIDR)
		}
	case 1:
		d, err := netip.ParseAddr(req.DesiredIPAddresses[0])
		if err != nil || !s.cfg.PodCIDR.Contains(d) {
			return nil, types.InvalidRequest, fmt.Sprintf("desired IP %q is not in %s", req.DesiredIPAddresses[0], s.cfg.PodCIDR)
		}
		if owner, taken := s.byIP[d]; taken {
			return nil, types.FailedToAllocateIPConfig, fmt.Sprintf("desired IP %s is assigned to %s", d, owner)
		}
		ip = d
	default:
		return nil, types.InvalidRequest, "overlay has one IPv4 NC: at most one desired IP"
	}
	a := Allocation{
		IP:               ip,
		PodInterfaceID:   req.PodInterfaceID,
		InfraContainerID: req.InfraContainerID,
		PodName:          pod.PodName,
		PodNamespace:     pod.PodNamespace,
		Assigned:         time.Now().UTC(),
	}
	s.byKey[a.PodInterfaceID] = a
	s.byIP[ip] = a.PodInterfaceID
	if err := s.saveLocked(); err != nil {
		delete(s.byKey, a.PodInterfaceID)
		delete(s.byIP, ip)
		return nil, types.UnexpectedError, err.Error()
	}
	return []cns.PodIpInfo{s.podIPInfo(ip)}, types.Success, ""
}

// freeLocked returns the lowest unassigned address of the pod CIDR, leaving
// out its network and broadcast addresses when it has more than two.
func (s *Server) freeLocked() netip.Addr {
	p := s.cfg.PodCIDR
	first, last := p.Addr(), lastAddr(p)
	if p.Bits() < 31 {
		first, last = first.Next(), last.Prev()
	}
	for ip := first; ip.IsValid() && p.Contains(ip); ip = ip.Next() {
		if _, taken := s.byIP[ip]; !taken {
			return ip
		}
		if ip == last {
			break
		}
	}
	return netip.Addr{}
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// release frees every IP of the pod interface; releasing nothing succeeds,
// as in CNS (a DEL may be repeated).
func (s *Server) release(req cns.IPConfigsRequest) (types.ResponseCode, string) {
	if _, code, msg := podKey(req); code != types.Success {
		return code, msg
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.byKey[req.PodInterfaceID]
	if !ok {
		return types.Success, ""
	}
	delete(s.byKey, a.PodInterfaceID)
	delete(s.byIP, a.IP)
	if err := s.saveLocked(); err != nil {
		s.byKey[a.PodInterfaceID] = a
		s.byIP[a.IP] = a.PodInterfaceID
		return types.UnexpectedError, err.Error()
	}
	return types.Success, ""
}

func (s *Server) requestIPConfigs(w http.ResponseWriter, r *http.Request) {
	var req cns.IPConfigsRequest
	if !decode(w, r, &req) {
		return
	}
	infos, code, msg := s.allocate(req)
	s.logf(r, req.PodInterfaceID, infos, code, msg)
	encode(w, cns.IPConfigsResponse{PodIPInfo: infos, Response: cns.Response{ReturnCode: code, Message: msg}})
}

func (s *Server) requestIPConfig(w http.ResponseWriter, r *http.Request) {
	var req cns.IPConfigRequest
	if !decode(w, r, &req) {
		return
	}
	infos, code, msg := s.allocate(fromLegacy(req))
	s.logf(r, req.PodInterfaceID, infos, code, msg)
	resp := cns.IPConfigResponse{Response: cns.Response{ReturnCode: code, Message: msg}}
	if len(infos) == 1 {
		resp.PodIpInfo = infos[0]
	}
	encode(w, resp)
}

func (s *Server) releaseIPConfigs(w http.ResponseWriter, r *http.Request) {
	var req cns.IPConfigsRequest
	if !decode(w, r, &req) {
		return
	}
	code, msg := s.release(req)
	s.logf(r, req.PodInterfaceID, nil, code, msg)
	encode(w, cns.Response{ReturnCode: code, Message: msg})
}

func (s *Server) releaseIPConfig(w http.ResponseWriter, r *http.Request) {
	var req cns.IPConfigRequest
	if !decode(w, r, &req) {
		return
	}
	code, msg := s.release(fromLegacy(req))
	s.logf(r, req.PodInterfaceID, nil, code, msg)
	encode(w, cns.Response{ReturnCode: code, Message: msg})
}

// Overlay pods have no network container of their own: CNS answers
// UnknownContainerID, which the multitenancy and UPDATE paths of azure-vnet
// report as "no NC for this pod".
func (s *Server) getNetworkContainer(w http.ResponseWriter, r *http.Request) {
	var req cns.GetNetworkContainerRequest
	if !decode(w, r, &req) {
		return
	}
	resp := cns.GetNetworkContainerResponse{Response: cns.Response{
		ReturnCode: types.UnknownContainerID,
		Message:    "overlay: no network container for this orchestrator context",
	}}
	s.cfg.Logf("%s %s -> %s", r.Method, r.URL.Path, resp.Response.ReturnCode)
	encode(w, resp)
}

func (s *Server) getAllNetworkContainers(w http.ResponseWriter, r *http.Request) {
	var req cns.GetNetworkContainerRequest
	if !decode(w, r, &req) {
		return
	}
	resp := cns.GetAllNetworkContainersResponse{Response: cns.Response{
		ReturnCode: types.UnknownContainerID,
		Message:    "overlay: no network container for this orchestrator context",
	}}
	s.cfg.Logf("%s %s -> %s", r.Method, r.URL.Path, resp.Response.ReturnCode)
	encode(w, resp)
}

// debugIPAddresses is CNS's /debug/ipaddresses (cns/client
// GetIPAddressesMatchingStates): the IPs in the requested states.
func (s *Server) debugIPAddresses(w http.ResponseWriter, r *http.Request) {
	var req cns.GetIPAddressesRequest
	if !decode(w, r, &req) {
		return
	}
	want := map[types.IPState]bool{}
	for _, st := range req.IPConfigStateFilter {
		want[st] = true
	}
	var out []cns.IPConfigurationStatus
	s.mu.Lock()
	if want[types.Assigned] {
		for _, a := range s.sortedLocked() {
			st := cns.IPConfigurationStatus{
				ID:        a.IP.String(),
				IPAddress: a.IP.String(),
				NCID:      NCID,
				PodInfo:   cns.NewPodInfo(a.InfraContainerID, a.PodInterfaceID, a.PodName, a.PodNamespace),
			}
			st.SetState(types.Assigned)
			out = append(out, st)
		}
	}
	if want[types.Available] {
		p := s.cfg.PodCIDR
		last := lastAddr(p)
		for ip := p.Addr(); p.Contains(ip); ip = ip.Next() {
			if p.Bits() >= 31 || (ip != p.Addr() && ip != last) {
				if _, taken := s.byIP[ip]; !taken {
					st := cns.IPConfigurationStatus{ID: ip.String(), IPAddress: ip.String(), NCID: NCID}
					st.SetState(types.Available)
					out = append(out, st)
				}
			}
			if ip == last {
				break
			}
		}
	}
	s.mu.Unlock()
	encode(w, cns.GetIPAddressStatusResponse{IPConfigurationStatus: out, Response: cns.Response{ReturnCode: types.Success}})
}

func fromLegacy(req cns.IPConfigRequest) cns.IPConfigsRequest {
	out := cns.IPConfigsRequest{
		PodInterfaceID:      req.PodInterfaceID,
		InfraContainerID:    req.InfraContainerID,
		OrchestratorContext: req.OrchestratorContext,
		Ifname:              req.Ifname,
	}
	if req.DesiredIPAddress != "" {
		out.DesiredIPAddresses = []string{req.DesiredIPAddress}
	}
	return out
}

func (s *Server) logf(r *http.Request, key string, infos []cns.PodIpInfo, code types.ResponseCode, msg string) {
	ips := make([]string, 0, len(infos))
	for _, i := range infos {
		ips = append(ips, i.PodIPConfig.IPAddress)
	}
	s.cfg.Logf("%s %s podInterfaceID=%q -> %s %v %s", r.Method, r.URL.Path, key, code, ips, msg)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(cns.Response{ReturnCode: types.InvalidRequest, Message: err.Error()})
		return false
	}
	return true
}

func encode(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

type stateFile struct {
	PodCIDR     string       `json:"podCIDR"`
	Allocations []Allocation `json:"allocations"`
}

func (s *Server) load() error {
	if s.cfg.StatePath == "" {
		return nil
	}
	b, err := os.ReadFile(s.cfg.StatePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("state %s: %w", s.cfg.StatePath, err)
	}
	for _, a := range st.Allocations {
		if !s.cfg.PodCIDR.Contains(a.IP) {
			return fmt.Errorf("state %s: %s is outside pod CIDR %s", s.cfg.StatePath, a.IP, s.cfg.PodCIDR)
		}
		s.byKey[a.PodInterfaceID] = a
		s.byIP[a.IP] = a.PodInterfaceID
	}
	return nil
}

func (s *Server) saveLocked() error {
	if s.cfg.StatePath == "" {
		return nil
	}
	b, err := json.MarshalIndent(stateFile{PodCIDR: s.cfg.PodCIDR.String(), Allocations: s.sortedLocked()}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.cfg.StatePath), ".cns-state-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), s.cfg.StatePath)
}

// ReadState reads a state file written by a stand-in (for tests that run
// the stand-in as a separate process).
func ReadState(path string) ([]Allocation, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	return st.Allocations, nil
}
