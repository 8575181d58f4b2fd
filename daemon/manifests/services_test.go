package manifests

import (
	"strings"
	"testing"
)

const svcWeb = `apiVersion: v1
kind: Service
metadata: {name: web, namespace: pets}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
`

const esWeb = `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: pets, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.244.2.7]
  conditions: {ready: true}
ports: [{name: http, port: 8080, protocol: TCP}]
`

func TestServicesAndEndpointSlices(t *testing.T) {
	objs, errs := parseFile("f.yaml", []byte(svcWeb+"---\n"+esWeb), validators{})
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	if len(objs.Services) != 1 || objs.Services[0].Spec.ClusterIP != "10.96.0.10" {
		t.Fatalf("services: %+v", objs.Services)
	}
	if len(objs.EndpointSlices) != 1 || objs.EndpointSlices[0].Endpoints[0].Addresses[0] != "10.244.2.7" {
		t.Fatalf("endpoint slices: %+v", objs.EndpointSlices)
	}

	for _, tc := range []struct{ name, doc, want string }{
		{"bad cluster IP", strings.Replace(svcWeb, "10.96.0.10", "10.96.0.300", 1), "Service pets/web: spec.clusterIP: invalid IP"},
		{"bad service port", strings.Replace(svcWeb, "port: 80,", "port: 0,", 1), "Service pets/web: spec.ports[0].port: 0: must be 1-65535"},
		{"bad endpoint address", strings.Replace(esWeb, "10.244.2.7", "nope", 1), "EndpointSlice pets/web-abc: endpoints[0].addresses[0]: invalid IP"},
		{"unknown field", strings.Replace(esWeb, "addressType", "adressType", 1), "EndpointSlice pets/web-abc: adressType: unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := parseFile("f.yaml", []byte(tc.doc), validators{})
			if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("errs = %v, want %q", errs, tc.want)
			}
		})
	}

	dir := t.TempDir()
	write(t, dir, "a.yaml", svcWeb+"---\n"+esWeb)
	write(t, dir, "b.yaml", svcWeb)
	snap, errs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != 1 || len(snap.EndpointSlices) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "b.yaml: Service pets/web: duplicate") {
		t.Fatalf("merged: %d services, %d slices, errs %v", len(snap.Services), len(snap.EndpointSlices), errs)
	}
}
