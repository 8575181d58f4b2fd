package fqdn

import (
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aegis-cni/aegis/bpf"
)

type fakeMap map[bpf.FQDNKey]uint32

func (f fakeMap) PutFQDN(k bpf.FQDNKey, c uint32) error { f[k] = c; return nil }
func (f fakeMap) DeleteFQDN(k bpf.FQDNKey) error        { delete(f, k); return nil }

func TestCacheLearnExpireGrace(t *testing.T) {
	m := fakeMap{}
	path := filepath.Join(t.TempDir(), "fqdn.json")
	c, err := NewCache(m, Options{MinTTL: time.Second, MaxIPsPerName: 2, Path: path}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, b, d := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("203.0.113.3")
	g := []Grant{{Selector: "*.microsoft.com", Proto: 6, Port: 443, Cookie: 7}}
	if err := c.Learn(300, "10.0.0.1", "www.microsoft.com", []netip.Addr{a}, 0, g); err != nil {
		t.Fatal(err)
	}
	ka := bpf.FQDNKey{Local: 300, Addr: a, Proto: 6, Port: 443}
	if m[ka] != 7 {
		t.Fatalf("map after learning: %v", m)
	}
	// A second name granting the same entry keeps it alive when the first goes.
	if err := c.Learn(300, "10.0.0.1", "learn.microsoft.com", []netip.Addr{a}, time.Hour, g); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Sweep(time.Now().Add(2*time.Second), nil); n != 1 {
		t.Errorf("swept %d, want the expired name only", n)
	}
	if m[ka] != 7 {
		t.Error("an entry another name still grants was removed")
	}
	// Grace: an expired address with a live connection stays.
	if err := c.Learn(300, "10.0.0.1", "x.microsoft.com", []netip.Addr{b}, 0, g); err != nil {
		t.Fatal(err)
	}
	kb := bpf.FQDNKey{Local: 300, Addr: b, Proto: 6, Port: 443}
	later := time.Now().Add(2 * time.Second)
	c.Sweep(later, func(ip netip.Addr) bool { return ip == b })
	if _, ok := m[kb]; !ok {
		t.Error("an address with a live connection expired")
	}
	c.Sweep(later, func(netip.Addr) bool { return false })
	if _, ok := m[kb]; ok {
		t.Error("an expired address without connections stayed")
	}
	// The cap per name keeps the latest.
	if err := c.Learn(300, "10.0.0.1", "many.microsoft.com", []netip.Addr{a, b, d}, time.Minute, g); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range c.List() {
		if l.Name == "many.microsoft.com." {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d addresses for one name, cap 2", n)
	}
	// Persisted and restored; stale datapath entries go.
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	stale := bpf.FQDNKey{Local: 999, Addr: d, Proto: 6, Port: 1}
	m2 := fakeMap{stale: 1}
	c2, err := NewCache(m2, Options{Path: path}, maps.Clone(m2))
	if err != nil {
		t.Fatal(err)
	}
	if len(c2.List()) != len(c.List()) || m2[ka] != 7 {
		t.Errorf("restored %d entries (want %d), map %v", len(c2.List()), len(c.List()), m2)
	}
	if _, ok := m2[stale]; ok {
		t.Error("a datapath entry nothing grants survived the restore")
	}
	if n, _ := c2.Clean(0); n == 0 || len(m2) != 0 {
		t.Errorf("clean removed %d, map left %v", n, m2)
	}
}

// opLog records the datapath writes in order.
type opLog struct {
	m   fakeMap
	ops []string
}

func (o *opLog) PutFQDN(k bpf.FQDNKey, c uint32) error {
	o.ops = append(o.ops, fmt.Sprintf("put %d:%d=%d", k.Proto, k.Port, c))
	return o.m.PutFQDN(k, c)
}

func (o *opLog) DeleteFQDN(k bpf.FQDNKey) error {
	o.ops = append(o.ops, fmt.Sprintf("del %d:%d", k.Proto, k.Port))
	return o.m.DeleteFQDN(k)
}

func TestCacheRelearnWritesOnlyChanges(t *testing.T) {
	w := &opLog{m: fakeMap{}}
	c, err := NewCache(w, Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("203.0.113.1")
	g443 := []Grant{{Selector: "*.example.com", Proto: 6, Port: 443, Cookie: 7}}
	learn := func(ttl time.Duration, g []Grant) {
		t.Helper()
		if err := c.Learn(300, "10.0.0.1", "www.example.com.", []netip.Addr{a}, ttl, g); err != nil {
			t.Fatal(err)
		}
	}
	learn(time.Minute, g443)
	learn(time.Hour, g443)
	learn(time.Second, g443)
	if want := []string{"put 6:443=7"}; !slices.Equal(w.ops, want) {
		t.Errorf("learning one answer three times wrote %v, want %v", w.ops, want)
	}
	if l := c.List(); len(l) != 1 || time.Until(l[0].Expires) < 59*time.Minute {
		t.Errorf("the longest TTL learned should hold: %+v", l)
	}
	// Other grants for the same address: the new key is written before the
	// old one goes, and a key both grant with another cookie is rewritten.
	w.ops = nil
	learn(time.Minute, []Grant{{Selector: "*.example.com", Proto: 6, Port: 443, Cookie: 5}, {Selector: "*.example.com", Proto: 6, Port: 8443, Cookie: 5}})
	if want := []string{"put 6:443=5", "put 6:8443=5"}; !slices.Equal(w.ops, want) {
		t.Errorf("changed grants wrote %v, want %v", w.ops, want)
	}
	w.ops = nil
	learn(time.Minute, []Grant{{Selector: "*.example.com", Proto: 6, Port: 8443, Cookie: 5}})
	if want := []string{"del 6:443"}; !slices.Equal(w.ops, want) {
		t.Errorf("a dropped grant wrote %v, want %v", w.ops, want)
	}
	if len(w.m) != 1 {
		t.Errorf("map %v", w.m)
	}
}
