package main

import (
	"context"
	"log/slog"

	"github.com/aegis-cni/aegis/daemon/flowlog"
	"github.com/aegis-cni/aegis/daemon/k8s"
	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/daemon/policy/cnp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// source is where policy comes from: a manifest directory or the
// Kubernetes API. Both deliver the same snapshots to the same agent.
type source struct {
	kind, location string
	run            func(context.Context, func(*manifests.Snapshot, []manifests.FileError)) error
	report         func(*manifests.Snapshot, error)
	// logStatus publishes the ContainerNetworkLogs' verdicts where the
	// source can hold them (the objects' status in the API).
	logStatus func(context.Context, []flowlog.Status)
}

func newSource(o *options, log *slog.Logger) (*source, error) {
	if o.manifests != "" {
		w := manifests.NewWatcher(o.manifests, manifests.WithNetworkPolicyValidator(policy.Validate), manifests.WithObjectValidator(validateObject))
		return &source{kind: "manifests", location: o.manifests, run: w.Run,
			report: func(*manifests.Snapshot, error) {}, logStatus: func(context.Context, []flowlog.Status) {}}, nil
	}
	cfg, err := k8s.RESTConfig(o.kubeconfig)
	if err != nil {
		return nil, err
	}
	s, err := k8s.New(cfg, k8s.WithNetworkPolicyValidator(policy.Validate), k8s.WithObjectValidator(validateObject), k8s.WithLogger(log), k8s.WithNodeName(o.nodeName))
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
		for _, u := range snap.Others {
			if !isCilium(u) {
				continue
			}
			var unsupported []string
			if p, perr := cnp.ParseUnstructured(u); perr == nil {
				unsupported = p.Unsupported
			}
			s.Report(u.GetKind(), u.GetNamespace(), u.GetName(), err, unsupported...)
		}
	}
	logStatus := func(ctx context.Context, sts []flowlog.Status) {
		for _, st := range sts {
			if err := s.SetLogStatus(ctx, st.Name, st.State, st.Reason); err != nil && ctx.Err() == nil {
				log.Warn("ContainerNetworkLog status not written", "name", st.Name, "err", err)
			}
		}
	}
	return &source{kind: "kubernetes", location: s.Location(), run: s.Run, report: report, logStatus: logStatus}, nil
}

func isCilium(u *unstructured.Unstructured) bool {
	return u.GetAPIVersion() == cnp.APIVersion && (u.GetKind() == cnp.KindCNP || u.GetKind() == cnp.KindCCNP)
}

// validateObject checks the custom resources both sources keep raw. A
// Cilium policy must parse and validate in full; a rejected one is
// reported with the field at fault and its last good version stays in
// force. Other kinds (ContainerNetworkLog) are judged where they are used.
func validateObject(u *unstructured.Unstructured) error {
	if !isCilium(u) {
		return nil
	}
	p, err := cnp.ParseUnstructured(u)
	if err != nil {
		return err
	}
	for _, msg := range p.Unsupported {
		slog.Warn("policy not fully enforced", "kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "field", msg)
	}
	return nil
}
