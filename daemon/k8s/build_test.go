package k8s

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// BenchmarkBuild: one rebuild with 10,000 pods cached, after one of them
// changed (the cost every pod event pays, debounced).
func BenchmarkBuild(b *testing.B) {
	pods := &corev1.PodList{}
	for i := range 10000 {
		pods.Items = append(pods.Items, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "pets", ResourceVersion: fmt.Sprint(i + 1),
				UID: "u", Labels: map[string]string{"app": fmt.Sprint("a", i%50)}},
			Spec:   corev1.PodSpec{NodeName: "n", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255)},
		})
	}
	store := cache.NewStore(cache.MetaNamespaceKeyFunc)
	for i := range pods.Items {
		if err := store.Add(&pods.Items[i]); err != nil {
			b.Fatal(err)
		}
	}
	inf := storeInformer{store: store}
	s := &Source{informers: map[string]cache.SharedIndexInformer{"Pod": inf}, entries: map[string]*entry{}, rejected: map[string]bool{}, reported: map[string]reportState{}}
	s.build()
	b.ResetTimer()
	for i := range b.N {
		p := pods.Items[0].DeepCopy()
		p.ResourceVersion = fmt.Sprint(100000 + i)
		p.Labels["app"] = fmt.Sprint("x", i)
		if err := store.Update(p); err != nil {
			b.Fatal(err)
		}
		if _, _, changed := s.build(); !changed {
			b.Fatal("change not seen")
		}
	}
}

// storeInformer is an informer whose cache is filled by hand.
type storeInformer struct {
	cache.SharedIndexInformer
	store cache.Store
}

func (f storeInformer) HasSynced() bool       { return true }
func (f storeInformer) GetStore() cache.Store { return f.store }
