// Package kube is Weft's Kubernetes subnet manager: flanneld's
// --kube-subnet-mgr mode (flannel-io/flannel pkg/subnet/kube), where a
// node's lease lives in its own Node object instead of etcd.
//
// Design and history. In this mode flanneld never allocates: the
// controller manager assigns spec.podCIDRs, the network config is a file
// (the net-conf.json key of a ConfigMap, same JSON as etcd's
// <prefix>/config), and each node publishes its lease as annotations
// (<prefix>/backend-type, backend-data, public-ip, kube-subnet-manager)
// with a PATCH of nodes/status. Peers are the other Nodes carrying those
// annotations, followed by an informer; a deleted Node is a removed lease
// and there is no TTL. Weft does the same, so Weft and flannel nodes share
// one cluster, with these differences:
//
//   - Every Node is validated (control/flannel's rules, podCIDR inside the
//     Network); a bad one is reported as Invalid with its name, logged and
//     counted, and never disturbs the others. flanneld logs and drops it, or
//     (v0.28, its own Node without annotations) panics.
//   - Two Nodes with the same podCIDR: the older keeps it (see index), the
//     check only looks at the Nodes sharing the changed one's subnet.
//   - Node updates that change nothing Weft reads are dropped before the
//     reconcile (kubelet updates its Node's status continually).
//   - Annotations and NetworkUnavailable=False go out in one PATCH, after
//     the data plane is up, so a node is never advertised before it can
//     decapsulate.
//   - Dual-stack and IPv6-only (issue 14): spec.podCIDRs' IPv6 entry is the
//     node's IPv6 subnet, published as backend-v6-data and public-ipv6 in
//     the same PATCH as the IPv4 pair (public-ipv6-overwrite wins), as
//     flanneld does. A Node with an IPv6 podCIDR but no public-ipv6 is a
//     Weft node without an IPv6 underlay (v6-in-v4), reached over IPv4; an
//     IPv4-only Node in a dual-stack network is an IPv4 peer (flanneld
//     drops it). Overlaps are checked per family.
//   - After an apiserver outage a fresh informer is started as soon as the
//     apiserver answers (see probeInterval) instead of waiting out
//     client-go's backoff; its first batch is Full.
package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	authv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/metrics"
)

// DefaultNetConfPath is flanneld's default --net-config-path.
const DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"

// ErrForbidden means the service account lacks an RBAC permission weftd
// needs; the error names the verb and resource.
var ErrForbidden = errors.New("missing RBAC permission")

// Options configure a Manager; the fields are flanneld's flags and env.
type Options struct {
	APIURL           string // --kube-api-url
	Kubeconfig       string // --kubeconfig-file; both empty: in-cluster config
	AnnotationPrefix string // --kube-annotation-prefix
	NetConfPath      string // --net-config-path
	NodeName         string // NODE_NAME
	PodName          string // POD_NAME, with PodNamespace when NodeName is empty
	PodNamespace     string // POD_NAMESPACE
}

// Manager is one node's view of the cluster through the apiserver.
type Manager struct {
	client   *apiClient
	ann      Annotations
	cfg      *flannel.NetworkConfig
	nodeName string
	log      *zap.Logger
	metrics  *metrics.Metrics

	unmanaged map[string]bool                    // Nodes that are not peers; Watch's goroutine only
	published atomic.Pointer[flannel.LeaseAttrs] // what Publish last wrote
	republish chan struct{}                      // checkOwn -> republishLoop
}

// RESTConfig builds the client config like flanneld: the URL and/or
// kubeconfig when given, else the in-cluster service account.
func RESTConfig(o Options) (*rest.Config, error) {
	if o.APIURL == "" && o.Kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kube client: no --kube-api-url or --kubeconfig-file and not in a pod: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags(o.APIURL, o.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kube client: %w", err)
	}
	return c, nil
}

// ReadNetConf reads and validates the network config file.
func ReadNetConf(path string) (*flannel.NetworkConfig, error) {
	if path == "" {
		path = DefaultNetConfPath
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read --net-config-path: %w", err)
	}
	c, err := flannel.ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// New connects to the apiserver, finds this node's name, checks the RBAC
// permissions weftd uses and reads the network config. log and m may be nil.
func New(ctx context.Context, o Options, log *zap.Logger, m *metrics.Metrics) (*Manager, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = new(metrics.Metrics)
	}
	ann, err := NewAnnotations(o.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	cfg, err := ReadNetConf(o.NetConfPath)
	if err != nil {
		return nil, err
	}
	rc, err := RESTConfig(o)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "weftd"
	cs, err := newAPIClient(rc)
	if err != nil {
		return nil, err
	}
	mgr := &Manager{client: cs, ann: ann, cfg: cfg, log: log, metrics: m, republish: make(chan struct{}, 1)}
	// The apiserver may not answer yet (a node booting with the control
	// plane): wait for it like flanneld does for its node controller.
	if err := mgr.retry(ctx, "find this node's name", func() (err error) {
		mgr.nodeName, err = mgr.findNodeName(ctx, o)
		return err
	}); err != nil {
		return nil, err
	}
	if err := mgr.retry(ctx, "check RBAC permissions", func() error { return mgr.CheckAccess(ctx) }); err != nil {
		return nil, err
	}
	return mgr, nil
}

// retry runs fn until it succeeds, fails for good (the apiserver refused:
// forbidden, unauthorized, not found, invalid) or ctx ends; transient
// failures (unreachable, timeouts, 5xx) are logged, counted and retried
// with a backoff from 0.5 s to 10 s.
func (m *Manager) retry(ctx context.Context, what string, fn func() error) error {
	delay := 500 * time.Millisecond
	for {
		err := fn()
		if err == nil || permanent(err) || ctx.Err() != nil {
			return err
		}
		m.metrics.StoreErrors.Add(1)
		m.log.Warn("kube-apiserver call failed, retrying", zap.String("what", what), zap.Duration("in", delay), zap.Error(err))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 10*time.Second)
	}
}

func permanent(err error) bool {
	return errors.Is(err, ErrForbidden) || apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) ||
		apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) ||
		errors.Is(err, errNotScheduled) || errors.Is(err, errNoNodeName)
}

var (
	errNoNodeName   = errors.New("kube: set NODE_NAME, or POD_NAME and POD_NAMESPACE, to name this node")
	errNotScheduled = errors.New("pod is not scheduled to a node (spec.nodeName is empty)")
)

// NetworkConfig is the config read from --net-config-path.
func (m *Manager) NetworkConfig() *flannel.NetworkConfig { return m.cfg }

// NodeName is this node's name.
func (m *Manager) NodeName() string { return m.nodeName }

// findNodeName is NODE_NAME, else the node of the pod POD_NAMESPACE/POD_NAME
// (what the DaemonSet passes through the downward API), as flanneld.
func (m *Manager) findNodeName(ctx context.Context, o Options) (string, error) {
	if o.NodeName != "" {
		return o.NodeName, nil
	}
	if o.PodName == "" || o.PodNamespace == "" {
		return "", errNoNodeName
	}
	pod, err := m.client.getPod(ctx, o.PodNamespace, o.PodName)
	if err != nil {
		return "", apiError("get", "pods", err)
	}
	if pod.Spec.NodeName == "" {
		return "", fmt.Errorf("kube: pod %s/%s: %w", o.PodNamespace, o.PodName, errNotScheduled)
	}
	return pod.Spec.NodeName, nil
}

// access is every permission weftd uses on the apiserver (pods get only
// when the node is found through POD_NAME, checked by that call itself).
var access = []authv1.ResourceAttributes{
	{Verb: "get", Resource: "nodes"},
	{Verb: "list", Resource: "nodes"},
	{Verb: "watch", Resource: "nodes"},
	{Verb: "patch", Resource: "nodes", Subresource: "status"},
}

// CheckAccess asks the apiserver (SelfSubjectAccessReview, open to every
// authenticated user) whether weftd may do what it needs, so a missing
// ClusterRole rule fails at start with its verb and resource instead of
// leaving the informer retrying a forbidden list in the background.
func (m *Manager) CheckAccess(ctx context.Context) error {
	var missing []error
	for _, ra := range access {
		r := &authv1.SelfSubjectAccessReview{Spec: authv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}
		got, err := m.client.createSelfSubjectAccessReview(ctx, r)
		if err != nil {
			return fmt.Errorf("kube: check RBAC permissions: %w", err)
		}
		if !got.Status.Allowed {
			missing = append(missing, fmt.Errorf("%w: verb %q on resource %q", ErrForbidden, ra.Verb, resourceName(ra)))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kube: the service account may not do what weftd needs (see deploy/kube-weft.yml's ClusterRole): %w", errors.Join(missing...))
	}
	return nil
}

func resourceName(ra authv1.ResourceAttributes) string {
	if ra.Subresource != "" {
		return ra.Resource + "/" + ra.Subresource
	}
	return ra.Resource
}

// apiError names the call, and for a 403 says it is a missing permission.
func apiError(verb, resource string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("kube: %w: verb %q on resource %q: %v", ErrForbidden, verb, resource, err)
	}
	return fmt.Errorf("kube: %s %s: %w", verb, resource, err)
}

// Own is this node as its Node object describes it.
type Own struct {
	Subnet     netip.Prefix // IPv4 podCIDR; zero in an IPv6-only network
	IPv6Subnet netip.Prefix // IPv6 podCIDR; zero without IPv6
	// VtepMAC from the Node's own backend-data annotation (nil when absent
	// or malformed): reused so that a restart or a new image does not move
	// the MAC peers have programmed.
	VtepMAC net.HardwareAddr
	// PublicIPOverwrite is the admin's public-ip-overwrite annotation, which
	// replaces the address weftd would publish (zero when absent).
	PublicIPOverwrite netip.Addr
	// PublicIPv6Overwrite is the same for public-ipv6-overwrite.
	PublicIPv6Overwrite netip.Addr
}

// waitPodCIDR is how often the own Node is re-read while it has no podCIDR.
var waitPodCIDR = 2 * time.Second

// OwnNode reads this node's Node. While it has no podCIDR (the controller
// manager has not assigned one yet) it waits and retries, logging; a
// podCIDR outside the Network is an error, as are unreadable annotations.
// A Node without any annotation is fine: it has not been published yet.
func (m *Manager) OwnNode(ctx context.Context) (Own, error) {
	for {
		n, err := m.client.getNode(ctx, m.nodeName)
		if err != nil {
			m.metrics.StoreErrors.Add(1)
			if apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || ctx.Err() != nil {
				return Own{}, apiError("get", "nodes", err)
			}
			m.log.Warn("reading own Node, retrying", zap.String("node", m.nodeName), zap.Error(err))
		} else {
			own, err := m.ownFrom(n)
			if !errors.Is(err, ErrNoPodCIDR) {
				return own, err
			}
			m.log.Warn("own Node has no podCIDR yet; waiting for the controller manager to assign one",
				zap.String("node", m.nodeName), zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return Own{}, ctx.Err()
		case <-time.After(waitPodCIDR):
		}
	}
}

func (m *Manager) ownFrom(n *corev1.Node) (Own, error) {
	sn, sn6, err := podCIDRsFor(m.cfg, n)
	if errors.Is(err, flannel.ErrOutsideNetwork) {
		return Own{}, fmt.Errorf("kube: node %s: %w (fix --cluster-cidr of the controller manager or Network/IPv6Network in %s)",
			n.Name, err, "net-conf.json")
	}
	if err != nil {
		return Own{}, fmt.Errorf("kube: node %s: %w", n.Name, err)
	}
	if m.cfg.IPv6Network.IsValid() && !sn6.IsValid() {
		m.log.Warn("own Node has no IPv6 podCIDR in a dual-stack network; serving IPv4 pods only (give the controller manager an IPv6 --cluster-cidr)",
			zap.String("node", n.Name), zap.Strings("pod_cidrs", n.Spec.PodCIDRs))
	}
	own := Own{Subnet: sn, IPv6Subnet: sn6}
	// The VtepMAC published before, by either family (Weft publishes one
	// MAC in both).
	for _, k := range []string{m.ann.BackendData, m.ann.BackendV6Data} {
		raw, ok := n.Annotations[k]
		if !ok || own.VtepMAC != nil {
			continue
		}
		if d, err := flannel.ParseVXLANData([]byte(raw)); err == nil {
			own.VtepMAC = d.VtepMAC
		} else {
			m.log.Warn("own "+k+" annotation is unreadable; publishing a new VtepMAC", zap.String("node", n.Name), zap.Error(err))
		}
	}
	if s, ok := n.Annotations[m.ann.PublicIPv6Overwrite]; ok && s != "" {
		ip, err := flannel.ParsePublicIPv6(s)
		if err != nil {
			return Own{}, fmt.Errorf("kube: node %s: annotation %s: %w", n.Name, m.ann.PublicIPv6Overwrite, err)
		}
		own.PublicIPv6Overwrite = ip
	}
	if s, ok := n.Annotations[m.ann.PublicIPOverwrite]; ok && s != "" {
		ip, err := flannel.ParsePublicIP(s)
		if err != nil {
			return Own{}, fmt.Errorf("kube: node %s: annotation %s: %w", n.Name, m.ann.PublicIPOverwrite, err)
		}
		own.PublicIPOverwrite = ip
	}
	return own, nil
}
