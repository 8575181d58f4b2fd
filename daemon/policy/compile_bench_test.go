package policy

import (
	"fmt"
	"net/netip"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// BenchmarkCompile10k compiles one policy of 10,000 ipBlock rules against
// 10,000 CIDR identities, the shape `make bench` uses.
func BenchmarkCompile10k(b *testing.B) {
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "big", Namespace: "bench"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}},
	}
	ids := []Identity{{ID: 256, Namespace: "bench", Labels: map[string]string{"app": "server"}}}
	for i := range 10000 {
		cidr := fmt.Sprintf("198.51.%d.%d/32", 100+i/250, i%250+1)
		p := intstr.FromInt32(int32(10000 + i%5000))
		port := networkingv1.NetworkPolicyPort{Port: &p}
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
			From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}},
			Ports: []networkingv1.NetworkPolicyPort{port},
		})
		ids = append(ids, Identity{ID: FirstCIDRIdentity + uint32(i), CIDR: netip.MustParsePrefix(cidr)})
	}
	jar := NewCookieJar()
	b.ResetTimer()
	for range b.N {
		res, err := Compile(Input{Identities: ids, Local: []uint32{256}, NetworkPolicies: []*networkingv1.NetworkPolicy{np}}, jar)
		if err != nil {
			b.Fatal(err)
		}
		if n := len(res.Identities[256].Entries); n < 10000 {
			b.Fatalf("%d entries, want >= 10000", n)
		}
	}
}
