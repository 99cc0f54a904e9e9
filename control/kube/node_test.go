package kube

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

func testConfig(t *testing.T) *flannel.NetworkConfig {
	t.Helper()
	c, err := flannel.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// node builds a Node as flanneld leaves it: annotations in its exact format.
func node(name, cidr, ip, mac string, age int) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, ResourceVersion: "7",
		CreationTimestamp: metav1.NewTime(time.Unix(1_700_000_000+int64(age), 0)),
		Annotations: map[string]string{
			"flannel.alpha.coreos.com/backend-type":        "vxlan",
			"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
			"flannel.alpha.coreos.com/public-ip":           ip,
			"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		},
	}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	return n
}

func TestParseNode(t *testing.T) {
	cfg := testConfig(t)
	ann, err := NewAnnotations("")
	if err != nil {
		t.Fatal(err)
	}
	l, bad := ann.ParseNode(cfg, node("a", "10.244.3.0/24", "192.168.9.3", "0e:00:00:00:00:03", 0))
	if bad != nil || l.Key != "node/a" || l.Subnet.String() != "10.244.3.0/24" || l.PublicIP().String() != "192.168.9.3" ||
		l.VXLAN.VtepMAC.String() != "0e:00:00:00:00:03" {
		t.Fatalf("%+v %v", l, bad)
	}

	// Dual-stack: the IPv4 entry of podCIDRs, whatever its position; the
	// legacy podCIDR alone is enough.
	n := node("b", "", "192.168.9.4", "0e:00:00:00:00:04", 0)
	n.Spec.PodCIDRs = []string{"fd00:1::/64", "10.244.4.0/24"}
	if l, bad := ann.ParseNode(cfg, n); bad != nil || l.Subnet.String() != "10.244.4.0/24" {
		t.Fatalf("dual-stack: %+v %v", l, bad)
	}
	n = node("c", "", "192.168.9.5", "0e:00:00:00:00:05", 0)
	n.Spec.PodCIDR = "10.244.5.0/24"
	if l, bad := ann.ParseNode(cfg, n); bad != nil || l.Subnet.String() != "10.244.5.0/24" {
		t.Fatalf("podCIDR only: %+v %v", l, bad)
	}

	with := func(k, v string) *corev1.Node {
		n := node("x", "10.244.9.0/24", "192.168.9.9", "0e:00:00:00:00:09", 0)
		if v == "<delete>" {
			delete(n.Annotations, "flannel.alpha.coreos.com/"+k)
		} else {
			n.Annotations["flannel.alpha.coreos.com/"+k] = v
		}
		return n
	}
	noCIDR := node("x", "", "192.168.9.9", "0e:00:00:00:00:09", 0)
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		is   error
	}{
		{"no podCIDR", noCIDR, ErrNoPodCIDR},
		{"only an IPv6 podCIDR", func() *corev1.Node { n := node("x", "fd00::/64", "192.168.9.9", "0e:00:00:00:00:09", 0); return n }(), ErrNoPodCIDR},
		{"podCIDR garbage", node("x", "10.244.9.0", "192.168.9.9", "0e:00:00:00:00:09", 0), ErrPodCIDR},
		{"podCIDR host bits", node("x", "10.244.9.1/24", "192.168.9.9", "0e:00:00:00:00:09", 0), ErrPodCIDR},
		{"podCIDR outside Network", node("x", "10.99.9.0/24", "192.168.9.9", "0e:00:00:00:00:09", 0), flannel.ErrOutsideNetwork},
		{"podCIDR wider than Network", node("x", "10.0.0.0/8", "192.168.9.9", "0e:00:00:00:00:09", 0), flannel.ErrOutsideNetwork},
		{"host-gw backend", with("backend-type", "host-gw"), flannel.ErrBackendType},
		{"no backend-type", with("backend-type", "<delete>"), flannel.ErrBackendType},
		{"backend-data malformed", with("backend-data", `{"VNI":1,"VtepMAC":`), flannel.ErrLeaseJSON},
		{"backend-data missing", with("backend-data", "<delete>"), flannel.ErrLeaseJSON},
		{"backend-data bad MAC", with("backend-data", `{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`), flannel.ErrVtepMAC},
		{"public-ip garbage", with("public-ip", "192.168.9.300"), flannel.ErrPublicIP},
		{"public-ip missing", with("public-ip", "<delete>"), flannel.ErrPublicIP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, bad := ann.ParseNode(cfg, tc.n)
			if bad == nil || !errors.Is(bad, tc.is) || bad.Key != "node/x" || !strings.Contains(bad.Error(), "node/x") {
				t.Fatalf("got %v, want a LeaseError for node/x wrapping %v", bad, tc.is)
			}
		})
	}

	// No annotations at all: not managed, and nothing panics.
	bare := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare"}}
	if ann.Managed(bare) {
		t.Fatal("a Node without annotations is managed")
	}
	if _, bad := ann.ParseNode(cfg, bare); !errors.Is(bad, ErrNoPodCIDR) {
		t.Fatal(bad)
	}
}

func TestAnnotationPrefix(t *testing.T) {
	a, err := NewAnnotations("weft.example.com/")
	if err != nil || a.BackendData != "weft.example.com/backend-data" || a.KubeManaged != "weft.example.com/kube-subnet-manager" {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := NewAnnotations("Not A Domain"); err == nil {
		t.Fatal("accepted a bad prefix")
	}
}

func TestIndexOverlapAndDedup(t *testing.T) {
	cfg := testConfig(t)
	ann, _ := NewAnnotations("")
	parse := func(n *corev1.Node) parsed {
		l, bad := ann.ParseNode(cfg, n)
		return parsed{lease: l, invalid: bad}
	}
	summary := func(cs []peers.Change) string {
		var s []string
		for _, c := range cs {
			switch {
			case c.Deleted():
				s = append(s, c.Key+"=gone")
			case c.Invalid != nil && errors.Is(c.Invalid, flannel.ErrOverlap):
				s = append(s, c.Key+"=overlap")
			case c.Invalid != nil:
				s = append(s, c.Key+"=bad")
			default:
				s = append(s, c.Key+"="+c.Lease.Subnet.String())
			}
		}
		return strings.Join(s, " ")
	}
	x := newIndex()
	// The newer node "new" is listed first; the older "old" still wins.
	x.set("node/new", parse(node("new", "10.244.1.0/24", "192.168.9.2", "0e:00:00:00:00:02", 10)))
	x.set("node/old", parse(node("old", "10.244.1.0/24", "192.168.9.1", "0e:00:00:00:00:01", 0)))
	x.set("node/c", parse(node("c", "10.244.3.0/24", "192.168.9.3", "0e:00:00:00:00:03", 5)))
	if got := summary(x.full()); got != "node/c=10.244.3.0/24 node/new=overlap node/old=10.244.1.0/24" {
		t.Fatal(got)
	}
	// A heartbeat-only update changes nothing.
	if got := x.update("node/c", parse(node("c", "10.244.3.0/24", "192.168.9.3", "0e:00:00:00:00:03", 5))); len(got) != 0 {
		t.Fatal(summary(got))
	}
	// The owner leaves: the newcomer takes the subnet over.
	if got := summary(x.update("node/old", parsed{})); got != "node/new=10.244.1.0/24 node/old=gone" {
		t.Fatal(got)
	}
	// c moves onto new's subnet: c is older (age 5 < 10) and takes it.
	if got := summary(x.update("node/c", parse(node("c", "10.244.1.0/24", "192.168.9.3", "0e:00:00:00:00:03", 5)))); got != "node/c=10.244.1.0/24 node/new=overlap" {
		t.Fatal(got)
	}
	// c's annotations break: it no longer claims, new gets the subnet back.
	broken := node("c", "10.244.1.0/24", "192.168.9.3", "0e:00:00:00:00:03", 5)
	broken.Annotations["flannel.alpha.coreos.com/backend-data"] = "{"
	if got := summary(x.update("node/c", parse(broken))); got != "node/c=bad node/new=10.244.1.0/24" {
		t.Fatal(got)
	}
	if len(x.claims) != 1 || len(x.claims[netip.MustParsePrefix("10.244.1.0/24")]) != 1 {
		t.Fatalf("claims %v", x.claims)
	}
}

func TestPublishPatch(t *testing.T) {
	ann, _ := NewAnnotations("")
	attrs, err := flannel.NewVXLANAttrs(netip.MustParseAddr("192.168.9.1"), 1, []byte{0x0e, 0, 0, 0, 0, 1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ann.PublishPatch(attrs, time.Unix(1_700_000_000, 0))
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Metadata struct{ Annotations map[string]string }
		Status   struct{ Conditions []corev1.NodeCondition }
	}
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.168.9.1",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
	}
	for k, v := range want {
		if p.Metadata.Annotations[k] != v {
			t.Errorf("%s = %q, want %q", k, p.Metadata.Annotations[k], v)
		}
	}
	if len(p.Status.Conditions) != 1 || p.Status.Conditions[0].Type != corev1.NodeNetworkUnavailable ||
		p.Status.Conditions[0].Status != corev1.ConditionFalse || p.Status.Conditions[0].Reason != ConditionReason {
		t.Fatalf("%+v", p.Status.Conditions)
	}
}
