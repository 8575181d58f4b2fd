package flowlog

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/cilium/api/v1/flow"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/aegis-cni/aegis/daemon/observe"
)

func cnl(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.UnmarshalJSON(js); err != nil {
		t.Fatal(err)
	}
	return u
}

const petsDropped = `apiVersion: acn.azure.com/v1alpha1
kind: ContainerNetworkLog
metadata: {name: pets}
spec:
  includefilters:
  - name: to-pets
    to: {namespacedPod: [pets/]}
    protocol: [tcp]
    verdict: [dropped]
  - name: from-frontend
    from: {labelSelector: {matchLabels: {app: store-front}}}
`

func flowOf(verdict flow.Verdict, srcNS, srcPod, dstNS, dstPod string, labels ...string) *flow.Flow {
	return &flow.Flow{
		Verdict:     verdict,
		IP:          &flow.IP{Source: "10.244.1.2", Destination: "10.244.1.3"},
		Source:      &flow.Endpoint{Namespace: srcNS, PodName: srcPod, Labels: labels},
		Destination: &flow.Endpoint{Namespace: dstNS, PodName: dstPod},
		L4:          &flow.Layer4{Protocol: &flow.Layer4_TCP{TCP: &flow.TCP{DestinationPort: 8080}}},
	}
}

func TestSelection(t *testing.T) {
	e := New(filepath.Join(t.TempDir(), "events.log"), 1<<20, 1, "n")
	sts := e.Configure([]*unstructured.Unstructured{cnl(t, petsDropped), cnl(t, strings.Replace(petsDropped, "[tcp]", "[sctp]", 1)), cnl(t, strings.Replace(petsDropped, "[dropped]", "[denied]", 1))})
	if sts[0].State != "CONFIGURED" || sts[1].State != "FAILED" || !strings.Contains(sts[1].Reason, `spec.includefilters[0].protocol[0]: "sctp" is not tcp, udp or dns`) ||
		sts[2].State != "FAILED" || !strings.Contains(sts[2].Reason, "verdict[0]") {
		t.Fatalf("statuses: %+v", sts)
	}
	for _, tc := range []struct {
		f    *flow.Flow
		want bool
	}{
		{flowOf(flow.Verdict_DROPPED, "", "", "pets", "order-service"), true},
		{flowOf(flow.Verdict_FORWARDED, "", "", "pets", "order-service"), false},
		{flowOf(flow.Verdict_DROPPED, "", "", "default", "x"), false},
		{flowOf(flow.Verdict_FORWARDED, "pets", "store-front", "default", "x", "k8s:app=store-front"), true},
	} {
		if got := e.selected(tc.f); got != tc.want {
			t.Errorf("%v: selected %v, want %v", tc.f, got, tc.want)
		}
	}
}

// Rotation keeps every line in exactly one file while backups suffice.
func TestRotationLosesNoLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	r := newRotatingFile(path, 1000, 50)
	for i := range 500 {
		r.writeLine([]byte(fmt.Sprintf("{\"n\":%d}\n", i)))
	}
	r.close()
	seen := map[string]bool{}
	files, _ := filepath.Glob(path + "*")
	if len(files) < 5 {
		t.Fatalf("only %d files: no rotation", len(files))
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if seen[sc.Text()] {
				t.Errorf("line %s twice", sc.Text())
			}
			seen[sc.Text()] = true
		}
		fh.Close()
		if st, _ := os.Stat(f); st.Size() > 1000 {
			t.Errorf("%s is %d bytes, over the limit", f, st.Size())
		}
	}
	if len(seen) != 500 {
		t.Errorf("%d distinct lines, want 500", len(seen))
	}
	if w, l, _ := r.stats(); w != 500 || l != 0 {
		t.Errorf("written %d lost %d", w, l)
	}
}

// An unwritable directory loses lines, counts them, and writing resumes
// once the directory is usable again.
func TestWriteFailureCountedAndResumed(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "log")
	os.WriteFile(blocker, []byte("a file where the directory should be"), 0o644)
	r := newRotatingFile(filepath.Join(blocker, "events.log"), 1<<20, 1)
	r.writeLine([]byte("{}\n"))
	if _, lost, err := r.stats(); lost != 1 || err == nil {
		t.Fatalf("lost %d, err %v", lost, err)
	}
	os.Remove(blocker)
	r.writeLine([]byte("{}\n"))
	if w, lost, err := r.stats(); w != 1 || lost != 1 || err != nil {
		t.Fatalf("after recovery: written %d lost %d err %v", w, lost, err)
	}
}

// A full disk loses lines (counted) and writing resumes when space
// returns: a 64 KiB tmpfs stands in for the disk.
func TestFullDiskCountedAndResumed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	filler := filepath.Join(dir, "filler")
	os.WriteFile(filler, make([]byte, 60<<10), 0o644)
	r := newRotatingFile(filepath.Join(dir, "events.log"), 1<<20, 1)
	line := []byte(strings.Repeat("x", 1000) + "\n")
	for range 20 {
		r.writeLine(line)
	}
	_, lost, err := r.stats()
	if lost == 0 || err == nil {
		t.Fatalf("a full disk lost nothing (lost %d, err %v)", lost, err)
	}
	os.Remove(filler)
	for range 5 {
		r.writeLine(line)
	}
	w2, lost2, err := r.stats()
	if err != nil || lost2 != lost || w2 == 0 {
		t.Fatalf("after space returned: written %d lost %d err %v", w2, lost2, err)
	}
	r.close()
	data, _ := os.ReadFile(filepath.Join(dir, "events.log"))
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if len(l) != 1000 {
			t.Fatalf("a partial line survived in the log: %d bytes", len(l))
		}
	}
}

// signalSource says when the exporter started following.
type signalSource struct {
	*observe.Observer
	following chan struct{}
}

func (s signalSource) Follow() *observe.Cursor {
	defer close(s.following)
	return s.Observer.Follow()
}

// TestRunWritesSelected: the exporter follows the observer and writes the
// flows its ContainerNetworkLogs select, in order, and nothing while none
// selects anything.
func TestRunWritesSelected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.log")
	e := New(path, 1<<20, 1, "n")
	obs := observe.New(nil, nil, 16, slog.New(slog.DiscardHandler))
	src := signalSource{obs, make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx, src); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-src.following
	obs.Add(flowOf(flow.Verdict_DROPPED, "", "", "pets", "unselected"))
	e.Configure([]*unstructured.Unstructured{cnl(t, petsDropped)})
	for _, pod := range []string{"order-service", "x", "product-service"} {
		obs.Add(flowOf(flow.Verdict_DROPPED, "", "", map[bool]string{true: "pets", false: "default"}[pod != "x"], pod))
	}
	var lines []string
	for deadline := time.Now().Add(5 * time.Second); len(lines) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(path)
		lines = strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(b) == 0 {
			lines = nil
		}
	}
	if len(lines) != 2 || !strings.Contains(lines[0], `"order-service"`) || !strings.Contains(lines[1], `"product-service"`) {
		t.Fatalf("log lines: %q", lines)
	}
}
