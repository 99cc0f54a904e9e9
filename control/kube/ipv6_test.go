package kube

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

// Dual-stack and IPv6-only Nodes, as flanneld's kube subnet manager
// writes them (pkg/subnet/kube AcquireLease: backend-v6-data and
// public-ipv6 beside the IPv4 pair, in the same PATCH; nodeToLease reads
// the IPv6 entry of spec.podCIDRs).

const (
	dualNetConf   = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}`
	v6OnlyNetConf = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}`
)

func mustConfig(t *testing.T, js string) *flannel.NetworkConfig {
	t.Helper()
	c, err := flannel.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// node6 is a dual-stack flannel node (cidr6 and ip6 set), or an IPv4 one.
func node6(name, cidr, cidr6, ip, ip6, mac string, age int) *corev1.Node {
	n := node(name, cidr, ip, mac, age)
	n.Spec.PodCIDRs = nil
	if cidr != "" {
		n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, cidr)
	}
	if cidr6 != "" {
		n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, cidr6)
		if n.Spec.PodCIDR == "" {
			n.Spec.PodCIDR = cidr6
		}
	}
	if ip6 != "" {
		n.Annotations["flannel.alpha.coreos.com/public-ipv6"] = ip6
		n.Annotations["flannel.alpha.coreos.com/backend-v6-data"] = `{"VNI":1,"VtepMAC":"` + mac + `"}`
	}
	if ip == "" { // IPv6-only: flanneld writes no IPv4 pair
		delete(n.Annotations, "flannel.alpha.coreos.com/public-ip")
		delete(n.Annotations, "flannel.alpha.coreos.com/backend-data")
	}
	return n
}

func TestParseNodeIPv6(t *testing.T) {
	ann, _ := NewAnnotations("")
	dual, v6only := mustConfig(t, dualNetConf), mustConfig(t, v6OnlyNetConf)

	l, bad := ann.ParseNode(dual, node6("a", "10.244.3.0/24", "fd10:244:0:3::/64", "192.168.9.3", "fd00:9::3", "0e:00:00:00:00:03", 0))
	if bad != nil || l.Subnet.String() != "10.244.3.0/24" || l.IPv6Subnet.String() != "fd10:244:0:3::/64" ||
		l.PublicIPv6().String() != "fd00:9::3" || l.VXLANv6.VtepMAC.String() != "0e:00:00:00:00:03" || l.PublicIP().String() != "192.168.9.3" {
		t.Fatalf("dual-stack node: %+v %v", l, bad)
	}
	// Its record in the etcd schema is flannel's dual-stack value.
	if string(l.Value) != `{"PublicIP":"192.168.9.3","PublicIPv6":"fd00:9::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}}` {
		t.Fatalf("value %s", l.Value)
	}
	// v6-in-v4: an IPv6 podCIDR, no public-ipv6: reached over IPv4.
	l, bad = ann.ParseNode(dual, node6("b", "10.244.4.0/24", "fd10:244:0:4::/64", "192.168.9.4", "", "0e:00:00:00:00:04", 0))
	if bad != nil || l.IPv6Subnet.String() != "fd10:244:0:4::/64" || l.PublicIPv6().IsValid() || l.VXLANv6.VtepMAC.String() != "0e:00:00:00:00:04" {
		t.Fatalf("v6-in-v4 node: %+v %v", l, bad)
	}
	// An IPv4-only Node in a dual-stack network is an IPv4 peer.
	l, bad = ann.ParseNode(dual, node("c", "10.244.5.0/24", "192.168.9.5", "0e:00:00:00:00:05", 0))
	if bad != nil || l.HasIPv6() || !l.HasIPv4() {
		t.Fatalf("IPv4-only node: %+v %v", l, bad)
	}
	// IPv6-only network and node.
	l, bad = ann.ParseNode(v6only, node6("d", "", "fd10:244:0:6::/64", "", "fd00:9::6", "0e:00:00:00:00:06", 0))
	if bad != nil || l.HasIPv4() || l.IPv6Subnet.String() != "fd10:244:0:6::/64" || l.PublicIPv6().String() != "fd00:9::6" {
		t.Fatalf("IPv6-only node: %+v %v", l, bad)
	}
	if string(l.Value) != `{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:9::6","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:06"}}` {
		t.Fatalf("value %s", l.Value)
	}

	for name, tc := range map[string]struct {
		cfg *flannel.NetworkConfig
		n   *corev1.Node
		is  error
	}{
		"IPv6 podCIDR outside IPv6Network": {dual, node6("x", "10.244.3.0/24", "fd99::/64", "192.168.9.3", "fd00:9::3", "0e:00:00:00:00:03", 0), flannel.ErrOutsideNetwork},
		"two IPv6 podCIDRs":                {dual, node6("x", "fd10:244:0:7::/64", "fd10:244:0:8::/64", "192.168.9.3", "fd00:9::3", "0e:00:00:00:00:03", 0), ErrPodCIDR},
		"bad public-ipv6":                  {dual, node6("x", "10.244.3.0/24", "fd10:244:0:3::/64", "192.168.9.3", "192.168.9.3", "0e:00:00:00:00:03", 0), flannel.ErrPublicIP},
		"IPv6-only without public-ipv6":    {v6only, node6("x", "", "fd10:244:0:6::/64", "192.168.9.3", "", "0e:00:00:00:00:03", 0), flannel.ErrPublicIP},
		"IPv6-only without IPv6 podCIDR":   {v6only, node("x", "10.244.3.0/24", "192.168.9.3", "0e:00:00:00:00:03", 0), ErrNoPodCIDR},
	} {
		_, bad := ann.ParseNode(tc.cfg, tc.n)
		if bad == nil || !errors.Is(bad, tc.is) || bad.Key != "node/x" {
			t.Errorf("%s: %v, want %v", name, bad, tc.is)
		}
	}
	n := node6("x", "10.244.3.0/24", "fd10:244:0:3::/64", "192.168.9.3", "fd00:9::3", "0e:00:00:00:00:03", 0)
	delete(n.Annotations, "flannel.alpha.coreos.com/backend-v6-data")
	if _, bad := ann.ParseNode(dual, n); bad == nil || !errors.Is(bad, flannel.ErrLeaseJSON) || bad.IPv6Subnet.String() != "fd10:244:0:3::/64" {
		t.Errorf("public-ipv6 without backend-v6-data: %v", bad)
	}
}

func TestIndexIPv6Overlap(t *testing.T) {
	ann, _ := NewAnnotations("")
	cfg := mustConfig(t, dualNetConf)
	x := newIndex()
	put := func(n *corev1.Node) []peers.Change {
		l, bad := ann.ParseNode(cfg, n)
		return x.update(Key(n.Name), parsed{lease: l, invalid: bad})
	}
	put(node6("a", "10.244.1.0/24", "fd10:244:0:1::/64", "192.168.9.1", "fd00:9::1", "0e:00:00:00:00:01", 0))
	// A newer Node with another IPv4 podCIDR but a's IPv6 one loses, whole.
	got := put(node6("b", "10.244.2.0/24", "fd10:244:0:1::/64", "192.168.9.2", "fd00:9::2", "0e:00:00:00:00:02", 1))
	if len(got) != 1 || got[0].Key != "node/b" || !errors.Is(got[0].Invalid, flannel.ErrOverlap) {
		t.Fatalf("overlap: %+v", got)
	}
	// a goes: b takes over.
	got = x.update(Key("a"), parsed{})
	if len(got) != 2 || !got[0].Deleted() || got[1].Lease == nil || got[1].Lease.IPv6Subnet.String() != "fd10:244:0:1::/64" {
		t.Fatalf("handover: %+v", got)
	}
	// A change of b's IPv6 address alone is a change.
	got = put(node6("b", "10.244.2.0/24", "fd10:244:0:1::/64", "192.168.9.2", "fd00:9::22", "0e:00:00:00:00:02", 1))
	if len(got) != 1 || got[0].Lease.PublicIPv6().String() != "fd00:9::22" {
		t.Fatalf("IPv6 address change: %+v", got)
	}
}

func TestPublishPatchIPv6(t *testing.T) {
	ann, _ := NewAnnotations("")
	mac := net.HardwareAddr{0x0e, 0, 0, 0, 0, 1}
	for _, tc := range []struct {
		name       string
		pub4, pub6 string
		want       map[string]string // "" value: must be absent
	}{
		{"dual-stack", "192.168.9.1", "fd00:9::1", map[string]string{
			"backend-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ip": "192.168.9.1",
			"backend-v6-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ipv6": "fd00:9::1"}},
		{"IPv6-only", "", "fd00:9::1", map[string]string{
			"backend-data": "", "public-ip": "",
			"backend-v6-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ipv6": "fd00:9::1"}},
		{"IPv4 or v6-in-v4", "192.168.9.1", "", map[string]string{
			"backend-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ip": "192.168.9.1",
			"backend-v6-data": "", "public-ipv6": ""}},
	} {
		var p4, p6 netip.Addr
		if tc.pub4 != "" {
			p4 = netip.MustParseAddr(tc.pub4)
		}
		if tc.pub6 != "" {
			p6 = netip.MustParseAddr(tc.pub6)
		}
		attrs, err := flannel.NewDualVXLANAttrs(p4, p6, 1, mac, mac)
		if err != nil {
			t.Fatal(err)
		}
		got := ann.annotationsFor(attrs)
		if got["flannel.alpha.coreos.com/backend-type"] != "vxlan" || got["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" {
			t.Errorf("%s: %v", tc.name, got)
		}
		for k, v := range tc.want {
			k = "flannel.alpha.coreos.com/" + k
			if w, ok := got[k]; (v == "" && ok) || w != v {
				t.Errorf("%s: %s = %q, want %q", tc.name, k, w, v)
			}
		}
		if _, err := ann.PublishPatch(attrs, time.Unix(1_700_000_000, 0)); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// TestManagerDualStackOnAPIServer: a dual-stack Manager against a real
// kube-apiserver reads its own Node's podCIDRs of both families, follows
// flannel's dual-stack peers, and publishes both families' annotations in
// one PATCH.
func TestManagerDualStackOnAPIServer(t *testing.T) {
	e := startAPI(t)
	if err := os.WriteFile(e.opts.NetConfPath, []byte(dualNetConf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	self := node6("self", "10.244.1.0/24", "fd10:244:0:1::/64", "192.168.9.1", "", "0e:00:00:00:00:01", 0)
	self.Annotations = map[string]string{"flannel.alpha.coreos.com/public-ipv6-overwrite": "2001:db8::7"}
	e.create(t, self)
	e.create(t, node6("a", "10.244.2.0/24", "fd10:244:0:2::/64", "192.168.9.2", "fd00:9::2", "0e:00:00:00:00:02", 0))

	m, err := New(ctx, e.opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	own, err := m.OwnNode(ctx)
	if err != nil || own.Subnet.String() != "10.244.1.0/24" || own.IPv6Subnet.String() != "fd10:244:0:1::/64" ||
		own.PublicIPv6Overwrite.String() != "2001:db8::7" {
		t.Fatalf("own node %+v %v", own, err)
	}
	batches := make(chan peers.Batch, 16)
	go m.Watch(ctx, func(b peers.Batch) { batches <- b })
	b := next(t, batches)
	if len(b.Changes) != 1 || b.Changes[0].Lease == nil || b.Changes[0].Lease.IPv6Subnet.String() != "fd10:244:0:2::/64" ||
		b.Changes[0].Lease.PublicIPv6().String() != "fd00:9::2" {
		t.Fatalf("first batch %+v", b)
	}

	mac := net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x01}
	attrs, err := flannel.NewDualVXLANAttrs(netip.MustParseAddr("192.168.9.1"), own.PublicIPv6Overwrite, 1, mac, mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, attrs); err != nil {
		t.Fatal(err)
	}
	b = next(t, batches)
	if len(b.Changes) != 1 || b.Changes[0].Key != "node/self" || b.Changes[0].Lease == nil ||
		b.Changes[0].Lease.IPv6Subnet.String() != "fd10:244:0:1::/64" || b.Changes[0].Lease.PublicIPv6().String() != "2001:db8::7" {
		t.Fatalf("after publishing %+v", b)
	}
	n, err := e.kc.CoreV1().Nodes().Get(ctx, "self", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"backend-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ip": "192.168.9.1",
		"backend-v6-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`, "public-ipv6": "2001:db8::7",
		"backend-type": "vxlan", "kube-subnet-manager": "true", "public-ipv6-overwrite": "2001:db8::7",
	} {
		if got := n.Annotations["flannel.alpha.coreos.com/"+k]; got != v {
			t.Errorf("annotation %s = %q, want %q", k, got, v)
		}
	}
}
