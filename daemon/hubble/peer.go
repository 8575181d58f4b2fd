package hubble

import (
	"strings"

	peerpb "github.com/cilium/cilium/api/v1/peer"
	"google.golang.org/grpc"
)

// clusterName is Cilium's default cluster name, part of the TLS server
// names hubble-relay expects.
const clusterName = "default"

// TLSServerName is the name hubble-relay checks this node's certificate
// for, as Cilium forms it: <node>.<cluster>.hubble-grpc.cilium.io, dots in
// the node name turned to dashes so that every node sits at the same
// domain level (a wildcard certificate covers all nodes).
func TLSServerName(node string) string {
	return strings.ReplaceAll(node, ".", "-") + "." + clusterName + ".hubble-grpc.cilium.io"
}

// PeerServiceServerName is the name hubble-relay checks the Peer
// service's certificate for when it reaches it over TCP.
const PeerServiceServerName = "hubble-peer." + clusterName + ".hubble-grpc.cilium.io"

// peerService implements Hubble's Peer service, which hubble-relay asks
// which nodes to connect to. aegisd serves one node and knows only
// itself: it announces itself once and then has no change to tell.
type peerService struct {
	peerpb.UnimplementedPeerServer
	s *Server
}

func (p *peerService) Notify(_ *peerpb.NotifyRequest, stream grpc.ServerStreamingServer[peerpb.ChangeNotification]) error {
	cn := &peerpb.ChangeNotification{Name: p.s.node, Address: p.s.address, Type: peerpb.ChangeNotificationType_PEER_ADDED}
	if p.s.tls {
		cn.Tls = &peerpb.TLS{ServerName: TLSServerName(p.s.node)}
	}
	if err := stream.Send(cn); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}
