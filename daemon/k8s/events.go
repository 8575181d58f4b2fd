package k8s

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Event reasons, as `kubectl describe` shows them.
const (
	reasonApplied  = "PolicyApplied"
	reasonRejected = "PolicyRejected"
	// reasonPartial: in force, but parts Aegis does not enforce yet allow
	// nothing (the message lists them by field).
	reasonPartial = "PolicyPartiallyApplied"
)

// reportState is the last Event recorded for an object; the same verdict
// on the same generation is not recorded again.
type reportState struct {
	uid        types.UID
	generation int64
	reason     string
	message    string
}

// Report records the daemon's verdict on an object as an Event on it:
// PolicyApplied when err is nil, PolicyRejected with err's message
// otherwise, so `kubectl describe` says whether a policy is in force and
// why not. kind is the object's kind ("NetworkPolicy",
// "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy",
// "ContainerNetworkLog"); namespace is empty for cluster-wide kinds.
//
// Call it after every regeneration for every object it concerned: it is
// cheap when nothing changed. A verdict is recorded once per generation of
// the object; Events go out through their own rate-limited client, and
// the Event machinery folds repeats. It does nothing when the source is
// not running or does not know the object. While the source itself
// rejects the object's current version (and has said so in an Event), a
// nil err, which can only be about the previous version, is not recorded.
// A canceled or expired context (the daemon stopping) is no verdict on a
// policy and is not recorded either. unsupported lists the parts of an
// applied policy that Aegis does not enforce (they allow nothing); the
// Event is then a Warning, PolicyPartiallyApplied, naming them.
func (s *Source) Report(kind, namespace, name string, err error, unsupported ...string) {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	key := objectKey(kind, namespace, name)
	s.mu.Lock()
	inf := s.informers[kind]
	rejectedHere := s.rejected[key]
	s.mu.Unlock()
	if inf == nil {
		return
	}
	storeKey := name
	if namespace != "" {
		storeKey = namespace + "/" + name
	}
	item, ok, _ := inf.GetStore().GetByKey(storeKey)
	if !ok {
		return
	}
	obj, ok := item.(runtime.Object)
	if !ok {
		return
	}
	if err != nil {
		s.event(kind, key, obj, corev1.EventTypeWarning, reasonRejected, "rejected by aegis: "+err.Error())
		return
	}
	if rejectedHere {
		return
	}
	m, merr := meta.Accessor(obj)
	if merr != nil {
		return
	}
	msg := fmt.Sprintf("generation %d in force", m.GetGeneration())
	if s.nodeName != "" {
		msg += " on node " + s.nodeName
	}
	if len(unsupported) > 0 {
		msg += "; not enforced by aegis, allowing nothing: " + strings.Join(unsupported, "; ")
		s.event(kind, key, obj, corev1.EventTypeWarning, reasonPartial, msg)
		return
	}
	s.event(kind, key, obj, corev1.EventTypeNormal, reasonApplied, msg)
}

// event records one Event about obj unless the same was recorded last.
func (s *Source) event(kind, key string, obj runtime.Object, eventType, reason, message string) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	st := reportState{uid: m.GetUID(), generation: m.GetGeneration(), reason: reason, message: message}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recorder == nil || s.reported[key] == st {
		return
	}
	s.reported[key] = st
	gvk := obj.GetObjectKind().GroupVersionKind()
	ref := &corev1.ObjectReference{
		APIVersion: gvk.GroupVersion().String(), Kind: kind,
		Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUID(), ResourceVersion: m.GetResourceVersion(),
	}
	s.recorder.Event(ref, eventType, reason, message)
}
