package kube

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/weftnet/weft/control/flannel"
)

// DefaultAnnotationPrefix is flanneld's default --kube-annotation-prefix.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// Errors naming what is wrong with one Node, beside control/flannel's
// (ErrBackendType, ErrLeaseJSON, ErrVtepMAC, ErrPublicIP,
// ErrOutsideNetwork, ErrOverlap); a *flannel.LeaseError wraps one.
var (
	// ErrNoPodCIDR: the Node has no podCIDR of a family the network needs
	// (the controller manager has not assigned one, or it runs without
	// --allocate-node-cidrs, or without the IPv6 --cluster-cidr).
	ErrNoPodCIDR = errors.New("node has no podCIDR of the network's family")
	// ErrPodCIDR: spec.podCIDR(s) does not parse as a CIDR without host bits.
	ErrPodCIDR = errors.New("malformed podCIDR")
)

// Annotations are the Node annotation names of one prefix, as flanneld's
// kube subnet manager writes them.
type Annotations struct {
	BackendType       string // "vxlan"
	BackendData       string // {"VNI":1,"VtepMAC":"..."}
	PublicIP          string // the node's underlay address
	PublicIPOverwrite string // set by an admin: the address the node must publish instead
	KubeManaged       string // "true" on every node a kube subnet manager runs on
	// The IPv6 counterparts, written in the same PATCH when the Node has
	// an IPv6 podCIDR (flanneld's BackendV6Data, BackendPublicIPv6,
	// BackendPublicIPv6Overwrite).
	BackendV6Data       string // {"VNI":1,"VtepMAC":"..."} of the IPv6 VTEP (Weft: the same MAC)
	PublicIPv6          string
	PublicIPv6Overwrite string
}

// NewAnnotations checks prefix like flanneld (a DNS subdomain, optionally
// ending in "/") and returns its annotation names.
func NewAnnotations(prefix string) (Annotations, error) {
	if prefix == "" {
		prefix = DefaultAnnotationPrefix
	}
	domain := strings.TrimSuffix(prefix, "/")
	if errs := validation.IsDNS1123Subdomain(domain); len(errs) > 0 {
		return Annotations{}, fmt.Errorf("annotation prefix %q is not a DNS subdomain: %s", prefix, strings.Join(errs, "; "))
	}
	p := domain + "/"
	return Annotations{
		BackendType:       p + "backend-type",
		BackendData:       p + "backend-data",
		PublicIP:          p + "public-ip",
		PublicIPOverwrite: p + "public-ip-overwrite",
		KubeManaged:       p + "kube-subnet-manager",

		BackendV6Data:       p + "backend-v6-data",
		PublicIPv6:          p + "public-ipv6",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
	}, nil
}

// Key is a Node's record key in peers.Change.
func Key(nodeName string) string { return "node/" + nodeName }

// Managed reports whether a kube subnet manager (flanneld or weftd) runs on
// n: only such Nodes are peers, as in flannel. A Node with no annotations
// at all is simply not managed.
func (a Annotations) Managed(n *corev1.Node) bool {
	return n.Annotations[a.KubeManaged] == "true"
}

// PodCIDR is n's IPv4 pod subnet: the IPv4 entry of spec.podCIDRs, else
// spec.podCIDR, as flanneld reads it. Weft never allocates one. Errors wrap
// ErrNoPodCIDR or ErrPodCIDR.
func PodCIDR(n *corev1.Node) (netip.Prefix, error) {
	v4, _, err := PodCIDRs(n)
	if err == nil && !v4.IsValid() {
		err = fmt.Errorf("%w: spec.podCIDRs %v has no IPv4 entry", ErrNoPodCIDR, n.Spec.PodCIDRs)
	}
	return v4, err
}

// PodCIDRs is n's pod subnets, one per family (zero when it has none of
// that family): spec.podCIDRs, else spec.podCIDR, as flanneld reads them.
// More than two entries, or two of one family, are ErrPodCIDR (flanneld:
// "pod cidrs should be IPv4/IPv6 only or dualstack"); none at all is
// ErrNoPodCIDR.
func PodCIDRs(n *corev1.Node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		return v4, v6, fmt.Errorf("%w: spec.podCIDRs and spec.podCIDR are empty", ErrNoPodCIDR)
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("%w: spec.podCIDRs %v has more than one entry per family", ErrPodCIDR, cidrs)
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w: %q", ErrPodCIDR, s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w: %q has host bits set", ErrPodCIDR, s)
		}
		dst := &v4
		if p.Addr().Is6() {
			dst = &v6
		}
		if dst.IsValid() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w: spec.podCIDRs %v has two entries of one family", ErrPodCIDR, cidrs)
		}
		*dst = p
	}
	return v4, v6, nil
}

// podCIDRsFor is PodCIDRs restricted to the families cfg has, and checked
// against them: an IPv4 network needs an IPv4 podCIDR, an IPv6-only one an
// IPv6 podCIDR, a dual-stack one at least the IPv4 one (a Node without an
// IPv6 podCIDR is an IPv4-only peer, as an IPv4-only lease is in etcd).
// The error is ErrNoPodCIDR, ErrPodCIDR or ErrOutsideNetwork; sn4 and sn6
// are set as far as they parsed, to name the subnets in reports.
func podCIDRsFor(cfg *flannel.NetworkConfig, n *corev1.Node) (sn4, sn6 netip.Prefix, err error) {
	v4, v6, err := PodCIDRs(n)
	if err != nil {
		return v4, v6, err
	}
	if !cfg.Network.IsValid() {
		v4 = netip.Prefix{}
	}
	if !cfg.IPv6Network.IsValid() {
		v6 = netip.Prefix{}
	}
	switch {
	case cfg.Network.IsValid() && !v4.IsValid():
		return v4, v6, fmt.Errorf("%w: spec.podCIDRs %v has no IPv4 entry", ErrNoPodCIDR, n.Spec.PodCIDRs)
	case !cfg.Network.IsValid() && !v6.IsValid():
		return v4, v6, fmt.Errorf("%w: spec.podCIDRs %v has no IPv6 entry, and the network is IPv6-only", ErrNoPodCIDR, n.Spec.PodCIDRs)
	}
	if v4.IsValid() {
		if err := CheckPodCIDR(cfg, v4); err != nil {
			return v4, v6, err
		}
	}
	if v6.IsValid() {
		if err := CheckPodCIDR(cfg, v6); err != nil {
			return v4, v6, err
		}
	}
	return v4, v6, nil
}

// CheckPodCIDR checks that a node's pod subnet lies inside the Network (an
// IPv6 one inside IPv6Network). Unlike the etcd schema, its size is the
// controller manager's --node-cidr-mask-size, not SubnetLen, which flannel
// ignores in this mode.
func CheckPodCIDR(cfg *flannel.NetworkConfig, sn netip.Prefix) error {
	network := cfg.Network
	if sn.Addr().Is6() {
		network = cfg.IPv6Network
	}
	if !network.IsValid() || sn.Bits() < network.Bits() || !network.Contains(sn.Addr()) {
		return fmt.Errorf("%w: podCIDR %s is not inside %s", flannel.ErrOutsideNetwork, sn, network)
	}
	return nil
}

// ParseNode turns a managed Node into a lease, or says why it is not one
// (a *flannel.LeaseError keyed "node/<name>", with the subnets when the
// podCIDRs parsed). Overlaps between Nodes are the Source's job.
//
// Each family the network has and the Node has a podCIDR of is read from
// its annotations: IPv4 from backend-data and public-ip, IPv6 from
// backend-v6-data and public-ipv6, as flanneld writes them. A Node with an
// IPv6 podCIDR but no public-ipv6 is a Weft node without an IPv6 underlay
// (v6-in-v4): reached at public-ip with its backend-data VtepMAC, like an
// etcd lease without PublicIPv6.
func (a Annotations) ParseNode(cfg *flannel.NetworkConfig, n *corev1.Node) (*flannel.Lease, *flannel.LeaseError) {
	key := Key(n.Name)
	rev, _ := strconv.ParseInt(n.ResourceVersion, 10, 64)
	sn, sn6, err := podCIDRsFor(cfg, n)
	fail := func(err error) (*flannel.Lease, *flannel.LeaseError) {
		return nil, &flannel.LeaseError{Key: key, Subnet: sn, IPv6Subnet: sn6, ModRevision: rev, Err: err}
	}
	if err != nil {
		return fail(err)
	}
	ann := n.Annotations // reading a nil map is fine
	if bt := ann[a.BackendType]; bt != flannel.BackendVXLAN {
		return fail(fmt.Errorf("%w: annotation %s is %q, want %q", flannel.ErrBackendType, a.BackendType, bt, flannel.BackendVXLAN))
	}
	attrs := flannel.LeaseAttrs{BackendType: flannel.BackendVXLAN}
	l := &flannel.Lease{Subnet: sn, IPv6Subnet: sn6}
	// v6-in-v4 needs the IPv4 half; an IPv6-only network has none, so
	// there public-ipv6 is required, as in an etcd lease.
	v6in4 := sn6.IsValid() && sn.IsValid() && ann[a.PublicIPv6] == ""
	if sn.IsValid() {
		raw, ok := ann[a.BackendData]
		if !ok {
			return fail(fmt.Errorf("%w: annotation %s is missing", flannel.ErrLeaseJSON, a.BackendData))
		}
		if l.VXLAN, err = flannel.ParseVXLANData([]byte(raw)); err != nil {
			return fail(fmt.Errorf("annotation %s: %w", a.BackendData, err))
		}
		if attrs.PublicIP, err = flannel.ParsePublicIP(ann[a.PublicIP]); err != nil {
			return fail(fmt.Errorf("annotation %s: %w", a.PublicIP, err))
		}
		attrs.BackendData = []byte(raw)
	}
	if sn6.IsValid() {
		if v6in4 {
			l.VXLANv6 = l.VXLAN
		} else {
			if attrs.PublicIPv6, err = flannel.ParsePublicIPv6(ann[a.PublicIPv6]); err != nil {
				return fail(fmt.Errorf("annotation %s: %w", a.PublicIPv6, err))
			}
			raw, ok := ann[a.BackendV6Data]
			if !ok {
				return fail(fmt.Errorf("%w: annotation %s is missing", flannel.ErrLeaseJSON, a.BackendV6Data))
			}
			if l.VXLANv6, err = flannel.ParseVXLANData([]byte(raw)); err != nil {
				return fail(fmt.Errorf("annotation %s: %w", a.BackendV6Data, err))
			}
			attrs.BackendV6Data = []byte(raw)
		}
	}
	value, _ := flannel.MarshalLeaseAttrs(attrs) // for logs and weftctl: what the etcd schema would hold
	l.KV = flannel.KV{Key: key, Value: value, CreateRevision: n.CreationTimestamp.UnixNano(), ModRevision: rev}
	l.Attrs = attrs
	return l, nil
}
