// Package manifests is the standalone source of truth: a directory of
// Kubernetes YAML manifests (Namespaces, Pods, NetworkPolicies, Services,
// EndpointSlices, and the kinds later features read), parsed strictly,
// validated, and watched for changes. A file that fails keeps contributing
// its last good content, so a typo never takes policy away; the rejection
// names the file, the object and the field.
package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/aegis-cni/aegis/daemon/strictjson"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// FileError says why one file (and which object and field in it) was
// rejected.
type FileError struct {
	File   string
	Object string // "Kind namespace/name", or "document N" before the object is known
	Field  string
	Err    error
}

func (e FileError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Object != "" {
		b.WriteString(": " + e.Object)
	}
	if e.Field != "" {
		b.WriteString(": " + e.Field)
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e FileError) Unwrap() error { return e.Err }

// validators are the checks other packages own (the policy compiler's),
// run on the objects they concern.
type validators struct {
	networkPolicy func(*networkingv1.NetworkPolicy) error
	other         func(*unstructured.Unstructured) error
}

// objects is what one file contributes.
type objects struct {
	Namespaces      []*corev1.Namespace
	Pods            []*corev1.Pod
	NetworkPolicies []*networkingv1.NetworkPolicy
	Services        []*corev1.Service
	EndpointSlices  []*discoveryv1.EndpointSlice
	Others          []*unstructured.Unstructured
}

// kinds Aegis reads later (CiliumNetworkPolicy, flow logs): kept raw.
var laterKinds = map[string]bool{
	"cilium.io/v2/CiliumNetworkPolicy":            true,
	"cilium.io/v2/CiliumClusterwideNetworkPolicy": true,
	"acn.azure.com/v1alpha1/ContainerNetworkLog":  true,
}

type parser struct {
	file          string
	validate      func(*networkingv1.NetworkPolicy) error
	validateOther func(*unstructured.Unstructured) error
	out           objects
	errs          []FileError
}

func (p *parser) fail(object, field string, err error) {
	p.errs = append(p.errs, FileError{File: p.file, Object: object, Field: field, Err: err})
}

// parseFile splits a file into documents and decodes each.
func parseFile(file string, data []byte, v validators) (objects, []FileError) {
	p := &parser{file: file, validate: v.networkPolicy, validateOther: v.other}
	r := utilyaml.NewYAMLReader(bufio.NewReaderSize(bytes.NewReader(data), 64<<10))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.fail(fmt.Sprintf("document %d", i), "", fmt.Errorf("read YAML: %w", err))
			break
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		p.document(fmt.Sprintf("document %d", i), doc)
	}
	return p.out, p.errs
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// document decodes one YAML document (which may be a List).
func (p *parser) document(where string, doc []byte) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		p.fail(where, "", fmt.Errorf("invalid YAML: %w", err))
		return
	}
	p.object(where, js)
}

func (p *parser) object(where string, js []byte) {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		p.fail(where, "", fmt.Errorf("not a Kubernetes object: %w", err))
		return
	}
	if tm.Kind == "" || tm.APIVersion == "" {
		p.fail(where, "", errors.New("apiVersion and kind are required"))
		return
	}
	gvk := tm.APIVersion + "/" + tm.Kind
	switch gvk {
	case "v1/List":
		var list struct {
			metav1.TypeMeta `json:",inline"`
			Items           []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &list); err != nil {
			p.fail(where, "", fmt.Errorf("decode List: %w", err))
			return
		}
		for i, item := range list.Items {
			p.object(fmt.Sprintf("%s items[%d]", where, i), item)
		}
	case "v1/Namespace":
		decodeKind(p, where, "Namespace", js, false, p.validateNamespace, &p.out.Namespaces)
	case "v1/Pod":
		decodeKind(p, where, "Pod", js, true, p.validatePod, &p.out.Pods)
	case "networking.k8s.io/v1/NetworkPolicy":
		decodeKind(p, where, "NetworkPolicy", js, true, p.validateNetworkPolicy, &p.out.NetworkPolicies)
	case "v1/Service":
		decodeKind(p, where, "Service", js, true, p.validateService, &p.out.Services)
	case "discovery.k8s.io/v1/EndpointSlice":
		decodeKind(p, where, "EndpointSlice", js, true, p.validateEndpointSlice, &p.out.EndpointSlices)
	default:
		if !laterKinds[gvk] {
			p.fail(where, "", fmt.Errorf("unsupported kind %s %s (want v1 Namespace, Pod, Service, List, discovery.k8s.io/v1 EndpointSlice, networking.k8s.io/v1 NetworkPolicy, cilium.io/v2 CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy, acn.azure.com/v1alpha1 ContainerNetworkLog)", tm.APIVersion, tm.Kind))
			return
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			p.fail(where, "", fmt.Errorf("decode %s: %w", tm.Kind, err))
			return
		}
		if u.GetName() == "" {
			p.fail(tm.Kind+" (unnamed)", "metadata.name", errors.New("required"))
			return
		}
		if p.validateOther != nil {
			if err := p.validateOther(u); err != nil {
				p.fail(tm.Kind+" "+strings.TrimPrefix(u.GetNamespace()+"/"+u.GetName(), "/"), "", err)
				return
			}
		}
		p.out.Others = append(p.out.Others, u)
	}
}

// decodeKind decodes one object of a typed kind, defaults the namespace of
// namespaced kinds to "default" (as kubectl does), validates it, and keeps
// it when valid.
func decodeKind[T any, PT interface {
	*T
	metav1.Object
}](p *parser, where, kind string, js []byte, namespaced bool, validate func(string, PT) bool, out *[]PT) {
	obj := PT(new(T))
	name, ok := p.decode(where, kind, js, obj)
	if !ok {
		return
	}
	if namespaced && obj.GetNamespace() == "" {
		obj.SetNamespace("default")
	}
	if validate(name, obj) {
		*out = append(*out, obj)
	}
}

// decode decodes strictly: unknown fields and wrong types are errors that
// name the field.
func (p *parser) decode(where, kind string, js []byte, into any) (string, bool) {
	var raw any
	if err := json.Unmarshal(js, &raw); err != nil {
		p.fail(where, "", fmt.Errorf("decode %s: %w", kind, err))
		return "", false
	}
	name := kind + " " + objectName(raw)
	if err := strictjson.Decode(js, into); err != nil {
		var fe *strictjson.FieldError
		if errors.As(err, &fe) && fe.Field != "" {
			p.fail(name, fe.Field, fe.Err)
			return name, false
		}
		p.fail(name, "", fmt.Errorf("decode: %w", err))
		return name, false
	}
	return name, true
}

func objectName(raw any) string {
	m, _ := raw.(map[string]any)
	meta, _ := m["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	ns, _ := meta["namespace"].(string)
	if name == "" {
		name = "(unnamed)"
	}
	if ns != "" {
		return ns + "/" + name
	}
	return name
}

func (p *parser) validateMeta(name string, m *metav1.ObjectMeta, namespaced bool) bool {
	ok := true
	if m.Name == "" {
		p.fail(name, "metadata.name", errors.New("required"))
		ok = false
	} else if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
		p.fail(name, "metadata.name", errors.New(strings.Join(errs, "; ")))
		ok = false
	}
	if namespaced {
		if errs := validation.IsDNS1123Label(m.Namespace); len(errs) > 0 {
			p.fail(name, "metadata.namespace", errors.New(strings.Join(errs, "; ")))
			ok = false
		}
	}
	for k, v := range m.Labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			p.fail(name, "metadata.labels["+k+"]", fmt.Errorf("invalid key: %s", strings.Join(errs, "; ")))
			ok = false
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			p.fail(name, "metadata.labels["+k+"]", fmt.Errorf("invalid value %q: %s", v, strings.Join(errs, "; ")))
			ok = false
		}
	}
	return ok
}

func (p *parser) validateNamespace(name string, ns *corev1.Namespace) bool {
	ok := p.validateMeta(name, &ns.ObjectMeta, false)
	if ok {
		if errs := validation.IsDNS1123Label(ns.Name); len(errs) > 0 {
			p.fail(name, "metadata.name", errors.New(strings.Join(errs, "; ")))
			return false
		}
	}
	return ok
}

func (p *parser) validatePod(name string, pod *corev1.Pod) bool {
	ok := p.validateMeta(name, &pod.ObjectMeta, true)
	checkIP := func(field, s string) {
		if s == "" {
			return
		}
		if _, err := netip.ParseAddr(s); err != nil {
			p.fail(name, field, fmt.Errorf("invalid IP %q", s))
			ok = false
		}
	}
	checkIP("status.podIP", pod.Status.PodIP)
	for i, ip := range pod.Status.PodIPs {
		checkIP(fmt.Sprintf("status.podIPs[%d].ip", i), ip.IP)
	}
	for i, c := range pod.Spec.Containers {
		for j, cp := range c.Ports {
			field := fmt.Sprintf("spec.containers[%d].ports[%d]", i, j)
			if cp.Name != "" {
				if errs := validation.IsValidPortName(cp.Name); len(errs) > 0 {
					p.fail(name, field+".name", fmt.Errorf("%q: %s", cp.Name, strings.Join(errs, "; ")))
					ok = false
				}
			}
			if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				p.fail(name, field+".containerPort", fmt.Errorf("%d: must be 1-65535", cp.ContainerPort))
				ok = false
			}
			switch cp.Protocol {
			case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			default:
				p.fail(name, field+".protocol", fmt.Errorf("%q: must be TCP, UDP or SCTP", cp.Protocol))
				ok = false
			}
		}
	}
	return ok
}

func (p *parser) validateNetworkPolicy(name string, np *networkingv1.NetworkPolicy) bool {
	if !p.validateMeta(name, &np.ObjectMeta, true) {
		return false
	}
	if p.validate != nil {
		if err := p.validate(np); err != nil {
			p.fail(name, "", err)
			return false
		}
		return true
	}
	if _, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil {
		p.fail(name, "spec.podSelector", err)
		return false
	}
	return true
}

func (p *parser) validateService(name string, svc *corev1.Service) bool {
	ok := p.validateMeta(name, &svc.ObjectMeta, true)
	checkIP := func(field, s string) {
		if s == "" || s == corev1.ClusterIPNone {
			return
		}
		if _, err := netip.ParseAddr(s); err != nil {
			p.fail(name, field, fmt.Errorf("invalid IP %q", s))
			ok = false
		}
	}
	checkIP("spec.clusterIP", svc.Spec.ClusterIP)
	for i, ip := range svc.Spec.ClusterIPs {
		checkIP(fmt.Sprintf("spec.clusterIPs[%d]", i), ip)
	}
	for i, sp := range svc.Spec.Ports {
		if sp.Port < 1 || sp.Port > 65535 {
			p.fail(name, fmt.Sprintf("spec.ports[%d].port", i), fmt.Errorf("%d: must be 1-65535", sp.Port))
			ok = false
		}
	}
	return ok
}

func (p *parser) validateEndpointSlice(name string, es *discoveryv1.EndpointSlice) bool {
	ok := p.validateMeta(name, &es.ObjectMeta, true)
	for i, ep := range es.Endpoints {
		for j, a := range ep.Addresses {
			if es.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			if _, err := netip.ParseAddr(a); err != nil {
				p.fail(name, fmt.Sprintf("endpoints[%d].addresses[%d]", i, j), fmt.Errorf("invalid IP %q", a))
				ok = false
			}
		}
	}
	for i, ep := range es.Ports {
		if ep.Port != nil && (*ep.Port < 1 || *ep.Port > 65535) {
			p.fail(name, fmt.Sprintf("ports[%d].port", i), fmt.Errorf("%d: must be 1-65535", *ep.Port))
			ok = false
		}
	}
	return ok
}
