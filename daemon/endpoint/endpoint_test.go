package endpoint

import (
	"net/netip"
	"testing"
)

func TestRegistryPersistsAndKeepsIDs(t *testing.T) {
	dir := t.TempDir()
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a := &Endpoint{ContainerID: "c1", IfName: "eth0", HostIfindex: 7, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.2")}, PodNamespace: "pets", PodName: "web"}
	b := &Endpoint{ContainerID: "c2", IfName: "eth0", HostIfindex: 8}
	if err := r.Put(a); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(b); err != nil {
		t.Fatal(err)
	}
	if a.ID == b.ID || a.ID == 0 {
		t.Fatalf("ids %d %d", a.ID, b.ID)
	}
	a2 := *a
	a2.Identity = 300
	if err := r.Put(&a2); err != nil || a2.ID != a.ID {
		t.Fatalf("re-put changed the id: %d vs %d (%v)", a2.ID, a.ID, err)
	}
	r2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := r2.Get("c1/eth0")
	if !ok || got.Identity != 300 || got.IPs[0] != a.IPs[0] || got.PodName != "web" {
		t.Fatalf("after reopen: %+v %v", got, ok)
	}
	if _, err := r2.Delete("c1/eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Delete("c1/eth0"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	c := &Endpoint{ContainerID: "c3", IfName: "eth0"}
	r2.Put(c)
	if c.ID <= b.ID {
		t.Errorf("new endpoint got id %d, not above %d", c.ID, b.ID)
	}
	if l := r2.List(); len(l) != 2 || l[0].ContainerID != "c2" {
		t.Errorf("list: %+v", l)
	}
}
