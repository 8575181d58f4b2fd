package manifests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Snapshot is the desired cluster state read from the directory.
type Snapshot struct {
	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	NetworkPolicies []*networkingv1.NetworkPolicy
	// Services and EndpointSlices let the datapath judge a ClusterIP by the
	// pods behind it.
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	// Others are kinds later features read (CiliumNetworkPolicy,
	// CiliumClusterwideNetworkPolicy, ContainerNetworkLog), kept raw.
	Others []*unstructured.Unstructured
	// Generation increases with every change of content.
	Generation uint64
}

// Option configures Load and NewWatcher.
type Option func(*Watcher)

// WithNetworkPolicyValidator validates NetworkPolicies with the policy
// compiler's own rules, so what the source accepts always compiles.
func WithNetworkPolicyValidator(v func(*networkingv1.NetworkPolicy) error) Option {
	return func(w *Watcher) { w.validate.networkPolicy = v }
}

// WithObjectValidator validates the kinds kept raw (CiliumNetworkPolicy and
// the like); an object it rejects is reported and its file keeps its last
// good content.
func WithObjectValidator(v func(*unstructured.Unstructured) error) Option {
	return func(w *Watcher) { w.validate.other = v }
}

// WithRescan sets the safety-net rescan period (default 10s).
func WithRescan(d time.Duration) Option { return func(w *Watcher) { w.rescan = d } }

// fileState is what the watcher remembers of one file.
type fileState struct {
	sum  [32]byte
	good *objects // last content that parsed and validated in full
	errs []FileError
}

// Watcher reads the directory and follows its changes.
type Watcher struct {
	dir      string
	validate validators
	rescan   time.Duration
	debounce time.Duration
	files    map[string]*fileState
	sum      [32]byte
	gen      uint64
}

// NewWatcher returns a watcher of dir.
func NewWatcher(dir string, opts ...Option) *Watcher {
	w := &Watcher{dir: dir, rescan: 10 * time.Second, debounce: 20 * time.Millisecond, files: map[string]*fileState{}}
	for _, o := range opts {
		o(w)
	}
	return w
}

// Load reads the directory once.
func Load(dir string, opts ...Option) (*Snapshot, []FileError, error) {
	w := NewWatcher(dir, opts...)
	snap, errs, _, err := w.scan()
	return snap, errs, err
}

// Run reads the directory, then calls apply after every settled change
// (fsnotify events debounced by 20 ms: a write caught half-way only makes
// its file fall back to its last good content until the next event; plus a
// periodic rescan for missed events),
// until ctx ends. apply receives the full merged snapshot and the current
// rejections; it is called when either changed.
func (w *Watcher) Run(ctx context.Context, apply func(*Snapshot, []FileError)) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", w.dir, err)
	}
	defer fw.Close()
	if err := fw.Add(w.dir); err != nil {
		return fmt.Errorf("watch %s: %w", w.dir, err)
	}
	var lastErrs string
	emit := func(first bool) error {
		snap, errs, changed, err := w.scan()
		if err != nil {
			return err
		}
		errText := fmt.Sprint(errs)
		if first || changed || errText != lastErrs {
			lastErrs = errText
			apply(snap, errs)
		}
		return nil
	}
	if err := emit(true); err != nil {
		return err
	}
	rescan := time.NewTicker(w.rescan)
	defer rescan.Stop()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			if relevant(filepath.Base(ev.Name)) {
				settle = time.After(w.debounce)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			// Overflow and the like: the rescan below catches up.
			_ = err
			settle = time.After(w.debounce)
		case <-settle:
			settle = nil
			if err := emit(false); err != nil {
				return err
			}
		case <-rescan.C:
			if err := emit(false); err != nil {
				return err
			}
		}
	}
}

// relevant says whether a file name is a manifest (not hidden, not an
// editor's temporary file).
func relevant(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.HasSuffix(name, ".swp") {
		return false
	}
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// maxFileSize bounds what one manifest may weigh.
const maxFileSize = 64 << 20

// scan reads every file (re-parsing only those whose content changed),
// merges them in lexical order and reports whether the merged content
// changed.
func (w *Watcher) scan() (*Snapshot, []FileError, bool, error) {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return nil, nil, false, fmt.Errorf("read manifest directory %s: %w", w.dir, err)
	}
	seen := map[string]bool{}
	var names []string
	for _, e := range entries {
		if e.IsDir() || !relevant(e.Name()) {
			continue
		}
		names = append(names, e.Name())
		seen[e.Name()] = true
	}
	slices.Sort(names)
	for name := range w.files {
		if !seen[name] {
			delete(w.files, name) // a deleted file takes its objects with it
		}
	}
	for _, name := range names {
		w.readFile(name)
	}

	var merged objects
	var errs []FileError
	keys := map[string]string{}
	for _, name := range names {
		st := w.files[name]
		errs = append(errs, st.errs...)
		if st.good == nil {
			continue
		}
		add := func(kind, ns, objName string) bool {
			k := kind + " " + ns + "/" + objName
			if first, dup := keys[k]; dup {
				errs = append(errs, FileError{File: name, Object: strings.TrimPrefix(kind+" "+strings.TrimPrefix(ns+"/"+objName, "/"), " "), Err: fmt.Errorf("duplicate of the object in %s (the first wins)", first)})
				return false
			}
			keys[k] = name
			return true
		}
		for _, o := range st.good.Namespaces {
			if add("Namespace", "", o.Name) {
				merged.Namespaces = append(merged.Namespaces, o)
			}
		}
		for _, o := range st.good.Pods {
			if add("Pod", o.Namespace, o.Name) {
				merged.Pods = append(merged.Pods, o)
			}
		}
		for _, o := range st.good.NetworkPolicies {
			if add("NetworkPolicy", o.Namespace, o.Name) {
				merged.NetworkPolicies = append(merged.NetworkPolicies, o)
			}
		}
		for _, o := range st.good.Services {
			if add("Service", o.Namespace, o.Name) {
				merged.Services = append(merged.Services, o)
			}
		}
		for _, o := range st.good.EndpointSlices {
			if add("EndpointSlice", o.Namespace, o.Name) {
				merged.EndpointSlices = append(merged.EndpointSlices, o)
			}
		}
		for _, o := range st.good.Others {
			if add(o.GetKind(), o.GetNamespace(), o.GetName()) {
				merged.Others = append(merged.Others, o)
			}
		}
	}
	sum, err := contentSum(&merged)
	if err != nil {
		return nil, nil, false, err
	}
	changed := sum != w.sum
	if changed {
		w.sum = sum
		w.gen++
	}
	return &Snapshot{
		Namespaces: merged.Namespaces, Pods: merged.Pods, NetworkPolicies: merged.NetworkPolicies,
		Services: merged.Services, EndpointSlices: merged.EndpointSlices,
		Others: merged.Others, Generation: w.gen,
	}, errs, changed, nil
}

// readFile refreshes one file's state; unchanged content is not parsed
// again.
func (w *Watcher) readFile(name string) {
	st := w.files[name]
	if st == nil {
		st = &fileState{}
		w.files[name] = st
	}
	path := filepath.Join(w.dir, name)
	fail := func(err error) {
		st.sum = [32]byte{}
		st.errs = []FileError{{File: name, Err: err}}
	}
	info, err := os.Stat(path)
	if err != nil {
		fail(fmt.Errorf("read: %w", err))
		return
	}
	if info.Size() > maxFileSize {
		fail(fmt.Errorf("file is %d bytes, more than the %d a manifest may have", info.Size(), maxFileSize))
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		fail(fmt.Errorf("read: %w", err))
		return
	}
	sum := sha256.Sum256(data)
	if sum == st.sum {
		return
	}
	st.sum = sum
	objs, errs := parseFile(name, data, w.validate)
	st.errs = errs
	if len(errs) == 0 {
		st.good = &objs
	}
}

// contentSum fingerprints the merged objects so only real changes bump
// the generation.
func contentSum(o *objects) ([32]byte, error) {
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(o); err != nil {
		return [32]byte{}, fmt.Errorf("fingerprint manifests: %w", err)
	}
	return sha256.Sum256(buf.Bytes()), nil
}
