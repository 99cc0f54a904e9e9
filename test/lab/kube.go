package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/deploy"
	"github.com/weftnet/weft/test/kubetest"
	"github.com/weftnet/weft/test/topo"
)

// Store says where the lab's nodes keep their leases.
type Store string

const (
	StoreEtcd Store = "etcd" // flannel's etcd schema (the default)
	StoreKube Store = "kube" // Node objects on a real kube-apiserver (flanneld --kube-subnet-mgr)
)

// Kubernetes mode: the apiserver runs on the lab's etcd and is exposed on
// the underlay at <underlay>.3:6443. weftd authenticates as the manifest's
// ServiceAccount, so the manifest's RBAC is what the lab runs under.
const (
	apiPort         = 6443
	kubeNamespace   = "kube-weft"
	kubeSA          = "weft"
	annPrefix       = "flannel.alpha.coreos.com/"
	annBackendType  = annPrefix + "backend-type"
	annBackendData  = annPrefix + "backend-data"
	annPublicIP     = annPrefix + "public-ip"
	annKubeManaged  = annPrefix + "kube-subnet-manager"
	annBackendData6 = annPrefix + "backend-v6-data"
	annPublicIP6    = annPrefix + "public-ipv6"
	kubeInformerTTL = 5 * time.Minute
)

// Kube is the lab's Kubernetes side in StoreKube mode.
type Kube struct {
	API         *kubetest.APIServer
	Fwd         *kubetest.Forwarder
	Client      kubernetes.Interface // admin, on loopback
	NetConfFile string               // --net-config-path of every weftd
	next        int                  // the next subnet index the lab hands out
	next6       int                  // the same for IPv6 podCIDRs
}

func (c *Cluster) initKube(ctx context.Context) error {
	if c.Opts.Manifest == "" {
		c.Opts.Manifest = filepath.Join(c.Opts.RunDir, "kube-weft.yml")
		if err := os.WriteFile(c.Opts.Manifest, deploy.KubeWeftYAML, 0o644); err != nil {
			return fmt.Errorf("kube lab: %w", err)
		}
	}
	c.Opts.Logf("starting kube-apiserver on etcd %s", c.Etcd.ClientURL.String())
	api, err := kubetest.StartAPIServer(ctx, filepath.Join(c.Opts.RunDir, "apiserver"), c.Etcd.ClientURL.String())
	if err != nil {
		return err
	}
	k := &Kube{API: api, Client: api.Client(), NetConfFile: filepath.Join(c.Opts.RunDir, "net-conf.json"), next: 1, next6: 1}
	c.Kube = k
	addr, err := c.Lab.ServiceAddrAny(3)
	if err != nil {
		return err
	}
	if k.Fwd, err = api.Expose(func(fn func() error) error { return topo.Do(c.Lab.UnderlayPath, fn) }, netip.AddrPortFrom(addr, apiPort)); err != nil {
		return err
	}
	if err := api.Apply(ctx, c.Opts.Manifest); err != nil {
		return fmt.Errorf("kube lab: apply %s: %w", c.Opts.Manifest, err)
	}
	if err := os.WriteFile(k.NetConfFile, []byte(c.Opts.NetConfig), 0o644); err != nil {
		return fmt.Errorf("kube lab: %w", err)
	}
	c.Opts.Logf("kube-apiserver ready at %s, manifest %s applied", k.Fwd.URL(), c.Opts.Manifest)
	return nil
}

// nextSubnet is what the controller manager would assign the next Node:
// 10.244.1.0/24, 10.244.2.0/24, ... (never one a flannel node took).
func (c *Cluster) nextSubnet() netip.Prefix {
	for {
		a := c.Opts.Network.Addr().As4()
		a[2] = byte(c.Kube.next)
		c.Kube.next++
		sn := netip.PrefixFrom(netip.AddrFrom4(a), 24)
		taken := false
		for _, n := range c.Nodes {
			taken = taken || n.Subnet == sn
		}
		if !taken {
			return sn
		}
	}
}

// nextSubnet6 is the IPv6 podCIDR the controller manager would assign
// next in a dual-stack cluster: the /64s of Network6 from number 1 (never
// one a flannel node took).
func (c *Cluster) nextSubnet6() netip.Prefix {
	for {
		b := c.Opts.Network6.Masked().Addr().As16()
		b[6], b[7] = byte(c.Kube.next6>>8), byte(c.Kube.next6)
		c.Kube.next6++
		sn := netip.PrefixFrom(netip.AddrFrom16(b), 64)
		taken := false
		for _, n := range c.Nodes {
			taken = taken || n.Subnet6 == sn
		}
		if !taken {
			return sn
		}
	}
}

// CreateNode creates the Node object as the kubelet and the controller
// manager would: no annotations, spec.podCIDR(s) = subnet, and the IPv6
// subnets after it (a dual-stack Node); an invalid subnet is left out
// (an IPv6-only Node).
func (k *Kube) CreateNode(ctx context.Context, name string, subnet netip.Prefix, subnets6 ...netip.Prefix) error {
	var cidrs []string
	for _, p := range append([]netip.Prefix{subnet}, subnets6...) {
		if p.IsValid() {
			cidrs = append(cidrs, p.String())
		}
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}},
		Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
	if len(cidrs) > 0 {
		n.Spec.PodCIDR = cidrs[0]
	}
	if _, err := k.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	return nil
}

// kubeWeftdCommand is how a kube-mode weftd starts: NODE_NAME in the
// environment (the DaemonSet sets it from spec.nodeName), a ServiceAccount
// kubeconfig pointing at the forwarder on the underlay.
func (c *Cluster) kubeWeftdCommand(n *Node, extra ...string) (string, []string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sn, sn6 := c.nodeSubnets(n)
	if err := c.Kube.CreateNode(ctx, n.Name, sn, sn6); err != nil {
		return "", nil, err
	}
	kc := filepath.Join(c.Opts.RunDir, n.Name, "kubeconfig")
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		return "", nil, err
	}
	if err := c.Kube.API.ServiceAccountKubeconfig(ctx, kubeNamespace, kubeSA, c.Kube.Fwd.URL(), kc); err != nil {
		return "", nil, err
	}
	env := n.KubeEnv
	if len(env) == 0 {
		env = []string{"NODE_NAME=" + n.Name}
	}
	args := append(slices.Clone(env),
		filepath.Join(c.Opts.BinDir, "weftd"),
		"--kube-subnet-mgr",
		"--kubeconfig-file", kc,
		"--net-config-path", c.Kube.NetConfFile,
		"--iface", n.Topo.UnderlayIf,
		"--pin-path", n.PinPath,
		"--subnet-file", n.SubnetFile,
		"--metrics-addr", netip.AddrPortFrom(n.Topo.Addr(), metricsPort).String(),
	)
	if c.Opts.Network6.IsValid() && n.Topo.UnderlayIP6.IsValid() {
		args = append(args, "--public-ipv6", n.Topo.UnderlayIP6.String())
	}
	return "/usr/bin/env", append(args, extra...), nil
}

// nodeSubnets are the podCIDRs the lab assigned n, IPv4 and IPv6, each
// invalid where the network lacks the family (assigning them the first
// time: a restarted weftd finds its Node as it left it).
func (c *Cluster) nodeSubnets(n *Node) (netip.Prefix, netip.Prefix) {
	if !n.podCIDR.IsValid() && !n.podCIDR6.IsValid() {
		if !c.Opts.IPv6Only {
			n.podCIDR = c.nextSubnet()
		}
		if c.Opts.Network6.IsValid() {
			n.podCIDR6 = c.nextSubnet6()
		}
	}
	return n.podCIDR, n.podCIDR6
}

// FlannelAnnotations are a vxlan node's lease annotations exactly as
// flanneld writes them.
func FlannelAnnotations(publicIP netip.Addr, vtep net.HardwareAddr) map[string]string {
	return map[string]string{
		annBackendType: "vxlan",
		annBackendData: fmt.Sprintf(`{"VNI":%d,"VtepMAC":"%s"}`, 1, vtep),
		annPublicIP:    publicIP.String(),
		annKubeManaged: "true",
	}
}

// FlannelAnnotations6 adds the IPv6 half flanneld writes for a node with
// an IPv6 podCIDR, in the same patch: public-ipv6 and backend-v6-data.
// publicIP invalid: an IPv6-only node, without the IPv4 half.
func FlannelAnnotations6(publicIP, publicIP6 netip.Addr, vtep, vtep6 net.HardwareAddr) map[string]string {
	a := map[string]string{annBackendType: "vxlan", annKubeManaged: "true"}
	if publicIP.IsValid() {
		a = FlannelAnnotations(publicIP, vtep)
	}
	a[annPublicIP6] = publicIP6.String()
	a[annBackendData6] = fmt.Sprintf(`{"VNI":%d,"VtepMAC":"%s"}`, 1, vtep6)
	return a
}

// PatchAnnotations sets annotations on a Node through nodes/status, the
// way flanneld publishes its lease.
func (k *Kube) PatchAnnotations(ctx context.Context, name string, ann map[string]string) error {
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := k.Client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, b, metav1.PatchOptions{}, "status"); err != nil {
		return fmt.Errorf("patch node %s: %w", name, err)
	}
	return nil
}

// addKubeFlannelNode is AddFlannelNode in Kubernetes mode: a Node with the
// podCIDR, the lease annotations flanneld would write, and flannel.1
// programmed from the other Nodes' annotations by an informer, as flanneld
// --kube-subnet-mgr does. Like the etcd version it reads annotations with
// its own small parser, not control/kube.
func (c *Cluster) addKubeFlannelNode(f *flannelNode) error {
	n := f.node
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Kube.CreateNode(ctx, n.Name, n.Subnet, n.Subnet6); err != nil {
		return err
	}
	ann := FlannelAnnotations(n.Topo.UnderlayIP, n.VtepMAC)
	if n.Subnet6.IsValid() {
		var ip4 netip.Addr
		if n.Subnet.IsValid() {
			ip4 = n.Topo.UnderlayIP
		}
		ann = FlannelAnnotations6(ip4, n.Topo.UnderlayIP6, n.Topo.Flannel.VtepMAC, n.Topo.Flannel.VtepMAC6)
	}
	if err := c.Kube.PatchAnnotations(ctx, n.Name, ann); err != nil {
		return err
	}
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return c.Kube.Client.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return c.Kube.Client.CoreV1().Nodes().Watch(ctx, o)
		},
	}, &corev1.Node{}, kubeInformerTTL, cache.Indexers{})
	sync := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		node, ok := obj.(*corev1.Node)
		if !ok || node.Name == n.Name {
			return
		}
		key := "node/" + node.Name
		if p, ok := flannelPeerFromNode(node); ok {
			f.program(key, p)
		} else {
			f.unprogram(key)
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    sync,
		UpdateFunc: func(_, o any) { sync(o) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if node, ok := obj.(*corev1.Node); ok {
				f.unprogram("node/" + node.Name)
			}
		},
	})
	ictx, icancel := context.WithCancel(context.Background())
	f.cancel = icancel
	go func() {
		defer close(f.done)
		inf.RunWithContext(ictx)
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("flannel node %s: node informer did not sync", n.Name)
	}
	return nil
}

// flannelPeerFromNode reads a peer from a Node as flanneld does: managed,
// vxlan; per family a podCIDR of it, a public IP and a VtepMAC (IPv4:
// public-ip, backend-data; IPv6: public-ipv6, backend-v6-data).
func flannelPeerFromNode(n *corev1.Node) (topo.FlannelPeer, bool) {
	a := n.Annotations
	if a[annKubeManaged] != "true" || a[annBackendType] != "vxlan" {
		return topo.FlannelPeer{}, false
	}
	vtep := func(key string) net.HardwareAddr {
		var d struct{ VtepMAC string }
		if json.Unmarshal([]byte(a[key]), &d) != nil {
			return nil
		}
		mac, _ := net.ParseMAC(d.VtepMAC)
		return mac
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	var p topo.FlannelPeer
	for _, s := range cidrs {
		sn, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		if sn.Addr().Is4() {
			ip, err := netip.ParseAddr(a[annPublicIP])
			if mac := vtep(annBackendData); err == nil && mac != nil {
				p.Subnet, p.PublicIP, p.VtepMAC = sn.Masked(), ip, mac
			}
		} else {
			ip, err := netip.ParseAddr(a[annPublicIP6])
			if mac := vtep(annBackendData6); err == nil && mac != nil {
				p.Subnet6, p.PublicIP6, p.VtepMAC6 = sn.Masked(), ip, mac
			}
		}
	}
	if !p.Subnet.IsValid() && !p.Subnet6.IsValid() {
		return topo.FlannelPeer{}, false
	}
	return p, true
}
