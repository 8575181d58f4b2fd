package identity

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/aegis-cni/aegis/daemon/policy"
)

func TestStableAcrossRestartsAndNeverReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities.json")
	a, err := NewAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	web := Labels{Namespace: "pets", Pod: map[string]string{"app": "web"}, NamespaceLabels: map[string]string{"team": "a"}}
	db := Labels{Namespace: "pets", Pod: map[string]string{"app": "db"}}
	cidr := netip.MustParsePrefix("192.0.2.7/24") // host bits are masked
	nums, all, err := a.Sync([]Labels{web, db, web}, []netip.Prefix{cidr}, []string{"pets/web"})
	if err != nil {
		t.Fatal(err)
	}
	if nums[web.Key()] != policy.FirstPodIdentity || nums[db.Key()] != policy.FirstPodIdentity+1 {
		t.Errorf("pod numbers: %v", nums)
	}
	if nums[CIDRKey(cidr)] != policy.FirstCIDRIdentity {
		t.Errorf("cidr number: %v", nums)
	}
	if nums[ServiceKey("pets/web")] != FirstServiceIdentity {
		t.Errorf("service number: %v", nums)
	}
	if len(all) != len(Reserved)+3 {
		t.Errorf("all: %d identities", len(all))
	}
	for _, id := range all {
		if id.ID == policy.FirstCIDRIdentity && id.CIDR != netip.MustParsePrefix("192.0.2.0/24") {
			t.Errorf("cidr identity holds %v", id.CIDR)
		}
	}

	// A restarted daemon gets the same numbers; released ones are not
	// handed out again.
	b, err := NewAllocator(path)
	if err != nil {
		t.Fatal(err)
	}
	nums, _, _ = b.Sync([]Labels{db}, nil, nil)
	if nums[db.Key()] != policy.FirstPodIdentity+1 {
		t.Errorf("after restart db = %d", nums[db.Key()])
	}
	nums, _, _ = b.Sync([]Labels{db, web}, nil, nil)
	if nums[web.Key()] == policy.FirstPodIdentity {
		t.Errorf("released number %d reused", nums[web.Key()])
	}
}

func TestKeyIsCanonical(t *testing.T) {
	a := Labels{Namespace: "n", Pod: map[string]string{"a": "1", "b": "2"}}
	b := Labels{Namespace: "n", Pod: map[string]string{"b": "2", "a": "1"}}
	c := Labels{Namespace: "n", NamespaceLabels: map[string]string{"a": "1", "b": "2"}}
	if a.Key() != b.Key() {
		t.Error("label order changes the key")
	}
	if a.Key() == c.Key() {
		t.Error("pod and namespace labels share a key")
	}
}
