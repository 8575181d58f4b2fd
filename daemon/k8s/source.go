// Package k8s is the in-cluster source of truth: the Kubernetes API, read
// through client-go shared informers (Namespaces, Pods, Services,
// EndpointSlices, NetworkPolicies, and the CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy and ContainerNetworkLog custom resources),
// delivered as the same manifests.Snapshot the directory source builds, so
// the daemon feeds both through one code path. An object that fails
// validation is left out and reported, and its last good version stays in
// force; Report turns the daemon's verdicts into Events on the objects.
package k8s

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/aegis-cni/aegis/daemon/manifests"
)

// File is what a FileError from this source names as its file: objects
// come from the API, not from a file.
const File = "api"

// The custom resources the source reads through the dynamic client.
var (
	CiliumNetworkPolicies            = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	CiliumClusterwideNetworkPolicies = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	ContainerNetworkLogs             = schema.GroupVersionResource{Group: "acn.azure.com", Version: "v1alpha1", Resource: "containernetworklogs"}
)

// kind is one kind the source watches. Kinds are listed in snapshot
// order; the index is part of each object's fingerprint.
type kind struct {
	name string
	gvr  schema.GroupVersionResource // custom resources only
}

var (
	typedKinds = []kind{{name: "Namespace"}, {name: "Pod"}, {name: "Service"}, {name: "EndpointSlice"}, {name: "NetworkPolicy"}}
	crdKinds   = []kind{
		{name: "CiliumNetworkPolicy", gvr: CiliumNetworkPolicies},
		{name: "CiliumClusterwideNetworkPolicy", gvr: CiliumClusterwideNetworkPolicies},
		{name: "ContainerNetworkLog", gvr: ContainerNetworkLogs},
	}
)

// Option configures New.
type Option func(*Source)

// WithNetworkPolicyValidator validates NetworkPolicies with the policy
// compiler's own rules (the directory source's option of the same name).
func WithNetworkPolicyValidator(v func(*networkingv1.NetworkPolicy) error) Option {
	return func(s *Source) { s.validateNP = v }
}

// WithObjectValidator validates the custom resources (CiliumNetworkPolicy
// and the like); an object it rejects is reported and its last good
// version stays in force.
func WithObjectValidator(v func(*unstructured.Unstructured) error) Option {
	return func(s *Source) { s.validateOther = v }
}

// WithLogger sets where the source logs (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Source) { s.log = l } }

// WithNodeName names this node in Events (default: none).
func WithNodeName(name string) Option { return func(s *Source) { s.nodeName = name } }

// WithDebounce sets how long a change waits for more before the snapshot
// is rebuilt (default 75ms). A burst of changes (a rollout, a kubectl apply
// of many policies) becomes one snapshot; no change waits longer than this.
func WithDebounce(d time.Duration) Option { return func(s *Source) { s.debounce = d } }

// WithCRDPoll sets how often the source looks for custom resource
// definitions that were missing (default 30s): a cluster may install the
// Cilium or ACNS CRDs after aegisd starts.
func WithCRDPoll(d time.Duration) Option { return func(s *Source) { s.crdPoll = d } }

// Source follows the Kubernetes API. Create it with New, start it with
// Run; Report may be called from any goroutine.
type Source struct {
	client        kubernetes.Interface
	events        kubernetes.Interface // its own client, so Events queue behind their own rate limit
	dyn           dynamic.Interface
	host          string
	validateNP    func(*networkingv1.NetworkPolicy) error
	validateOther func(*unstructured.Unstructured) error
	log           *slog.Logger
	nodeName      string
	debounce      time.Duration
	crdPoll       time.Duration

	kick chan struct{} // an informer saw a change

	mu        sync.Mutex
	informers map[string]cache.SharedIndexInformer // by kind name; started ones only
	recorder  record.EventRecorder                 // nil outside Run
	reported  map[string]reportState               // by object key
	rejected  map[string]bool                      // object keys whose current version the source rejected

	// Owned by Run's goroutine.
	entries map[string]*entry
	sum     [32]byte
	gen     uint64
}

// entry is what the source remembers of one object.
type entry struct {
	rv   string // resourceVersion last evaluated
	uid  types.UID
	good runtime.Object // last version that validated, nil if none did
	hash [32]byte       // fingerprint of good
	err  error          // why the current version is rejected, nil if it is not
}

// RESTConfig is the client configuration aegisd uses: the kubeconfig file
// when one is named, else the pod's in-cluster service account.
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("load in-cluster config (or pass --kubeconfig): %w", err)
	}
	return cfg, nil
}

// New returns a source reading the API server cfg points at.
func New(cfg *rest.Config, opts ...Option) (*Source, error) {
	s := &Source{
		host: cfg.Host, log: slog.Default(), debounce: 75 * time.Millisecond, crdPoll: 30 * time.Second,
		kick: make(chan struct{}, 1), informers: map[string]cache.SharedIndexInformer{},
		reported: map[string]reportState{}, rejected: map[string]bool{}, entries: map[string]*entry{},
	}
	for _, o := range opts {
		o(s)
	}
	// Informers list once and then watch, so their client needs a burst
	// for the initial lists and little rate after. Typed clients speak
	// protobuf, which costs the API server and us less than JSON.
	typed := rest.CopyConfig(cfg)
	typed.UserAgent = "aegisd"
	typed.ContentType = "application/vnd.kubernetes.protobuf"
	typed.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	typed.QPS, typed.Burst = 20, 50
	var err error
	if s.client, err = kubernetes.NewForConfig(typed); err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	ev := rest.CopyConfig(typed)
	ev.QPS, ev.Burst = 5, 20
	if s.events, err = kubernetes.NewForConfig(ev); err != nil {
		return nil, fmt.Errorf("create kubernetes client: %w", err)
	}
	dyn := rest.CopyConfig(cfg)
	dyn.UserAgent = "aegisd"
	dyn.QPS, dyn.Burst = 20, 50
	if s.dyn, err = dynamic.NewForConfig(dyn); err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	return s, nil
}

// Location names the API server, for status output.
func (s *Source) Location() string { return s.host }

// Run starts the informers, waits for their first lists, then calls apply
// with the full snapshot and the current rejections, and again after every
// settled change, until ctx ends. Like manifests.Watcher.Run, it calls
// apply when the content or the rejections changed, and the snapshot's
// Generation increases only when the content did. apply runs on Run's
// goroutine; changes that arrive meanwhile make one more call.
//
// The objects in a snapshot are shared with the informer caches: read
// them, never modify them. Run may be called once.
func (s *Source) Run(ctx context.Context, apply func(*manifests.Snapshot, []manifests.FileError)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.events.CoreV1().Events("")})
	s.mu.Lock()
	s.recorder = broadcaster.NewRecorder(nil, corev1.EventSource{Component: "aegisd", Host: s.nodeName})
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.recorder = nil
		s.mu.Unlock()
	}()

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.poke() },
		UpdateFunc: func(any, any) { s.poke() },
		DeleteFunc: func(any) { s.poke() },
	}
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, 0, informers.WithTransform(slim))
	// Shutdown waits for the informers, which stop when ctx ends.
	defer func() { cancel(); factory.Shutdown() }()
	typed := map[string]cache.SharedIndexInformer{
		"Namespace":     factory.Core().V1().Namespaces().Informer(),
		"Pod":           factory.Core().V1().Pods().Informer(),
		"Service":       factory.Core().V1().Services().Informer(),
		"EndpointSlice": factory.Discovery().V1().EndpointSlices().Informer(),
		"NetworkPolicy": factory.Networking().V1().NetworkPolicies().Informer(),
	}
	for name, inf := range typed {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch %s: %w", name, err)
		}
	}
	s.mu.Lock()
	for name, inf := range typed {
		s.informers[name] = inf
	}
	s.mu.Unlock()
	factory.Start(ctx.Done())

	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(s.dyn, 0)
	defer func() { cancel(); dynFactory.Shutdown() }()
	// startCRDs starts the informers of the custom resources the API
	// serves and that are not watched yet. It reports whether it could
	// tell for every kind: until then the first snapshot must wait, or a
	// passing discovery error at a restart would take every
	// CiliumNetworkPolicy out of force until the next look.
	startCRDs := func() (bool, error) {
		known := true
		for _, k := range crdKinds {
			s.mu.Lock()
			started := s.informers[k.name] != nil
			s.mu.Unlock()
			if started {
				continue
			}
			served, err := s.served(k.gvr)
			if err != nil {
				known = false
				s.log.Warn("cannot tell whether the API serves a custom resource; will look again", "resource", k.gvr.String(), "err", err)
				continue
			}
			if !served {
				continue
			}
			inf := dynFactory.ForResource(k.gvr).Informer()
			if err := inf.SetTransform(slim); err != nil {
				return false, fmt.Errorf("watch %s: %w", k.name, err)
			}
			if _, err := inf.AddEventHandler(handler); err != nil {
				return false, fmt.Errorf("watch %s: %w", k.name, err)
			}
			s.mu.Lock()
			s.informers[k.name] = inf
			s.mu.Unlock()
			s.log.Info("watching custom resource", "kind", k.name, "resource", k.gvr.String())
			// Builds skip the kind until its first list is complete,
			// which may be after its last event: rebuild then.
			go func() {
				if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
					s.poke()
				}
			}()
		}
		dynFactory.Start(ctx.Done())
		return known, nil
	}
	for {
		known, err := startCRDs()
		if err != nil {
			return err
		}
		if known {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	for _, k := range crdKinds {
		s.mu.Lock()
		started := s.informers[k.name] != nil
		s.mu.Unlock()
		if !started {
			s.log.Warn("custom resource not served by the API server; its objects are ignored until its CRD is installed",
				"kind", k.name, "resource", k.gvr.String(), "recheck", s.crdPoll)
		}
	}

	if !s.waitForSync(ctx) {
		return nil
	}

	var lastErrs string
	emit := func(first bool) {
		snap, errs, changed := s.build()
		errText := fmt.Sprint(errs)
		if first || changed || errText != lastErrs {
			lastErrs = errText
			apply(snap, errs)
		}
	}
	emit(true)

	crdTick := time.NewTicker(s.crdPoll)
	defer crdTick.Stop()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			// The first change starts the clock and later ones ride
			// along, so a steady stream of changes cannot starve the
			// rebuild.
			if settle == nil {
				settle = time.After(s.debounce)
			}
		case <-settle:
			settle = nil
			emit(false)
		case <-crdTick.C:
			if _, err := startCRDs(); err != nil {
				return err
			}
		}
	}
}

// poke notes that an informer saw a change.
func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// served says whether the API server serves the custom resource.
func (s *Source) served(gvr schema.GroupVersionResource) (bool, error) {
	list, err := s.client.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", gvr.GroupVersion(), err)
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return true, nil
		}
	}
	return false, nil
}

// waitForSync waits until every started informer has its first list,
// saying now and then which ones it still waits for (a missing RBAC rule
// shows up here). It returns false when ctx ended first.
func (s *Source) waitForSync(ctx context.Context) bool {
	start := time.Now()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	lastLog := start
	for {
		var waiting []string
		s.mu.Lock()
		for name, inf := range s.informers {
			if !inf.HasSynced() {
				waiting = append(waiting, name)
			}
		}
		s.mu.Unlock()
		if len(waiting) == 0 {
			s.log.Info("kubernetes caches synced", "server", s.host, "took", time.Since(start).Round(time.Millisecond))
			return true
		}
		if time.Since(lastLog) >= 15*time.Second {
			lastLog = time.Now()
			slices.Sort(waiting)
			s.log.Warn("still waiting for the first list from the API server (check RBAC and connectivity)",
				"kinds", strings.Join(waiting, ","), "server", s.host, "waited", time.Since(start).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return false
		case <-poll.C:
		}
	}
}

// build makes the snapshot from the informer caches. Objects unchanged
// since the last build (same resourceVersion) are neither validated nor
// fingerprinted again.
func (s *Source) build() (*manifests.Snapshot, []manifests.FileError, bool) {
	snap := &manifests.Snapshot{}
	var errs []manifests.FileError
	seen := map[string]bool{}
	whole := sha256.New()
	var rejected []string

	for i, k := range slices.Concat(typedKinds, crdKinds) {
		s.mu.Lock()
		inf := s.informers[k.name]
		s.mu.Unlock()
		// A custom resource found after the start counts from its first
		// complete list: half a list would apply half the policies.
		if inf == nil || !inf.HasSynced() {
			continue
		}
		objs := inf.GetStore().List()
		keyed := make([]keyedObject, 0, len(objs))
		for _, o := range objs {
			obj, ok := o.(runtime.Object)
			if !ok {
				continue
			}
			m, err := meta.Accessor(obj)
			if err != nil {
				continue
			}
			key := objectKey(k.name, m.GetNamespace(), m.GetName())
			seen[key] = true
			e := s.entries[key]
			if e == nil || e.rv != m.GetResourceVersion() || e.uid != m.GetUID() {
				e = s.evaluate(k.name, key, obj, m, e)
				s.entries[key] = e
			}
			if e.err != nil {
				errs = append(errs, manifests.FileError{File: File, Object: objectName(k.name, m.GetNamespace(), m.GetName()), Err: e.err})
				rejected = append(rejected, key)
			}
			if e.good != nil {
				keyed = append(keyed, keyedObject{key, e.good, e.hash})
			}
		}
		slices.SortFunc(keyed, func(a, b keyedObject) int { return cmp.Compare(a.key, b.key) })
		for _, ko := range keyed {
			whole.Write([]byte{byte(i)})
			whole.Write([]byte(ko.key))
			whole.Write(ko.hash[:])
			switch o := ko.obj.(type) {
			case *corev1.Namespace:
				snap.Namespaces = append(snap.Namespaces, o)
			case *corev1.Pod:
				snap.Pods = append(snap.Pods, o)
			case *corev1.Service:
				snap.Services = append(snap.Services, o)
			case *discoveryv1.EndpointSlice:
				snap.EndpointSlices = append(snap.EndpointSlices, o)
			case *networkingv1.NetworkPolicy:
				snap.NetworkPolicies = append(snap.NetworkPolicies, o)
			case *unstructured.Unstructured:
				snap.Others = append(snap.Others, o)
			}
		}
	}
	for key := range s.entries {
		if !seen[key] {
			delete(s.entries, key) // deleted objects take their last good version with them
		}
	}
	s.mu.Lock()
	clear(s.rejected)
	for _, key := range rejected {
		s.rejected[key] = true
	}
	for key := range s.reported {
		if !seen[key] {
			delete(s.reported, key)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(errs, func(a, b manifests.FileError) int { return cmp.Compare(a.Object, b.Object) })

	var sum [32]byte
	whole.Sum(sum[:0])
	changed := sum != s.sum
	if changed {
		s.sum = sum
		s.gen++
	}
	snap.Generation = s.gen
	return snap, errs, changed
}

type keyedObject struct {
	key  string
	obj  runtime.Object
	hash [32]byte
}

// evaluate validates a new version of an object. A version that fails
// keeps the previous good one (of the same object: a deleted and
// re-created object starts afresh) and is reported, as an error in the
// snapshot and as an Event on the object.
func (s *Source) evaluate(kind, key string, obj runtime.Object, m metav1.Object, prev *entry) *entry {
	e := &entry{rv: m.GetResourceVersion(), uid: m.GetUID()}
	if prev != nil && prev.uid == e.uid {
		e.good, e.hash = prev.good, prev.hash
	}
	if err := s.validate(obj); err != nil {
		e.err = err
		what := "no earlier version of it is in force"
		if e.good != nil {
			what = "its last good version stays in force"
			if pm, err := meta.Accessor(e.good); err == nil {
				what = fmt.Sprintf("its last good version (generation %d) stays in force", pm.GetGeneration())
			}
		}
		s.event(kind, key, obj, corev1.EventTypeWarning, reasonRejected, fmt.Sprintf("rejected by aegis: %v; %s", err, what))
		return e
	}
	hash, err := fingerprint(obj)
	if err != nil {
		// Unreachable for objects the API server decoded; keeping the
		// last good version is the safe answer all the same.
		e.err = err
		return e
	}
	e.good, e.hash = obj, hash
	return e
}

func (s *Source) validate(obj runtime.Object) error {
	switch o := obj.(type) {
	case *networkingv1.NetworkPolicy:
		if s.validateNP != nil {
			return s.validateNP(o)
		}
	case *unstructured.Unstructured:
		if s.validateOther != nil {
			return s.validateOther(o)
		}
	}
	return nil
}

// fingerprint hashes what an object says, leaving out what changes
// without changing it: the resourceVersion, and the status of custom
// resources (aegisd writes ContainerNetworkLog status itself, which must
// not count as a change of the desired state).
func fingerprint(obj runtime.Object) ([32]byte, error) {
	var v any
	switch o := obj.(type) {
	case *corev1.Namespace:
		c := *o
		c.ResourceVersion = ""
		v = &c
	case *corev1.Pod:
		c := *o
		c.ResourceVersion = ""
		v = &c
	case *corev1.Service:
		c := *o
		c.ResourceVersion = ""
		v = &c
	case *discoveryv1.EndpointSlice:
		c := *o
		c.ResourceVersion = ""
		v = &c
	case *networkingv1.NetworkPolicy:
		c := *o
		c.ResourceVersion = ""
		v = &c
	case *unstructured.Unstructured:
		c := make(map[string]any, len(o.Object))
		for k, val := range o.Object {
			if k != "status" {
				c[k] = val
			}
		}
		if md, ok := o.Object["metadata"].(map[string]any); ok {
			mc := make(map[string]any, len(md))
			for k, val := range md {
				if k != "resourceVersion" {
					mc[k] = val
				}
			}
			c["metadata"] = mc
		}
		v = c
	default:
		return [32]byte{}, fmt.Errorf("fingerprint %T: unexpected type", obj)
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		return [32]byte{}, fmt.Errorf("fingerprint object: %w", err)
	}
	return sha256.Sum256(buf.Bytes()), nil
}

// objectKey is how the source keys objects: kind, then the informer key.
func objectKey(kind, namespace, name string) string {
	if namespace == "" {
		return kind + "/" + name
	}
	return kind + "/" + namespace + "/" + name
}

// objectName names an object the way the directory source's errors do.
func objectName(kind, namespace, name string) string {
	if namespace == "" {
		return kind + " " + name
	}
	return kind + " " + namespace + "/" + name
}
