package hubble

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"github.com/cilium/cilium/api/v1/observer"
	peerpb "github.com/cilium/cilium/api/v1/peer"
	"github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/aegis-cni/aegis/daemon/api"
	"github.com/aegis-cni/aegis/daemon/observe"
)

// DefaultSocket is where aegisd serves the Observer API on a node.
const DefaultSocket = "/var/run/aegis/hubble.sock"

// healthServiceName is the name Hubble clients check health under.
const healthServiceName = "hubble.server.Observer"

// Server implements Hubble's Observer service over the observer's flows.
type Server struct {
	observer.UnimplementedObserverServer
	flows   *observe.Observer
	node    string
	version string
	started time.Time
	address string // advertised TCP address; empty without one
	tls     bool
}

// NewServer returns the Observer service of this node.
func NewServer(flows *observe.Observer, node, version string) *Server {
	return &Server{flows: flows, node: node, version: version, started: time.Now()}
}

// ServeUnix serves the API on a root-only unix socket until ctx ends.
func (s *Server) ServeUnix(ctx context.Context, socket string) error {
	ln, err := api.ListenRootOnly(socket)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln, nil)
}

// Serve serves the Observer, Peer and health services on ln until ctx
// ends: over TLS with tlsConf, in plain text without (a unix socket, or
// TCP where the operator chose it).
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsConf *tls.Config) error {
	var opts []grpc.ServerOption
	if tlsConf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConf)))
	}
	g := grpc.NewServer(opts...)
	observer.RegisterObserverServer(g, s)
	peerpb.RegisterPeerServer(g, &peerService{s: s})
	// `hubble status` asks the standard health service first.
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(observer.Observer_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(healthServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	go func() { <-ctx.Done(); g.Stop() }()
	if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve hubble API on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Advertise sets where hubble-relay reaches this node's API (host:port of
// the TCP listener) and whether it speaks TLS there, for the Peer service
// and GetNodes. Call it before serving.
func (s *Server) Advertise(address string, tls bool) {
	s.address, s.tls = address, tls
}

// GetFlows sends stored flows that pass the filters (the last `number`, or
// the first with `first`, within since/until), then, with follow, new
// ones as they come.
func (s *Server) GetFlows(req *observer.GetFlowsRequest, stream grpc.ServerStreamingServer[observer.GetFlowsResponse]) error {
	wl, err := compileFilters(req.GetWhitelist())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "whitelist: %v", err)
	}
	bl, err := compileFilters(req.GetBlacklist())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "blacklist: %v", err)
	}
	since, until := req.GetSince(), req.GetUntil()
	keep := func(f *flow.Flow) bool {
		if since != nil && f.GetTime().AsTime().Before(since.AsTime()) {
			return false
		}
		if until != nil && f.GetTime().AsTime().After(until.AsTime()) {
			return false
		}
		return (len(wl) == 0 || wl.any(f)) && !bl.any(f)
	}
	// Follow first so nothing falls between history and the stream: the
	// history is what came before the cursor.
	var cur *observe.Cursor
	var liveLost <-chan observe.Lost
	if req.GetFollow() {
		cur = s.flows.Follow()
		lch, lcancel := s.flows.SubscribeLost(64)
		defer lcancel()
		liveLost = lch
	}
	st := s.flows.Stats()
	var history []*flow.Flow
	if cur != nil {
		history = cur.History(st.Capacity, keep)
	} else {
		history = s.flows.Last(st.Capacity, keep)
	}
	// LostEvents pass every filter and do not count towards number, as in
	// Hubble: the ones within the span of history the request covers go
	// with it.
	from, to := time.Time{}, time.Now()
	if since != nil {
		from = since.AsTime()
	}
	if until != nil {
		to = until.AsTime()
	}
	if n := int(req.GetNumber()); n > 0 && n < len(history) {
		if req.GetFirst() {
			history = history[:n]
			to = history[n-1].GetTime().AsTime()
		} else {
			history = history[len(history)-n:]
			from = history[0].GetTime().AsTime()
		}
	} else if req.GetNumber() == 0 && req.GetFollow() && since == nil {
		history = nil // follow alone streams new flows only
		from = to
	}
	var lost []observe.Lost
	for _, l := range s.flows.LostEvents() {
		if !l.Time.Before(from) && !l.Time.After(to) {
			lost = append(lost, l)
		}
	}
	sentLost := make(map[*flow.LostEvent]bool, len(lost))
	for _, f := range history {
		for len(lost) > 0 && lost[0].Time.Before(f.GetTime().AsTime()) {
			if err := s.sendLost(stream, lost[0]); err != nil {
				return err
			}
			sentLost[lost[0].Event] = true
			lost = lost[1:]
		}
		if err := s.send(stream, f); err != nil {
			return err
		}
	}
	for _, l := range lost {
		if err := s.sendLost(stream, l); err != nil {
			return err
		}
		sentLost[l.Event] = true
	}
	if cur == nil {
		return nil
	}
	var buf []observe.Entry
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case l := <-liveLost:
			if sentLost[l.Event] {
				continue
			}
			if err := s.sendLost(stream, l); err != nil {
				return err
			}
		case <-cur.Ready():
			// Flows are built per candidate, only for followers.
			buf = cur.Take(buf[:0])
			for i := range buf {
				f := cur.Flow(&buf[i])
				if !keep(f) {
					continue
				}
				if until != nil && f.GetTime().AsTime().After(until.AsTime()) {
					return nil
				}
				if err := s.send(stream, f); err != nil {
					return err
				}
			}
		}
	}
}

func (s *Server) send(stream grpc.ServerStreamingServer[observer.GetFlowsResponse], f *flow.Flow) error {
	return stream.Send(&observer.GetFlowsResponse{
		ResponseTypes: &observer.GetFlowsResponse_Flow{Flow: f},
		NodeName:      s.node,
		Time:          f.GetTime(),
	})
}

// sendLost reports events lost before they became flows, as Hubble does:
// a LostEvent with its source, CPU and count.
func (s *Server) sendLost(stream grpc.ServerStreamingServer[observer.GetFlowsResponse], l observe.Lost) error {
	return stream.Send(&observer.GetFlowsResponse{
		ResponseTypes: &observer.GetFlowsResponse_LostEvents{LostEvents: l.Event},
		NodeName:      s.node,
		Time:          timestamppb.New(l.Time),
	})
}

// ServerStatus reports the flow buffer and what was seen and lost.
func (s *Server) ServerStatus(context.Context, *observer.ServerStatusRequest) (*observer.ServerStatusResponse, error) {
	st := s.flows.Stats()
	up := time.Since(s.started)
	return &observer.ServerStatusResponse{
		NumFlows:            uint64(st.Stored),
		MaxFlows:            uint64(st.Capacity),
		SeenFlows:           st.Seen,
		UptimeNs:            uint64(up),
		NumConnectedNodes:   wrapperspb.UInt32(1),
		NumUnavailableNodes: wrapperspb.UInt32(0),
		Version:             "aegis " + s.version,
		FlowsRate:           float64(st.Seen) / up.Seconds(),
	}, nil
}

// GetNodes lists this node: aegisd serves one node; hubble-relay joins them.
func (s *Server) GetNodes(context.Context, *observer.GetNodesRequest) (*observer.GetNodesResponse, error) {
	st := s.flows.Stats()
	n := &observer.Node{
		Name:      s.node,
		Version:   "aegis " + s.version,
		Address:   s.address,
		State:     relay.NodeState_NODE_CONNECTED,
		UptimeNs:  uint64(time.Since(s.started)),
		NumFlows:  uint64(st.Stored),
		MaxFlows:  uint64(st.Capacity),
		SeenFlows: st.Seen,
	}
	if s.address != "" {
		n.Tls = &observer.TLS{Enabled: s.tls}
		if s.tls {
			n.Tls.ServerName = TLSServerName(s.node)
		}
	}
	return &observer.GetNodesResponse{Nodes: []*observer.Node{n}}, nil
}
