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
	// ErrNoPodCIDR: the Node has no IPv4 podCIDR (the controller manager
	// has not assigned one, or it runs without --allocate-node-cidrs).
	ErrNoPodCIDR = errors.New("node has no IPv4 podCIDR")
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
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: %q", ErrPodCIDR, s)
		}
		if !p.Addr().Is4() {
			continue // the IPv6 half of a dual-stack node; Weft forwards IPv4
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%w: %q has host bits set", ErrPodCIDR, s)
		}
		return p, nil
	}
	if len(cidrs) == 0 {
		return netip.Prefix{}, fmt.Errorf("%w: spec.podCIDRs and spec.podCIDR are empty", ErrNoPodCIDR)
	}
	return netip.Prefix{}, fmt.Errorf("%w: spec.podCIDRs %v has no IPv4 entry", ErrNoPodCIDR, cidrs)
}

// CheckPodCIDR checks that a node's pod subnet lies inside the Network.
// Unlike the etcd schema, its size is the controller manager's
// --node-cidr-mask-size, not SubnetLen, which flannel ignores in this mode.
func CheckPodCIDR(cfg *flannel.NetworkConfig, sn netip.Prefix) error {
	if sn.Bits() < cfg.Network.Bits() || !cfg.Network.Contains(sn.Addr()) {
		return fmt.Errorf("%w: podCIDR %s is not inside %s", flannel.ErrOutsideNetwork, sn, cfg.Network)
	}
	return nil
}

// ParseNode turns a managed Node into a lease, or says why it is not one
// (a *flannel.LeaseError keyed "node/<name>", with the Subnet when the
// podCIDR parsed). Overlaps between Nodes are the Source's job.
func (a Annotations) ParseNode(cfg *flannel.NetworkConfig, n *corev1.Node) (*flannel.Lease, *flannel.LeaseError) {
	key := Key(n.Name)
	rev, _ := strconv.ParseInt(n.ResourceVersion, 10, 64)
	fail := func(sn netip.Prefix, err error) (*flannel.Lease, *flannel.LeaseError) {
		return nil, &flannel.LeaseError{Key: key, Subnet: sn, ModRevision: rev, Err: err}
	}
	sn, err := PodCIDR(n)
	if err != nil {
		return fail(netip.Prefix{}, err)
	}
	if err := CheckPodCIDR(cfg, sn); err != nil {
		return fail(sn, err)
	}
	ann := n.Annotations // reading a nil map is fine
	if bt := ann[a.BackendType]; bt != flannel.BackendVXLAN {
		return fail(sn, fmt.Errorf("%w: annotation %s is %q, want %q", flannel.ErrBackendType, a.BackendType, bt, flannel.BackendVXLAN))
	}
	raw, ok := ann[a.BackendData]
	if !ok {
		return fail(sn, fmt.Errorf("%w: annotation %s is missing", flannel.ErrLeaseJSON, a.BackendData))
	}
	data, err := flannel.ParseVXLANData([]byte(raw))
	if err != nil {
		return fail(sn, fmt.Errorf("annotation %s: %w", a.BackendData, err))
	}
	ip, err := flannel.ParsePublicIP(ann[a.PublicIP])
	if err != nil {
		return fail(sn, fmt.Errorf("annotation %s: %w", a.PublicIP, err))
	}
	attrs := flannel.LeaseAttrs{PublicIP: ip, BackendType: flannel.BackendVXLAN, BackendData: []byte(raw)}
	value, _ := flannel.MarshalLeaseAttrs(attrs) // for logs and weftctl: what the etcd schema would hold
	return &flannel.Lease{
		KV:     flannel.KV{Key: key, Value: value, CreateRevision: n.CreationTimestamp.UnixNano(), ModRevision: rev},
		Subnet: sn,
		Attrs:  attrs,
		VXLAN:  data,
	}, nil
}
