package main

import (
	"context"
	"log/slog"

	"github.com/aegis-cni/aegis/daemon/k8s"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/policy"
)

// source is where policy comes from: a manifest directory or the
// Kubernetes API. Both deliver the same snapshots to the same agent.
type source struct {
	kind, location string
	run            func(context.Context, func(*manifests.Snapshot, []manifests.FileError)) error
	report         func(*manifests.Snapshot, error)
}

func newSource(o *options, log *slog.Logger) (*source, error) {
	if o.manifests != "" {
		w := manifests.NewWatcher(o.manifests, manifests.WithNetworkPolicyValidator(policy.Validate))
		return &source{kind: "manifests", location: o.manifests, run: w.Run, report: func(*manifests.Snapshot, error) {}}, nil
	}
	cfg, err := k8s.RESTConfig(o.kubeconfig)
	if err != nil {
		return nil, err
	}
	s, err := k8s.New(cfg, k8s.WithNetworkPolicyValidator(policy.Validate), k8s.WithLogger(log), k8s.WithNodeName(o.nodeName))
	if err != nil {
		return nil, err
	}
	// Every policy in an applied snapshot is in force (rejected ones were
	// left out, and the source reported them itself); a failed
	// regeneration means none of the snapshot's changes are.
	report := func(snap *manifests.Snapshot, err error) {
		for _, np := range snap.NetworkPolicies {
			s.Report("NetworkPolicy", np.Namespace, np.Name, err)
		}
	}
	return &source{kind: "kubernetes", location: s.Location(), run: s.Run, report: report}, nil
}
