package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestWorkloadOf(t *testing.T) {
	yes, no := true, false
	pod := func(hash string, owners ...metav1.OwnerReference) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", OwnerReferences: owners, Labels: map[string]string{}}}
		if hash != "" {
			p.Labels["pod-template-hash"] = hash
		}
		return p
	}
	for _, tc := range []struct {
		name       string
		pod        *corev1.Pod
		wantName   string
		wantKind   string
		wantAbsent bool
	}{
		{"deployment", pod("5d8f9c", metav1.OwnerReference{Kind: "ReplicaSet", Name: "web-5d8f9c", Controller: &yes}), "web", "Deployment", false},
		{"bare replicaset", pod("", metav1.OwnerReference{Kind: "ReplicaSet", Name: "web-5d8f9c", Controller: &yes}), "web-5d8f9c", "ReplicaSet", false},
		{"hash not the suffix", pod("aaaa", metav1.OwnerReference{Kind: "ReplicaSet", Name: "web-5d8f9c", Controller: &yes}), "web-5d8f9c", "ReplicaSet", false},
		{"statefulset", pod("", metav1.OwnerReference{Kind: "StatefulSet", Name: "rabbitmq", Controller: &yes}), "rabbitmq", "StatefulSet", false},
		{"not the controller", pod("", metav1.OwnerReference{Kind: "ConfigMap", Name: "x", Controller: &no}, metav1.OwnerReference{Kind: "DaemonSet", Name: "agent", Controller: &yes}), "agent", "DaemonSet", false},
		{"bare pod", pod(""), "", "", true},
	} {
		w := workloadOf(tc.pod)
		if tc.wantAbsent {
			if w != nil {
				t.Errorf("%s: %v, want none", tc.name, w)
			}
			continue
		}
		if len(w) != 1 || w[0].GetName() != tc.wantName || w[0].GetKind() != tc.wantKind {
			t.Errorf("%s: %v, want %s %s", tc.name, w, tc.wantKind, tc.wantName)
		}
	}
}
