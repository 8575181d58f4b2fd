package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// FieldError is one problem in a policy, named by its field path the way
// kubectl names fields, so an operator can find it in the manifest.
type FieldError struct {
	Field  string // e.g. spec.ingress[0].from[1].ipBlock.cidr
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// FieldErrors is every problem Validate found, in manifest order. Reporting
// all of them at once saves an operator one edit-apply round per mistake.
type FieldErrors []*FieldError

func (errs FieldErrors) Error() string {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap lets errors.As reach each FieldError.
func (errs FieldErrors) Unwrap() []error {
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return out
}

// Validate performs the checks the Kubernetes API server performs on a
// NetworkPolicy (pkg/apis/networking/validation), so a manifest read from a
// directory is held to the same rules as one accepted by a cluster and the
// compiler never sees a value it would have to guess about. It returns nil
// or FieldErrors.
func Validate(np *networkingv1.NetworkPolicy) error {
	if np == nil {
		return errors.New("validate networkpolicy: nil")
	}
	var v validator
	meta := field.NewPath("metadata")
	v.dnsName(meta.Child("name"), np.Name, validation.IsDNS1123Subdomain)
	v.dnsName(meta.Child("namespace"), np.Namespace, validation.IsDNS1123Label)

	spec := field.NewPath("spec")
	v.selector(spec.Child("podSelector"), &np.Spec.PodSelector)
	for i, rule := range np.Spec.Ingress {
		p := spec.Child("ingress").Index(i)
		for j := range rule.Ports {
			v.port(p.Child("ports").Index(j), &rule.Ports[j])
		}
		for j := range rule.From {
			v.peer(p.Child("from").Index(j), &rule.From[j])
		}
	}
	for i, rule := range np.Spec.Egress {
		p := spec.Child("egress").Index(i)
		for j := range rule.Ports {
			v.port(p.Child("ports").Index(j), &rule.Ports[j])
		}
		for j := range rule.To {
			v.peer(p.Child("to").Index(j), &rule.To[j])
		}
	}
	v.policyTypes(spec.Child("policyTypes"), np.Spec.PolicyTypes)

	if len(v.errs) == 0 {
		return nil
	}
	return v.errs
}

type validator struct {
	errs FieldErrors
}

func (v *validator) add(p *field.Path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: p.String(), Detail: fmt.Sprintf(format, args...)})
}

func (v *validator) dnsName(p *field.Path, name string, check func(string) []string) {
	if name == "" {
		v.add(p, "required")
		return
	}
	for _, msg := range check(name) {
		v.add(p, "invalid name %q: %s", name, msg)
	}
}

// selector mirrors apimachinery's ValidateLabelSelector. A nil selector is
// valid: it is how a peer leaves out podSelector or namespaceSelector.
func (v *validator) selector(p *field.Path, sel *metav1.LabelSelector) {
	if sel == nil {
		return
	}
	before := len(v.errs)
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v.labelKey(p.Child("matchLabels"), k)
		for _, msg := range validation.IsValidLabelValue(sel.MatchLabels[k]) {
			v.add(p.Child("matchLabels").Key(k), "invalid label value %q: %s", sel.MatchLabels[k], msg)
		}
	}
	for i, expr := range sel.MatchExpressions {
		ep := p.Child("matchExpressions").Index(i)
		switch expr.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(expr.Values) == 0 {
				v.add(ep.Child("values"), "required when operator is %s", expr.Operator)
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(expr.Values) > 0 {
				v.add(ep.Child("values"), "must be empty when operator is %s", expr.Operator)
			}
		default:
			v.add(ep.Child("operator"), "unsupported operator %q (want In, NotIn, Exists or DoesNotExist)", expr.Operator)
		}
		v.labelKey(ep.Child("key"), expr.Key)
		for j, val := range expr.Values {
			for _, msg := range validation.IsValidLabelValue(val) {
				v.add(ep.Child("values").Index(j), "invalid label value %q: %s", val, msg)
			}
		}
	}
	// The checks above should make this unreachable; it guards the
	// compiler, which relies on every selector converting.
	if len(v.errs) == before {
		if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
			v.add(p, "invalid selector: %v", err)
		}
	}
}

func (v *validator) labelKey(p *field.Path, key string) {
	for _, msg := range validation.IsQualifiedName(key) {
		v.add(p, "invalid label key %q: %s", key, msg)
	}
}

func (v *validator) peer(p *field.Path, peer *networkingv1.NetworkPolicyPeer) {
	n := 0
	if peer.PodSelector != nil {
		n++
		v.selector(p.Child("podSelector"), peer.PodSelector)
	}
	if peer.NamespaceSelector != nil {
		n++
		v.selector(p.Child("namespaceSelector"), peer.NamespaceSelector)
	}
	if peer.IPBlock != nil {
		n++
		v.ipBlock(p.Child("ipBlock"), peer.IPBlock)
	}
	switch {
	case n == 0:
		v.add(p, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
	case n > 1 && peer.IPBlock != nil:
		v.add(p, "may not specify both ipBlock and another peer")
	}
}

func (v *validator) ipBlock(p *field.Path, b *networkingv1.IPBlock) {
	if b.CIDR == "" {
		v.add(p.Child("cidr"), "required")
		return
	}
	cidr, ok := v.cidr(p.Child("cidr"), b.CIDR)
	if !ok {
		return
	}
	for i, s := range b.Except {
		ep := p.Child("except").Index(i)
		except, ok := v.cidr(ep, s)
		if !ok {
			continue
		}
		if except.Addr().Is4() != cidr.Addr().Is4() || except.Bits() <= cidr.Bits() || !cidr.Contains(except.Addr()) {
			v.add(ep, "%q must be a strict subset of cidr %q", s, b.CIDR)
		}
	}
}

// cidr parses s and returns it masked: Kubernetes accepts host bits in an
// ipBlock (10.1.2.3/8) and means the network.
func (v *validator) cidr(p *field.Path, s string) (netip.Prefix, bool) {
	prefix, err := netip.ParsePrefix(s)
	if err != nil {
		v.add(p, "invalid CIDR %q", s)
		return netip.Prefix{}, false
	}
	// An IPv4-mapped IPv6 prefix would never contain an IPv4 identity's
	// prefix, so it could only silently select nothing; Kubernetes' strict
	// IP validation rejects it for the same reason.
	if prefix.Addr().Is4In6() {
		v.add(p, "invalid CIDR %q: IPv4-mapped IPv6 prefixes are not allowed, use the IPv4 form", s)
		return netip.Prefix{}, false
	}
	return prefix.Masked(), true
}

func (v *validator) port(p *field.Path, port *networkingv1.NetworkPolicyPort) {
	if port.Protocol != nil {
		switch *port.Protocol {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			v.add(p.Child("protocol"), "unsupported protocol %q (want TCP, UDP or SCTP)", *port.Protocol)
		}
	}
	switch {
	case port.Port == nil:
		if port.EndPort != nil {
			v.add(p.Child("endPort"), "may not be specified when port is not specified")
		}
	case port.Port.Type == intstr.Int:
		first := port.Port.IntVal
		if first < 1 || first > 65535 {
			v.add(p.Child("port"), "invalid port %d: must be between 1 and 65535", first)
		}
		if port.EndPort != nil {
			last := *port.EndPort
			if last < 1 || last > 65535 {
				v.add(p.Child("endPort"), "invalid port %d: must be between 1 and 65535", last)
			}
			if last < first {
				v.add(p.Child("endPort"), "%d must be greater than or equal to port %d", last, first)
			}
		}
	default:
		if port.EndPort != nil {
			v.add(p.Child("endPort"), "may not be specified when port is a name")
		}
		for _, msg := range validation.IsValidPortName(port.Port.StrVal) {
			v.add(p.Child("port"), "invalid port name %q: %s", port.Port.StrVal, msg)
		}
	}
}

func (v *validator) policyTypes(p *field.Path, types []networkingv1.PolicyType) {
	if len(types) > 2 {
		v.add(p, "may not specify more than two policy types")
		return
	}
	for i, t := range types {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			v.add(p.Index(i), "unsupported policy type %q (want Ingress or Egress)", t)
		}
	}
}
