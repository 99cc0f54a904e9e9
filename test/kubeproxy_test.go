package test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/test/kubetest"
	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

// kubeProxyArgs are the flags every test kube-proxy runs with. kube-proxy
// must change nothing outside its node's network namespace, so what it
// would write globally is turned off:
//   - --conntrack-max-per-core=0: leave net.netfilter.nf_conntrack_max (and
//     the nf_conntrack hashsize module parameter) alone; both are global.
//   - --conntrack-tcp-timeout-established=0, --conntrack-tcp-timeout-close-wait=0:
//     leave the conntrack timeouts as they are (per netns on this kernel, but
//     nothing here needs them changed).
//   - --oom-score-adj=0: do not make the process unkillable on a shared machine.
//   - metrics and healthz on the node's own underlay address, inside its netns.
//
// What it still writes is per network namespace: its iptables/nftables
// tables and net.ipv4.conf.all.route_localnet (iptables mode).
func kubeProxyArgs(n *lab.Node, kubeconfig, mode string, network netip.Prefix) []string {
	ip := n.Topo.UnderlayIP.String()
	return []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--proxy-mode=" + mode,
		"--cluster-cidr=" + network.String(),
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--oom-score-adj=0",
		"--metrics-bind-address=" + ip + ":10249",
		"--healthz-bind-address=" + ip + ":10256",
		"--v=2",
	}
}

// kubeCluster is a lab cluster with a real kube-apiserver, Node objects for
// its nodes and a real kube-proxy in every node's namespace.
type kubeCluster struct {
	*lab.Cluster
	api    *kubetest.APIServer
	client kubernetes.Interface
}

func startKube(t *testing.T, c *lab.Cluster, mode string) *kubeCluster {
	t.Helper()
	ctx := testCtx(t, 5*time.Minute)
	api, err := kubetest.StartAPIServer(ctx, filepath.Join(t.TempDir(), "apiserver"), c.Etcd.ClientURL.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log:\n%s", api.LogTail(30))
		}
		api.Close()
	})
	addr, err := c.Lab.ServiceAddr(2)
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := api.Expose(func(fn func() error) error { return topo.Do(c.Lab.UnderlayPath, fn) }, netip.AddrPortFrom(addr, 6443))
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kube-proxy.kubeconfig")
	if err := api.AdminKubeconfig(fwd.URL(), kubeconfig); err != nil {
		t.Fatal(err)
	}
	kc := &kubeCluster{Cluster: c, api: api, client: api.Client()}
	bins, err := kubetest.Binaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name},
			Spec:       corev1.NodeSpec{PodCIDR: n.Subnet.String(), PodCIDRs: []string{n.Subnet.String()}},
		}
		created, err := kc.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.Topo.UnderlayIP.String()},
			{Type: corev1.NodeHostName, Address: n.Name}}
		if _, err := kc.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		cmd, err := n.Topo.Start(bins.KubeProxy, kubeProxyArgs(n, kubeconfig, mode, c.Opts.Network)...)
		if err != nil {
			t.Fatalf("start kube-proxy on %s: %v", n.Name, err)
		}
		n := n
		t.Cleanup(func() {
			if t.Failed() {
				if b, err := os.ReadFile(c.Lab.LogPath(cmd)); err == nil {
					if len(b) > 6000 {
						b = b[len(b)-6000:]
					}
					t.Logf("kube-proxy log of %s:\n%s", n.Name, b)
				}
			}
			c.Lab.Stop(cmd)
		})
	}
	return kc
}

// service creates a selectorless Service with TCP and UDP ports named
// "tcp"/"udp" (port -> targetPort) and the EndpointSlice the controller
// manager would write for backends (pod IP -> node name). It returns the
// ClusterIP and, for NodePort Services, the TCP and UDP node ports.
func (kc *kubeCluster) service(t *testing.T, name string, port, targetPort int32, typ corev1.ServiceType,
	policy corev1.ServiceExternalTrafficPolicy, backends map[netip.Addr]string) (netip.Addr, [2]uint16) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{
			{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(targetPort)},
			{Name: "udp", Protocol: corev1.ProtocolUDP, Port: port, TargetPort: intstr.FromInt32(targetPort)},
		}},
	}
	if typ == corev1.ServiceTypeNodePort {
		svc.Spec.ExternalTrafficPolicy = policy
	}
	svc, err := kc.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "weft-test"}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range []struct {
		name  string
		proto corev1.Protocol
	}{{"tcp", corev1.ProtocolTCP}, {"udp", corev1.ProtocolUDP}} {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr(p.name), Protocol: ptr(p.proto), Port: ptr(targetPort)})
	}
	for ip, node := range backends {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: ptr(node)})
	}
	if _, err := kc.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var nodePorts [2]uint16
	if typ == corev1.ServiceTypeNodePort {
		nodePorts = [2]uint16{uint16(svc.Spec.Ports[0].NodePort), uint16(svc.Spec.Ports[1].NodePort)}
	}
	return netip.MustParseAddr(svc.Spec.ClusterIP), nodePorts
}

func ptr[T any](v T) *T { return &v }

// TestKubeProxy is issue 10 with the real kube-proxy (built from the pinned
// k8s.io/kubernetes, one per node namespace) in front of Weft: ClusterIP
// TCP and UDP from a pod to a backend on the same node, on another Weft
// node and on a flannel-style kernel-vxlan node, a pod reaching itself
// through its Service (hairpin), 100 MB intact through a Service, and
// NodePort from an outside host (a netns on the underlay with no route to
// the pod network) with externalTrafficPolicy Cluster and Local. Two runs
// cover both kube-proxy modes and both decap modes: iptables with tc
// decap, nftables with XDP decap. Weft runs with --ip-masq, as flannel
// does in kube-flannel.yml, and egress to the outside host is masqueraded.
func TestKubeProxy(t *testing.T) {
	for _, m := range []struct{ proxy, decap string }{{"iptables", "tc"}, {"nftables", "xdp"}} {
		t.Run(m.proxy+"-"+m.decap, func(t *testing.T) { testKubeProxy(t, m.proxy, m.decap) })
	}
}

func testKubeProxy(t *testing.T, mode, decap string) {
	// --ip-masq as kube-flannel.yml runs flanneld: beside kube-proxy's own NAT.
	sc := newServiceCluster(t, "--decap", decap, "--ip-masq")
	c, n1, n2, k1 := sc.c, sc.n1, sc.n2, sc.k1
	client, local, remote, flannel := sc.client, sc.local, sc.remote, sc.flannel
	outside, err := c.Lab.AddNode("outside")
	if err != nil {
		t.Fatal(err)
	}
	const port, target = 80, 8080
	for _, p := range []*topo.Pod{client, local, remote, flannel} {
		startEcho(t, p.NSPath, netip.AddrPortFrom(p.IP, target))
	}

	t0 := time.Now()
	kc := startKube(t, c, mode)
	t.Logf("kube-apiserver and 3 kube-proxies (%s) started in %v", mode, time.Since(t0).Round(time.Millisecond))

	cluster := map[string]struct {
		backend *topo.Pod
		node    *lab.Node
	}{"same-node": {local, n1}, "other-weft-node": {remote, n2}, "flannel-node": {flannel, k1}, "hairpin": {client, n1}}
	svcs := map[string]netip.Addr{}
	for name, b := range cluster {
		ip, _ := kc.service(t, name, port, target, corev1.ServiceTypeClusterIP, "", map[netip.Addr]string{b.backend.IP: b.node.Name})
		svcs[name] = ip
	}
	bulkIP, _ := kc.service(t, "bulk", 90, 9090, corev1.ServiceTypeClusterIP, "", map[netip.Addr]string{remote.IP: n2.Name})
	_, npCluster := kc.service(t, "np-cluster", port, target, corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyCluster,
		map[netip.Addr]string{remote.IP: n2.Name})
	_, npLocal := kc.service(t, "np-local", port, target, corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal,
		map[netip.Addr]string{remote.IP: n2.Name})
	// The same two, to a port where a test socket reports the client address the backend sees.
	const whoami = 8081
	_, npClusterSrc := kc.service(t, "np-cluster-src", port, whoami, corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyCluster,
		map[netip.Addr]string{remote.IP: n2.Name})
	_, npLocalSrc := kc.service(t, "np-local-src", port, whoami, corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal,
		map[netip.Addr]string{remote.IP: n2.Name})

	t.Run("ClusterIP", func(t *testing.T) {
		for name, ip := range svcs {
			t.Run(name, func(t *testing.T) {
				for _, proto := range []string{"tcp", "udp"} {
					checkEcho(t, client.NSPath, proto, netip.AddrPortFrom(ip, port))
				}
			})
		}
	})
	t.Run("100MB", func(t *testing.T) {
		const size = 100 << 20
		res, err := lab.TransferTCPVia(testCtx(t, 2*time.Minute), client.NSPath, remote.NSPath,
			netip.AddrPortFrom(remote.IP, 9090), netip.AddrPortFrom(bulkIP, 90), size)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Intact(size) {
			t.Fatalf("%d of %d bytes, sha256 sent %s received %s", res.Bytes, size, res.SentSum, res.RecvSum)
		}
		t.Logf("100 MB through ClusterIP %s (%s): %.2f Gbit/s", bulkIP, mode, res.Gbps())
	})
	t.Run("NodePort", func(t *testing.T) {
		// Cluster: to n1, whose kube-proxy forwards, masqueraded, to n2's pod.
		checkEcho(t, outside.NSPath, "tcp", netip.AddrPortFrom(n1.Topo.UnderlayIP, npCluster[0]))
		checkEcho(t, outside.NSPath, "udp", netip.AddrPortFrom(n1.Topo.UnderlayIP, npCluster[1]))
		src, replied := sourceSeenVia(t, outside.NSPath, remote.NSPath, netip.AddrPortFrom(remote.IP, whoami),
			netip.AddrPortFrom(n1.Topo.UnderlayIP, npClusterSrc[1]))
		if !replied || src == outside.UnderlayIP {
			t.Errorf("Cluster policy via n1: backend saw %s (replied %v), want n1's masquerade address", src, replied)
		}
		// Local: to n2, the node with the backend; the client address is kept.
		checkEcho(t, outside.NSPath, "tcp", netip.AddrPortFrom(n2.Topo.UnderlayIP, npLocal[0]))
		checkEcho(t, outside.NSPath, "udp", netip.AddrPortFrom(n2.Topo.UnderlayIP, npLocal[1]))
		src, replied = sourceSeenVia(t, outside.NSPath, remote.NSPath, netip.AddrPortFrom(remote.IP, whoami),
			netip.AddrPortFrom(n2.Topo.UnderlayIP, npLocalSrc[1]))
		if !replied || src != outside.UnderlayIP {
			t.Errorf("Local policy via n2: backend saw %s (replied %v), want the outside host's %s", src, replied, outside.UnderlayIP)
		}
		// A pod on n1 calling n2's NodePort (Local): --ip-masq on n1 sends it
		// as n1's address, so the answer comes back on the underlay.
		checkEcho(t, client.NSPath, "tcp", netip.AddrPortFrom(n2.Topo.UnderlayIP, npLocal[0]))
		checkEcho(t, client.NSPath, "udp", netip.AddrPortFrom(n2.Topo.UnderlayIP, npLocal[1]))
	})
	t.Run("EgressMasqueraded", func(t *testing.T) {
		src, replied := sourceSeen(t, client.NSPath, outside.NSPath, netip.AddrPortFrom(outside.UnderlayIP, 7000))
		if src != n1.Topo.UnderlayIP || !replied {
			t.Errorf("outside host saw %s (replied %v), want n1's %s", src, replied, n1.Topo.UnderlayIP)
		}
	})
	for _, n := range []*lab.Node{n1, n2} {
		t.Logf("%s pass_conntrack %d", n.Name, counter(t, n, "pass_conntrack"))
	}
}
