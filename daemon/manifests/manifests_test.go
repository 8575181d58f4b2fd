package manifests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
)

func write(t testing.TB, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

const nsPets = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: pets\n  labels: {team: a}\n"

const podWeb = `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: pets, labels: {app: web}}
spec:
  containers:
  - name: c
    image: x
    ports: [{name: http, containerPort: 8080}]
status: {podIP: 10.244.2.7}
`

const npDeny = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: pets}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`

func TestParseErrorsNameFileObjectField(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"unknown field deep", strings.Replace(npDeny, "policyTypes", "policyTypo", 1), "f.yaml: NetworkPolicy pets/deny: spec.policyTypo: unknown field"},
		{"unknown field in list", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec:\n  podSelector: {}\n  ingress:\n  - fromm: []\n", "NetworkPolicy x: spec.ingress[0].fromm: unknown field"},
		{"wrong type", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: \"abc\"}]}]\n", "Pod p: spec.containers.ports.containerPort: wrong type"},
		{"bad label", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1, labels: {\"bad key!\": v}}\n", "Namespace ns1: metadata.labels[bad key!]: invalid key"},
		{"bad pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\nstatus: {podIP: 10.0.0.300}\n", "Pod p: status.podIP: invalid IP"},
		{"bad port", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: x, ports: [{containerPort: 70000}]}]\n", "spec.containers[0].ports[0].containerPort: 70000: must be 1-65535"},
		{"unknown kind", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n", "unsupported kind v1 Secret"},
		{"no kind", "metadata: {name: s}\n", "document 1: apiVersion and kind are required"},
		{"bad yaml", "a: [\n", "invalid YAML"},
		{"no name", "apiVersion: v1\nkind: Namespace\nmetadata: {}\n", "metadata.name: required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := parseFile("f.yaml", []byte(tc.doc), validators{})
			if len(errs) == 0 {
				t.Fatal("no error")
			}
			if got := errs[0].Error(); !strings.Contains(got, tc.want) {
				t.Errorf("error %q does not contain %q", got, tc.want)
			}
		})
	}
}

func TestMultiDocListAndDefaults(t *testing.T) {
	list := "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: dev}\n"
	cnp := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: pets}\nspec: {}\n"
	objs, errs := parseFile("f.yaml", []byte(nsPets+"---\n# comment only\n---\n"+podWeb+"---\n"+list+"---\n"+cnp+"---\n"+strings.Replace(npDeny, "namespace: pets", "", 1)), validators{})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if len(objs.Namespaces) != 2 || len(objs.Pods) != 1 || len(objs.NetworkPolicies) != 1 || len(objs.Others) != 1 {
		t.Fatalf("objects: %d ns, %d pods, %d nps, %d others", len(objs.Namespaces), len(objs.Pods), len(objs.NetworkPolicies), len(objs.Others))
	}
	if objs.NetworkPolicies[0].Namespace != "default" {
		t.Errorf("namespace not defaulted: %q", objs.NetworkPolicies[0].Namespace)
	}
}

func TestValidatorIsUsed(t *testing.T) {
	v := func(np *networkingv1.NetworkPolicy) error { return errors.New("spec.ingress[0]: nope") }
	_, errs := parseFile("f.yaml", []byte(npDeny), validators{networkPolicy: v})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "NetworkPolicy pets/deny: spec.ingress[0]: nope") {
		t.Fatalf("errs = %v", errs)
	}
}

func TestLastGoodPerFileDuplicatesAndGeneration(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", nsPets)
	write(t, dir, "b.yaml", npDeny)
	w := NewWatcher(dir)
	snap, errs, changed, err := w.scan()
	if err != nil || len(errs) != 0 || !changed || snap.Generation != 1 || len(snap.NetworkPolicies) != 1 {
		t.Fatalf("first scan: %+v %v %v %v", snap, errs, changed, err)
	}
	// Rescanning unchanged files changes nothing.
	if snap, _, changed, _ = w.scan(); changed || snap.Generation != 1 {
		t.Fatalf("unchanged rescan bumped the generation to %d", snap.Generation)
	}
	// A broken edit keeps the last good policy and reports the error.
	write(t, dir, "b.yaml", npDeny+"  bogus: 1\n")
	snap, errs, changed, _ = w.scan()
	if changed || len(snap.NetworkPolicies) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "spec.bogus: unknown field") {
		t.Fatalf("broken edit: changed=%v nps=%d errs=%v", changed, len(snap.NetworkPolicies), errs)
	}
	// A duplicate in a later file is rejected, the first wins.
	write(t, dir, "c.yaml", npDeny)
	snap, errs, _, _ = w.scan()
	if len(snap.NetworkPolicies) != 1 || len(errs) != 2 || !strings.Contains(errs[1].Error(), "c.yaml: NetworkPolicy pets/deny: duplicate of the object in b.yaml") {
		t.Fatalf("duplicate: nps=%d errs=%v", len(snap.NetworkPolicies), errs)
	}
	// Deleting files removes their objects.
	os.Remove(filepath.Join(dir, "b.yaml"))
	os.Remove(filepath.Join(dir, "c.yaml"))
	snap, errs, changed, _ = w.scan()
	if !changed || len(snap.NetworkPolicies) != 0 || len(errs) != 0 || snap.Generation != 2 {
		t.Fatalf("after delete: changed=%v nps=%d errs=%v gen=%d", changed, len(snap.NetworkPolicies), errs, snap.Generation)
	}
	// Editor temporaries and hidden files are ignored.
	write(t, dir, ".b.yaml.swp", "garbage")
	write(t, dir, "b.yaml~", "garbage")
	if _, errs, changed, _ = w.scan(); changed || len(errs) != 0 {
		t.Fatalf("temporaries were read: %v", errs)
	}
}

func TestWatcherFollowsChanges(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", nsPets)
	w := NewWatcher(dir, WithRescan(time.Hour))
	type update struct {
		snap *Snapshot
		errs []FileError
	}
	ch := make(chan update, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(s *Snapshot, e []FileError) { ch <- update{s, e} }) }()
	defer func() { cancel(); <-done }()
	next := func() update {
		t.Helper()
		select {
		case u := <-ch:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no update within 5s")
		}
		return update{}
	}
	if u := next(); len(u.snap.Namespaces) != 1 {
		t.Fatalf("initial: %+v", u.snap)
	}
	write(t, dir, "b.yaml", npDeny)
	if u := next(); len(u.snap.NetworkPolicies) != 1 || u.snap.Generation != 2 {
		t.Fatalf("after add: %+v", u.snap)
	}
	write(t, dir, "b.yaml", "not: [valid")
	if u := next(); len(u.snap.NetworkPolicies) != 1 || len(u.errs) != 1 {
		t.Fatalf("after bad edit: nps=%d errs=%v", len(u.snap.NetworkPolicies), u.errs)
	}
	os.Remove(filepath.Join(dir, "b.yaml"))
	if u := next(); len(u.snap.NetworkPolicies) != 0 || len(u.errs) != 0 {
		t.Fatalf("after remove: %+v %v", u.snap, u.errs)
	}
}

func TestLargeFile(t *testing.T) {
	var b strings.Builder
	for i := range 10000 {
		b.WriteString(strings.Replace(npDeny, "name: deny", "name: deny-"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+"-"+itoa(i), 1))
		b.WriteString("---\n")
	}
	start := time.Now()
	objs, errs := parseFile("big.yaml", []byte(b.String()), validators{})
	if len(errs) != 0 || len(objs.NetworkPolicies) != 10000 {
		t.Fatalf("%d policies, errs %v", len(objs.NetworkPolicies), errs[:min(3, len(errs))])
	}
	t.Logf("10,000 policies (%d bytes) parsed in %s", b.Len(), time.Since(start))
}

func itoa(i int) string {
	var s []byte
	for {
		s = append([]byte{byte('0' + i%10)}, s...)
		i /= 10
		if i == 0 {
			return string(s)
		}
	}
}

// FuzzParse: no document makes the parser panic, and whatever it accepts
// has a name.
func FuzzParse(f *testing.F) {
	for _, s := range []string{nsPets, podWeb, npDeny, "apiVersion: v1\nkind: List\nitems: [1, {}]\n", "---\n---\n", "a: &a [*a]\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, _ := parseFile("f.yaml", data, validators{})
		for _, np := range objs.NetworkPolicies {
			if np.Name == "" || np.Namespace == "" {
				t.Fatalf("accepted a policy without name or namespace: %+v", np.ObjectMeta)
			}
		}
	})
}
