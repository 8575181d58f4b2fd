package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/aegis-cni/aegis/daemon/manifests"
	"github.com/aegis-cni/aegis/daemon/policy"
	"github.com/aegis-cni/aegis/e2e/kube"
)

// update is one call of the source's apply.
type update struct {
	snap *manifests.Snapshot
	errs []manifests.FileError
}

// testValidate is the policy compiler's validation plus one rule the API
// server does not have (it already enforces everything policy.Validate
// does), so a test can store a policy that Aegis rejects.
func testValidate(np *networkingv1.NetworkPolicy) error {
	if err := policy.Validate(np); err != nil {
		return err
	}
	for i, r := range np.Spec.Ingress {
		for j, p := range r.Ports {
			if p.Port != nil && p.Port.IntValue() == 6666 {
				return &policy.FieldError{Field: fmt.Sprintf("spec.ingress[%d].ports[%d].port", i, j), Detail: "6666 is reserved in this test"}
			}
		}
	}
	return nil
}

// testValidateOther rejects custom resources whose spec says so.
func testValidateOther(u *unstructured.Unstructured) error {
	if bad, _, _ := unstructured.NestedString(u.Object, "spec", "description"); bad == "invalid" {
		return errors.New("spec.description: invalid in this test")
	}
	return nil
}

// watcher runs a Source and collects its updates.
type watcher struct {
	t   *testing.T
	src *Source
	ch  chan update
}

func startSource(t *testing.T, c *kube.Cluster) *watcher {
	t.Helper()
	src, err := New(c.Config,
		WithNetworkPolicyValidator(testValidate), WithObjectValidator(testValidateOther),
		WithNodeName("node-a"), WithDebounce(50*time.Millisecond),
		WithLogger(slog.New(slog.NewTextHandler(testWriter{t}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{t: t, src: src, ch: make(chan update, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s *manifests.Snapshot, errs []manifests.FileError) { w.ch <- update{s, errs} })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancel")
		}
	})
	return w
}

// until returns the first update that satisfies ok, failing the test if
// none comes within 15s.
func (w *watcher) until(what string, ok func(update) bool) update {
	w.t.Helper()
	deadline := time.After(15 * time.Second)
	var last update
	for {
		select {
		case u := <-w.ch:
			if ok(u) {
				return u
			}
			last = u
		case <-deadline:
			if last.snap != nil {
				w.t.Fatalf("%s: no such update within 15s; last: %s, errs %v", what, describe(last.snap), last.errs)
			}
			w.t.Fatalf("%s: no update within 15s", what)
		}
	}
}

// quiet fails the test if an update comes within d.
func (w *watcher) quiet(what string, d time.Duration) {
	w.t.Helper()
	select {
	case u := <-w.ch:
		w.t.Fatalf("%s: unexpected update: generation %d, %s, errs %v", what, u.snap.Generation, describe(u.snap), u.errs)
	case <-time.After(d):
	}
}

func describe(s *manifests.Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "gen %d; ns", s.Generation)
	for _, o := range s.Namespaces {
		b.WriteString(" " + o.Name)
	}
	b.WriteString("; pods")
	for _, o := range s.Pods {
		fmt.Fprintf(&b, " %s/%s(%s)", o.Namespace, o.Name, o.Status.PodIP)
	}
	b.WriteString("; nps")
	for _, o := range s.NetworkPolicies {
		fmt.Fprintf(&b, " %s/%s", o.Namespace, o.Name)
	}
	b.WriteString("; others")
	for _, o := range s.Others {
		fmt.Fprintf(&b, " %s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
	}
	return b.String()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func pod(s *manifests.Snapshot, ns, name string) *corev1.Pod {
	for _, p := range s.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func netpol(s *manifests.Snapshot, ns, name string) *networkingv1.NetworkPolicy {
	for _, p := range s.NetworkPolicies {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func other(s *manifests.Snapshot, kind, ns, name string) *unstructured.Unstructured {
	for _, o := range s.Others {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	return nil
}

func ingressPort(port int) *networkingv1.NetworkPolicy {
	p := intstr.FromInt32(int32(port))
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "web-in", Namespace: "pets"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
			}},
		},
	}
}

func cnp(description string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "db-egress", "namespace": "pets"},
		"spec": map[string]any{
			"description":      description,
			"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "db"}},
			"egress":           []any{map[string]any{"toEndpoints": []any{map[string]any{"matchLabels": map[string]any{"app": "web"}}}}},
		},
	}}
}

// events lists the Events recorded about an object.
func events(t *testing.T, cs kubernetes.Interface, ns, kind, name string) []corev1.Event {
	t.Helper()
	list, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name,
	})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// waitEvent waits until an Event with reason and a message containing msg
// is recorded about the object.
func waitEvent(t *testing.T, cs kubernetes.Interface, ns, kind, name, reason, msg string) corev1.Event {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		evs := events(t, cs, ns, kind, name)
		for _, e := range evs {
			if e.Reason == reason && strings.Contains(e.Message, msg) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event containing %q on %s %s/%s within 15s; have %+v", reason, msg, kind, ns, name, evs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSourceAgainstAPIServer(t *testing.T) {
	c := kube.Start(t, kube.Options{})
	cs := c.Client
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Objects present before the source starts come in its first snapshot.
	c.CreateNamespace(t, "pets", map[string]string{"team": "a"})
	must(cs.CoreV1().Pods("pets").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "pets", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{
			Name: "c", Image: "x", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		}}},
	}, metav1.CreateOptions{}))
	db, err := cs.CoreV1().Pods("pets").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "pets", Labels: map[string]string{"app": "db"}},
		Spec:       corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "x"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A remote pod: its address comes from its node's kubelet, here from
	// the status subresource.
	db.Status.Phase = corev1.PodRunning
	db.Status.PodIP, db.Status.PodIPs = "10.244.2.7", []corev1.PodIP{{IP: "10.244.2.7"}}
	if db, err = cs.CoreV1().Pods("pets").UpdateStatus(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	must(cs.NetworkingV1().NetworkPolicies("pets").Create(ctx, ingressPort(8080), metav1.CreateOptions{}))
	must(c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Create(ctx, cnp("db may call web"), metav1.CreateOptions{}))
	must(cs.CoreV1().Services("pets").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "pets"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")},
		}},
	}, metav1.CreateOptions{}))
	must(cs.DiscoveryV1().EndpointSlices("pets").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Namespace: "pets", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
	}, metav1.CreateOptions{}))

	w := startSource(t, c)
	u := w.until("first snapshot", func(update) bool { return true })
	s := u.snap
	if s.Generation != 1 || len(u.errs) != 0 {
		t.Fatalf("first snapshot: generation %d, errs %v", s.Generation, u.errs)
	}
	t.Logf("first snapshot: %s", describe(s))
	if !slices.ContainsFunc(s.Namespaces, func(n *corev1.Namespace) bool { return n.Name == "pets" && n.Labels["team"] == "a" }) {
		t.Errorf("namespace pets missing or without its labels")
	}
	if p := pod(s, "pets", "db"); p == nil || p.Status.PodIP != "10.244.2.7" || p.Spec.NodeName != "node-b" || p.Kind != "Pod" {
		t.Errorf("remote pod db: %+v", p)
	}
	if p := pod(s, "pets", "web"); p == nil || p.Labels["app"] != "web" || p.Spec.Containers[0].Ports[0].Name != "http" || p.Spec.Containers[0].Image != "" {
		t.Errorf("local pod web (slimmed, with its named port): %+v", p)
	}
	if np := netpol(s, "pets", "web-in"); np == nil || np.Spec.Ingress[0].Ports[0].Port.IntValue() != 8080 || np.Kind != "NetworkPolicy" {
		t.Errorf("network policy web-in: %+v", np)
	}
	if o := other(s, "CiliumNetworkPolicy", "pets", "db-egress"); o == nil || o.GetAPIVersion() != "cilium.io/v2" || len(o.GetManagedFields()) != 0 {
		t.Errorf("CiliumNetworkPolicy db-egress: %+v", o)
	}
	if !slices.ContainsFunc(s.Services, func(o *corev1.Service) bool {
		return o.Namespace == "pets" && o.Name == "web" && o.Spec.ClusterIP != ""
	}) ||
		!slices.ContainsFunc(s.Services, func(o *corev1.Service) bool { return o.Namespace == "default" && o.Name == "kubernetes" }) {
		t.Errorf("services: %v", s.Services)
	}
	if len(s.EndpointSlices) != 1 || s.EndpointSlices[0].Endpoints[0].Addresses[0] != "10.244.1.5" {
		t.Errorf("endpoint slices: %v", s.EndpointSlices)
	}
	gen := s.Generation

	// Changes the snapshot does not carry (a pod's conditions, a custom
	// resource's status) bump nothing and call nothing.
	db.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if db, err = cs.CoreV1().Pods("pets").UpdateStatus(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	cur, err := c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Get(ctx, "db-egress", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(cur.Object, "seen", "status", "note")
	must(c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").UpdateStatus(ctx, cur, metav1.UpdateOptions{}))
	w.quiet("status-only changes", time.Second)

	// A real change bumps the generation once.
	db.Labels["tier"] = "data"
	if _, err = cs.CoreV1().Pods("pets").Update(ctx, db, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = w.until("pod label change", func(u update) bool {
		p := pod(u.snap, "pets", "db")
		return p != nil && p.Labels["tier"] == "data"
	})
	if u.snap.Generation != gen+1 {
		t.Errorf("generation after one change: %d, want %d", u.snap.Generation, gen+1)
	}
	gen = u.snap.Generation

	// An update the policy compiler rejects keeps the last good version
	// in force, says why (kind, namespace/name, field) and records a
	// PolicyRejected Event; the content did not change, so neither does
	// the generation.
	np, err := cs.NetworkingV1().NetworkPolicies("pets").Get(ctx, "web-in", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np.Spec = ingressPort(6666).Spec
	if np, err = cs.NetworkingV1().NetworkPolicies("pets").Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = w.until("rejected update", func(u update) bool { return len(u.errs) > 0 })
	if len(u.errs) != 1 || u.errs[0].File != File || u.errs[0].Object != "NetworkPolicy pets/web-in" ||
		!strings.Contains(u.errs[0].Error(), "api: NetworkPolicy pets/web-in: spec.ingress[0].ports[0].port: 6666 is reserved") {
		t.Errorf("rejection: %v", u.errs)
	}
	if p := netpol(u.snap, "pets", "web-in"); p == nil || p.Spec.Ingress[0].Ports[0].Port.IntValue() != 8080 {
		t.Errorf("the last good version is not the one in force: %+v", p)
	}
	if u.snap.Generation != gen {
		t.Errorf("a rejected update changed the generation: %d, want %d", u.snap.Generation, gen)
	}
	waitEvent(t, cs, "pets", "NetworkPolicy", "web-in", "PolicyRejected", "6666 is reserved in this test; its last good version (generation 1) stays in force")
	// The agent's "applied" verdict is about the version in force, not
	// the rejected one: it must not bury the rejection.
	w.src.Report("NetworkPolicy", "pets", "web-in", nil)

	// Fixing it applies the new version and clears the rejection.
	np.Spec = ingressPort(9090).Spec
	if _, err = cs.NetworkingV1().NetworkPolicies("pets").Update(ctx, np, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = w.until("fixed policy", func(u update) bool {
		p := netpol(u.snap, "pets", "web-in")
		return p != nil && p.Spec.Ingress[0].Ports[0].Port.IntValue() == 9090
	})
	if len(u.errs) != 0 || u.snap.Generation != gen+1 {
		t.Errorf("after fix: errs %v, generation %d, want %d", u.errs, u.snap.Generation, gen+1)
	}
	gen = u.snap.Generation
	for _, e := range events(t, cs, "pets", "NetworkPolicy", "web-in") {
		if e.Reason == "PolicyApplied" && strings.Contains(e.Message, "generation 2") {
			t.Errorf("Report applied the rejected generation: %s", e.Message)
		}
	}

	// Report: PolicyApplied once per generation, PolicyRejected with the
	// agent's reason.
	for range 3 {
		w.src.Report("NetworkPolicy", "pets", "web-in", nil)
	}
	e := waitEvent(t, cs, "pets", "NetworkPolicy", "web-in", "PolicyApplied", "generation 3 in force on node node-a")
	if e.Type != corev1.EventTypeNormal || e.Source.Component != "aegisd" || e.Count != 1 {
		t.Errorf("applied event: type %s, source %+v, count %d", e.Type, e.Source, e.Count)
	}
	// Stopping is no verdict: a canceled regeneration records nothing
	// (Events go out in order, so the one below shows it would be there).
	w.src.Report("NetworkPolicy", "pets", "web-in", fmt.Errorf("regenerate: %w", context.Canceled))
	w.src.Report("CiliumNetworkPolicy", "pets", "db-egress", errors.New("spec.egress[0].toFQDNs: not supported yet"))
	e = waitEvent(t, cs, "pets", "CiliumNetworkPolicy", "db-egress", "PolicyRejected", "rejected by aegis: spec.egress[0].toFQDNs: not supported yet")
	if e.Type != corev1.EventTypeWarning {
		t.Errorf("rejected event type %s", e.Type)
	}
	w.src.Report("NetworkPolicy", "pets", "no-such-policy", nil) // unknown objects are ignored

	for _, e := range events(t, cs, "pets", "NetworkPolicy", "web-in") {
		if strings.Contains(e.Message, "context canceled") {
			t.Errorf("a canceled regeneration was recorded: %s", e.Message)
		}
	}

	// A custom resource the object validator rejects keeps its last good
	// version too.
	cur, err = c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Get(ctx, "db-egress", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(cur.Object, "invalid", "spec", "description")
	must(c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Update(ctx, cur, metav1.UpdateOptions{}))
	u = w.until("rejected CNP", func(u update) bool { return len(u.errs) > 0 })
	if len(u.errs) != 1 || !strings.Contains(u.errs[0].Error(), "api: CiliumNetworkPolicy pets/db-egress: spec.description: invalid in this test") {
		t.Errorf("CNP rejection: %v", u.errs)
	}
	if o := other(u.snap, "CiliumNetworkPolicy", "pets", "db-egress"); o == nil || o.Object["spec"].(map[string]any)["description"] != "db may call web" {
		t.Errorf("CNP last good version not in force: %v", o)
	}

	// Deleting removes, and takes the rejection with it.
	must(nil, c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Delete(ctx, "db-egress", metav1.DeleteOptions{}))
	must(nil, cs.NetworkingV1().NetworkPolicies("pets").Delete(ctx, "web-in", metav1.DeleteOptions{}))
	must(nil, cs.CoreV1().Pods("pets").Delete(ctx, "db", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}))
	u = w.until("deletions", func(u update) bool {
		return other(u.snap, "CiliumNetworkPolicy", "pets", "db-egress") == nil && netpol(u.snap, "pets", "web-in") == nil && pod(u.snap, "pets", "db") == nil
	})
	if len(u.errs) != 0 || u.snap.Generation <= gen {
		t.Errorf("after deletions: errs %v, generation %d (was %d)", u.errs, u.snap.Generation, gen)
	}
	gen = u.snap.Generation

	// A cluster-wide policy, and a pod that terminated: its address may
	// already be another pod's, so it is not delivered.
	must(c.Dynamic.Resource(CiliumClusterwideNetworkPolicies).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
		"metadata": map[string]any{"name": "world-deny"},
		"spec":     map[string]any{"endpointSelector": map[string]any{}, "ingressDeny": []any{map[string]any{"fromEntities": []any{"world"}}}},
	}}, metav1.CreateOptions{}))
	web, err := cs.CoreV1().Pods("pets").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	web.Status.Phase, web.Status.PodIP, web.Status.PodIPs = corev1.PodSucceeded, "10.244.1.5", []corev1.PodIP{{IP: "10.244.1.5"}}
	must(cs.CoreV1().Pods("pets").UpdateStatus(ctx, web, metav1.UpdateOptions{}))
	u = w.until("cluster-wide policy and terminated pod", func(u update) bool {
		p := pod(u.snap, "pets", "web")
		return other(u.snap, "CiliumClusterwideNetworkPolicy", "", "world-deny") != nil && p != nil && p.Status.Phase == corev1.PodSucceeded
	})
	if p := pod(u.snap, "pets", "web"); p.Status.PodIP != "" || len(p.Status.PodIPs) != 0 {
		t.Errorf("terminated pod delivered with its address %s", p.Status.PodIP)
	}
	if u.snap.Generation <= gen {
		t.Errorf("generation did not increase: %d", u.snap.Generation)
	}
	w.src.Report("CiliumClusterwideNetworkPolicy", "", "world-deny", nil)
	waitEvent(t, cs, "default", "CiliumClusterwideNetworkPolicy", "world-deny", "PolicyApplied", "generation 1 in force")
}

func ptr[T any](v T) *T { return &v }

// TestSourceFindsLateCRDs: a cluster may get the Cilium CRDs after aegisd
// starts; the source starts without them and picks them up.
func TestSourceFindsLateCRDs(t *testing.T) {
	c := kube.Start(t, kube.Options{CRDDir: t.TempDir(), Namespaces: []string{"pets"}})
	src, err := New(c.Config, WithCRDPoll(100*time.Millisecond), WithDebounce(20*time.Millisecond),
		WithLogger(slog.New(slog.NewTextHandler(testWriter{t}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{t: t, src: src, ch: make(chan update, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func(s *manifests.Snapshot, errs []manifests.FileError) { w.ch <- update{s, errs} })
	}()
	defer func() { cancel(); <-done }()

	if u := w.until("first snapshot", func(update) bool { return true }); len(u.snap.Others) != 0 {
		t.Fatalf("others without CRDs: %s", describe(u.snap))
	}
	c.InstallCRDs(t, kube.CRDFile("ciliumnetworkpolicies.cilium.io.yaml"))
	if _, err := c.Dynamic.Resource(CiliumNetworkPolicies).Namespace("pets").Create(context.Background(), cnp("late"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	u := w.until("CNP after its CRD", func(u update) bool { return other(u.snap, "CiliumNetworkPolicy", "pets", "db-egress") != nil })
	if u.snap.Generation != 2 {
		t.Errorf("generation %d, want 2", u.snap.Generation)
	}
}
