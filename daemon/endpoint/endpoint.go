// Package endpoint keeps the registry of endpoints: the pod interfaces on
// this node that the CNI plugin attached, one JSON file each in the state
// directory so a restarted daemon knows them all again.
package endpoint

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aegis-cni/aegis/daemon/state"
)

// Endpoint is one pod interface.
type Endpoint struct {
	ID           uint32       `json:"id"`
	ContainerID  string       `json:"containerID"`
	IfName       string       `json:"ifName"`
	Netns        string       `json:"netns"`
	HostIfName   string       `json:"hostIfName"`
	HostIfindex  int          `json:"hostIfindex"`
	IPs          []netip.Addr `json:"ips"`
	PodNamespace string       `json:"podNamespace"`
	PodName      string       `json:"podName"`
	Identity     uint32       `json:"identity"`
	Created      time.Time    `json:"created"`
}

// Key is the CNI attachment key (container ID, interface).
func (e *Endpoint) Key() string { return e.ContainerID + "/" + e.IfName }

// Registry holds the endpoints, persisted under dir.
type Registry struct {
	mu     sync.Mutex
	dir    string
	byKey  map[string]*Endpoint
	nextID uint32
}

// Open loads the registry persisted in dir.
func Open(dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create endpoint directory: %w", err)
	}
	r := &Registry{dir: dir, byKey: map[string]*Endpoint{}, nextID: 1}
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	for _, f := range files {
		var ep Endpoint
		if _, err := state.ReadJSON(f, &ep); err != nil {
			return nil, fmt.Errorf("load endpoint: %w", err)
		}
		r.byKey[ep.Key()] = &ep
		r.nextID = max(r.nextID, ep.ID+1)
	}
	return r, nil
}

func (r *Registry) file(key string) string {
	return filepath.Join(r.dir, strings.NewReplacer("/", "_").Replace(key)+".json")
}

// Put stores an endpoint, giving it an ID when new; an existing endpoint
// with the same key keeps its ID.
func (r *Registry) Put(ep *Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.byKey[ep.Key()]; ok {
		ep.ID = old.ID
		ep.Created = old.Created
	} else {
		ep.ID = r.nextID
		r.nextID++
		ep.Created = time.Now().UTC()
	}
	if err := state.WriteJSON(r.file(ep.Key()), ep); err != nil {
		return fmt.Errorf("persist endpoint %s: %w", ep.Key(), err)
	}
	cp := *ep
	r.byKey[ep.Key()] = &cp
	return nil
}

// Delete removes an endpoint; removing an unknown one succeeds.
func (r *Registry) Delete(key string) (*Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep := r.byKey[key]
	if err := os.Remove(r.file(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove endpoint %s: %w", key, err)
	}
	delete(r.byKey, key)
	return ep, nil
}

// Get returns a copy of one endpoint.
func (r *Registry) Get(key string) (Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.byKey[key]
	if !ok {
		return Endpoint{}, false
	}
	return *ep, true
}

// List returns copies of all endpoints, ordered by ID.
func (r *Registry) List() []Endpoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Endpoint, 0, len(r.byKey))
	for _, ep := range r.byKey {
		out = append(out, *ep)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return int(a.ID) - int(b.ID) })
	return out
}
