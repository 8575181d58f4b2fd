package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
)

// statusTimeout bounds one status write, so a slow API server delays the
// next snapshot by at most this much.
const statusTimeout = 5 * time.Second

// SetLogStatus writes a ContainerNetworkLog's status as ACNS shows it in
// `kubectl describe containernetworklog`: state CONFIGURED or FAILED, the
// time it was decided, and for FAILED the reason. It writes only when the
// state or reason differ from what the object already says: every node
// reaches the same verdict on the same spec, so a cluster of nodes settles
// on one write per change rather than one per node and snapshot.
func (s *Source) SetLogStatus(ctx context.Context, name, state, reason string) error {
	s.mu.Lock()
	inf := s.informers["ContainerNetworkLog"]
	s.mu.Unlock()
	if inf == nil {
		return nil
	}
	item, ok, _ := inf.GetStore().GetByKey(name)
	if !ok {
		return nil // deleted meanwhile: nothing to say
	}
	if u, ok := item.(*unstructured.Unstructured); ok {
		cur, _, _ := unstructured.NestedString(u.Object, "status", "state")
		curErr, _, _ := unstructured.NestedString(u.Object, "status", "error")
		if cur == state && curErr == reason {
			return nil
		}
	}
	st := map[string]any{"state": state, "timestamp": time.Now().UTC().Format(time.RFC3339), "error": nil}
	if reason != "" {
		st["error"] = reason
	}
	body, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return fmt.Errorf("encode status of ContainerNetworkLog %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	_, err = s.dyn.Resource(ContainerNetworkLogs).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: "aegisd"}, "status")
	if err != nil {
		return fmt.Errorf("write status of ContainerNetworkLog %s: %w", name, err)
	}
	return nil
}
