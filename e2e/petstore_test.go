package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/aegis-cni/aegis/e2e/kube"
	"github.com/aegis-cni/aegis/e2e/netns"
	"github.com/aegis-cni/aegis/e2e/node"
	"github.com/cilium/cilium/api/v1/flow"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// The AKS workshop's pet store: store-front 8080, order-service 3000,
// product-service 3002, rabbitmq 5672/15672 in namespace pets, kube-dns in
// kube-system, a user on the internet (192.0.2.10) reaching store-front
// through the load balancer, and an internet service (203.0.113.10:443)
// order-service calls.
//
// The policies are the workshop's own files (testdata/workshop, copied
// from shared/fixtures/workshop), applied to namespace pets as `kubectl
// apply -n pets -f` applies them: one object at a time, an object of the
// same name replaced. TestPetStore feeds them through the manifest
// directory, TestPetStoreKubeAPI through a real kube-apiserver. `make demo`
// runs TestPetStore and prints its narration.

// workshopObjects reads a workshop file and returns its objects, each with
// the namespace kubectl -n pets would give it, by name.
func workshopObjects(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "workshop", file))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, doc := range strings.Split(string(b), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct {
			Metadata struct{ Name string } `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil || meta.Metadata.Name == "" {
			t.Fatalf("%s: object without a name (%v)", file, err)
		}
		out[meta.Metadata.Name] = strings.Replace(doc, "metadata:\n", "metadata:\n  namespace: pets\n", 1)
	}
	return out
}

// policySource applies workshop objects the way one source takes them.
type policySource interface {
	// apply creates or replaces each object and waits until the daemon
	// applied the result.
	apply(t *testing.T, objects map[string]string)
	// remove deletes the objects.
	remove(t *testing.T, objects map[string]string)
	name() string
}

// dirSource keeps one file per object in the manifest directory, so
// replacing an object is rewriting its file.
type dirSource struct{ n *node.Node }

func (d dirSource) name() string { return "the manifest directory" }

func (d dirSource) apply(t *testing.T, objects map[string]string) {
	for _, name := range slices.Sorted(maps.Keys(objects)) {
		d.n.Apply("cnp-"+name+".yaml", objects[name])
	}
}

func (d dirSource) remove(t *testing.T, objects map[string]string) {
	for _, name := range slices.Sorted(maps.Keys(objects)) {
		d.n.Remove("cnp-" + name + ".yaml")
	}
}

// apiSource creates and updates CiliumNetworkPolicies in the API server.
type apiSource struct {
	n  *node.Node
	kc *kube.Cluster
}

var cnpGVR = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}

func (a apiSource) name() string { return "the Kubernetes API" }

func (a apiSource) apply(t *testing.T, objects map[string]string) {
	ctx := context.Background()
	res := a.kc.Dynamic.Resource(cnpGVR).Namespace("pets")
	for _, name := range slices.Sorted(maps.Keys(objects)) {
		js, err := yaml.YAMLToJSON([]byte(objects[name]))
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatal(err)
		}
		a.n.Change(func() error {
			old, err := res.Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				_, err = res.Create(ctx, u, metav1.CreateOptions{})
				return err
			}
			if err != nil {
				return err
			}
			u.SetResourceVersion(old.GetResourceVersion())
			_, err = res.Update(ctx, u, metav1.UpdateOptions{})
			return err
		})
	}
}

func (a apiSource) remove(t *testing.T, objects map[string]string) {
	res := a.kc.Dynamic.Resource(cnpGVR).Namespace("pets")
	for _, name := range slices.Sorted(maps.Keys(objects)) {
		a.n.Change(func() error { return res.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
}

// narrator prints to stdout when AEGIS_DEMO is set (make demo), to the
// test log otherwise.
type narrator struct{ t *testing.T }

func (n narrator) say(format string, args ...any) {
	if os.Getenv("AEGIS_DEMO") != "" {
		fmt.Printf(format+"\n", args...)
		return
	}
	n.t.Logf(format, args...)
}

type flowCheck struct {
	from    string
	ns      *netns.NS
	to      string
	addr    string
	allowed bool
}

func (n narrator) check(t *testing.T, checks []flowCheck) {
	t.Helper()
	for _, c := range checks {
		err := c.ns.Probe("tcp", c.addr, 800*time.Millisecond)
		got := "allowed"
		if err != nil {
			got = "blocked"
		}
		want := "blocked"
		if c.allowed {
			want = "allowed"
		}
		mark := "ok "
		if got != want {
			mark = "BAD"
			t.Errorf("%s -> %s (%s): %s, want %s (%v)", c.from, c.to, c.addr, got, want, err)
		}
		n.say("  [%s] %-16s -> %-28s %s", mark, c.from, c.to+" "+c.addr, strings.ToUpper(got))
	}
}

var petStorePods = map[string]string{"store-front": "pets", "order-service": "pets", "product-service": "pets", "rabbitmq": "pets", "kube-dns": "kube-system"}

func petStoreLabels(name string) map[string]string {
	if name == "kube-dns" {
		return map[string]string{"k8s-app": "kube-dns"}
	}
	return map[string]string{"app": name}
}

func TestPetStore(t *testing.T) {
	n := node.New(t, node.Options{})
	n.Apply("00-namespaces.yaml", node.NamespaceManifest("pets", nil)+"---\n"+node.NamespaceManifest("kube-system", nil))
	var manifests []string
	for _, name := range slices.Sorted(maps.Keys(petStorePods)) {
		manifests = append(manifests, node.PodManifest(petStorePods[name], name, petStoreLabels(name)))
	}
	n.Apply("01-pods.yaml", strings.Join(manifests, "---\n"))
	n.StartDaemon()
	runPetStore(t, n, dirSource{n})
}

func TestPetStoreKubeAPI(t *testing.T) {
	n := node.New(t, node.Options{})
	kc := kube.Start(t, kube.Options{NetNS: n.NS.Path, Namespaces: []string{"pets", "kube-system"}})
	ctx := context.Background()
	for _, name := range slices.Sorted(maps.Keys(petStorePods)) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: petStorePods[name], Labels: petStoreLabels(name)},
			Spec: corev1.PodSpec{NodeName: "e2e-node", Containers: []corev1.Container{{Name: "c", Image: "scratch"}}}}
		if _, err := kc.Client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	n.Kubeconfig = kc.Kubeconfig
	n.StartDaemon()
	runPetStore(t, n, apiSource{n, kc})

	// kubectl describe says the chaos policy's replacement is in force.
	deadline := time.Now().Add(10 * time.Second)
	var reasons []string
	for time.Now().Before(deadline) {
		evs, err := kc.Client.CoreV1().Events("pets").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=allow-order-service-traffic"})
		if err != nil {
			t.Fatal(err)
		}
		reasons = reasons[:0]
		for _, e := range evs.Items {
			reasons = append(reasons, e.Reason+": "+e.Message)
		}
		if strings.Contains(strings.Join(reasons, ","), "PolicyApplied") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(strings.Join(reasons, ","), "PolicyApplied") {
		t.Errorf("no PolicyApplied event on allow-order-service-traffic: %v", reasons)
	}

	// kubectl describe says why a policy is rejected, or what of it is
	// not enforced.
	res := kc.Dynamic.Resource(cnpGVR).Namespace("pets")
	for _, tc := range []struct{ name, spec, reason, says string }{
		{"bad-cidr", `{endpointSelector: {}, egress: [{toCIDR: [10.0.0.0/33]}]}`, "PolicyRejected", "spec.egress[0].toCIDR[0]: invalid CIDR"},
		{"partial", `{endpointSelector: {matchLabels: {app: rabbitmq}}, egress: [{toServices: [{k8sService: {serviceName: x}}]}]}`, "PolicyPartiallyApplied", "spec.egress[0].toServices"},
	} {
		js, err := yaml.YAMLToJSON([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: " + tc.name + ", namespace: pets}\nspec: " + tc.spec))
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatal(err)
		}
		if _, err := res.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		var got []string
		for time.Now().Before(deadline) {
			evs, err := kc.Client.CoreV1().Events("pets").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + tc.name})
			if err != nil {
				t.Fatal(err)
			}
			got = got[:0]
			for _, e := range evs.Items {
				got = append(got, e.Reason+": "+e.Message)
			}
			if strings.Contains(strings.Join(got, "|"), tc.reason+": ") && strings.Contains(strings.Join(got, "|"), tc.says) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if j := strings.Join(got, "|"); !strings.Contains(j, tc.reason+": ") || !strings.Contains(j, tc.says) {
			t.Errorf("%s: events %q, want %s saying %q", tc.name, got, tc.reason, tc.says)
		}
	}

	// kubectl describe containernetworklog says whether each one is in
	// force, as on ACNS; a broken one does not disturb the other.
	cnls := kc.Dynamic.Resource(cnlGVR)
	for _, tc := range []struct{ name, spec, state, says string }{
		{"pets-flows", `{includefilters: [{name: pets, from: {namespacedPod: [pets/]}, protocol: [tcp, dns], verdict: [forwarded, dropped]}]}`, "CONFIGURED", ""},
		{"bad-protocol", `{includefilters: [{name: x, protocol: [sctp]}]}`, "FAILED", "sctp"},
	} {
		js, err := yaml.YAMLToJSON([]byte("apiVersion: acn.azure.com/v1alpha1\nkind: ContainerNetworkLog\nmetadata: {name: " + tc.name + "}\nspec: " + tc.spec))
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatal(err)
		}
		if _, err := cnls.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ name, state, says string }{{"pets-flows", "CONFIGURED", ""}, {"bad-protocol", "FAILED", "sctp"}} {
		var state, reason, stamp string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			u, err := cnls.Get(ctx, tc.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			state, _, _ = unstructured.NestedString(u.Object, "status", "state")
			reason, _, _ = unstructured.NestedString(u.Object, "status", "error")
			stamp, _, _ = unstructured.NestedString(u.Object, "status", "timestamp")
			if state == tc.state {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if state != tc.state || !strings.Contains(reason, tc.says) || (tc.says == "" && reason != "") {
			t.Errorf("ContainerNetworkLog %s: status state %q error %q, want %s with %q", tc.name, state, reason, tc.state, tc.says)
		}
		if _, err := time.Parse(time.RFC3339, stamp); err != nil {
			t.Errorf("ContainerNetworkLog %s: status timestamp %q: %v", tc.name, stamp, err)
		}
	}
}

var cnlGVR = schema.GroupVersionResource{Group: "acn.azure.com", Version: "v1alpha1", Resource: "containernetworklogs"}

// runPetStore is the workshop's first half on a node whose daemon runs and
// knows the pet-store pods.
func runPetStore(t *testing.T, n *node.Node, src policySource) {
	say := narrator{t}
	say.say("== Aegis demo: a node built from network namespaces, pods wired by ptp + aegis-ipam + aegis-cni; policy from %s", src.name())
	say.say("aegisd is running (bpffs %s); creating the pet-store pods through the CNI chain", n.BPFRoot)
	p := map[string]*node.Pod{}
	for _, name := range []string{"store-front", "order-service", "product-service", "rabbitmq", "kube-dns"} {
		p[name] = n.NewPod(petStorePods[name], name, nil)
		say.say("  pod %-16s %s", petStorePods[name]+"/"+name, p[name].IP)
	}
	serve := map[string][]int{"store-front": {8080}, "order-service": {3000}, "product-service": {3002}, "rabbitmq": {5672, 15672}}
	for name, ports := range serve {
		for _, port := range ports {
			p[name].NS.Serve(t, "tcp", p[name].Addr(port), name+":")
		}
	}
	user := n.AddOutside(t, "192.0.2.10", "203.0.113.10")
	user.NS.Serve(t, "tcp", "203.0.113.10:443", "internet:")
	say.say("  user on the internet 192.0.2.10, an internet service at 203.0.113.10:443")

	say.say("\n== Before any policy: every flow passes")
	say.check(t, []flowCheck{
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", true},
		{"order-service", p["order-service"].NS, "product-service", p["product-service"].Addr(3002), true},
		{"rabbitmq", p["rabbitmq"].NS, "internet", "203.0.113.10:443", true},
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), true},
	})

	base := workshopObjects(t, "acns-network-policy.yaml")
	src.apply(t, base)
	say.say("\n== $ kubectl apply -n pets -f acns-network-policy.yaml: only the pet store's own flows")
	say.check(t, []flowCheck{
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), true},
		{"store-front", p["store-front"].NS, "order-service", p["order-service"].Addr(3000), true},
		{"store-front", p["store-front"].NS, "product-service", p["product-service"].Addr(3002), true},
		{"order-service", p["order-service"].NS, "rabbitmq", p["rabbitmq"].Addr(5672), true},
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", false},
		{"order-service", p["order-service"].NS, "product-service", p["product-service"].Addr(3002), false},
		{"user", user.NS, "order-service", p["order-service"].Addr(3000), false},
		{"user", user.NS, "rabbitmq", p["rabbitmq"].Addr(5672), false},
		{"product-service", p["product-service"].NS, "rabbitmq", p["rabbitmq"].Addr(15672), false},
		{"store-front", p["store-front"].NS, "internet", "203.0.113.10:443", false},
	})

	if os.Getenv("AEGIS_DEMO") != "" {
		for _, args := range [][]string{{"endpoint", "list"}, {"policy", "get", "--pod", "pets/order-service"},
			{"policy", "trace", "--src", "pets/order-service", "--dst", "203.0.113.10", "--port", "443"}, {"bpf", "counters"}} {
			out, err := n.CLI(args...)
			if err != nil {
				t.Errorf("aegis %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			say.say("\n$ aegis %s\n%s", strings.Join(args, " "), strings.TrimRight(out, "\n"))
		}
	}

	src.apply(t, workshopObjects(t, "acns-network-policy-chaos.yaml"))
	say.say("\n== $ kubectl apply -n pets -f acns-network-policy-chaos.yaml: all ingress to store-front is dropped")
	say.check(t, []flowCheck{
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), false},
		{"order-service", p["order-service"].NS, "store-front", p["store-front"].Addr(8080), false},
		{"store-front", p["store-front"].NS, "order-service", p["order-service"].Addr(3000), true},
	})
	checkChaosDrop(t, n)
	if os.Getenv("AEGIS_DEMO") != "" {
		out, err := n.CLI("observe", "--verdict", "DROPPED", "--to-pod", "pets/store-front", "--last", "3")
		if err != nil {
			t.Errorf("aegis observe: %v\n%s", err, out)
		}
		say.say("\n$ aegis observe --verdict DROPPED --to-pod pets/store-front --last 3\n%s", strings.TrimRight(out, "\n"))
	}
	out, err := n.CLI("policy", "trace", "--src", "192.0.2.10", "--dst", "pets/store-front", "--port", "8080")
	if err != nil || !strings.Contains(out, "DROPPED") {
		t.Errorf("policy trace after chaos: %v\n%s", err, out)
	}
	say.say("\n$ aegis policy trace --src 192.0.2.10 --dst pets/store-front --port 8080\n%s", strings.TrimRight(out, "\n"))

	src.apply(t, workshopObjects(t, "acns-network-policy-allow-store-front-traffic.yaml"))
	say.say("\n== $ kubectl apply -n pets -f acns-network-policy-allow-store-front-traffic.yaml: repaired")
	say.check(t, []flowCheck{
		{"user", user.NS, "store-front", p["store-front"].Addr(8080), true},
		{"store-front", p["store-front"].NS, "order-service", p["order-service"].Addr(3000), true},
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", false},
	})

	src.remove(t, base)
	say.say("\n== Policies deleted: traffic flows again")
	say.check(t, []flowCheck{
		{"order-service", p["order-service"].NS, "internet", "203.0.113.10:443", true},
		{"order-service", p["order-service"].NS, "product-service", p["product-service"].Addr(3002), true},
	})
}

// checkChaosDrop: `aegis observe --verdict DROPPED` shows the user's
// connection to store-front:8080 as DROPPED, POLICY_DENIED, INGRESS, with
// the chaos policy named (its default deny decided, no rule of it).
func checkChaosDrop(t *testing.T, n *node.Node) {
	t.Helper()
	var last string
	deadline := time.Now().Add(3 * time.Second) // events are read every 50 ms
	for time.Now().Before(deadline) {
		out, err := n.CLI("observe", "-o", "json", "--verdict", "DROPPED", "--to-pod", "pets/store-front", "--from-ip", "192.0.2.10", "--last", "20")
		if err != nil {
			t.Fatalf("aegis observe: %v\n%s", err, out)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var f flow.Flow
			if err := protojson.Unmarshal([]byte(line), &f); err != nil {
				t.Fatalf("decode %q: %v", line, err)
			}
			last = line
			by := f.GetIngressDeniedBy()
			if f.GetDropReasonDesc() == flow.DropReason_POLICY_DENIED && f.GetTrafficDirection() == flow.TrafficDirection_INGRESS &&
				f.GetL4().GetTCP().GetDestinationPort() == 8080 && len(by) == 1 &&
				by[0].GetName() == "allow-store-front-traffic" && by[0].GetNamespace() == "pets" && by[0].GetKind() == "CiliumNetworkPolicy" {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no DROPPED flow 192.0.2.10 -> pets/store-front:8080 naming allow-store-front-traffic; last: %s", last)
}
