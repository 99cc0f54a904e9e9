package kube

// The Manager against a real kube-apiserver (test/kubetest on test/etcdtest):
// the batches its informer produces, publishing, and reading the own Node.

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/test/etcdtest"
	"github.com/weftnet/weft/test/kubetest"
)

type apiEnv struct {
	api  *kubetest.APIServer
	kc   kubernetes.Interface
	opts Options
}

func startAPI(t *testing.T) *apiEnv {
	t.Helper()
	dir := t.TempDir()
	etcd, err := etcdtest.Start(filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	api, err := kubetest.StartAPIServer(ctx, filepath.Join(dir, "api"), etcd.ClientURL.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(api.Close)
	kcfg := filepath.Join(dir, "kubeconfig")
	if err := api.AdminKubeconfig(api.URL, kcfg); err != nil {
		t.Fatal(err)
	}
	netconf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(netconf, []byte(`{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return &apiEnv{api: api, kc: api.Client(), opts: Options{Kubeconfig: kcfg, NetConfPath: netconf, NodeName: "self"}}
}

func (e *apiEnv) create(t *testing.T, n *corev1.Node) {
	t.Helper()
	n.ResourceVersion, n.CreationTimestamp = "", metav1.Time{}
	if _, err := e.kc.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *apiEnv) del(t *testing.T, name string) {
	t.Helper()
	if err := e.kc.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// next waits for the next batch.
func next(t *testing.T, batches <-chan peers.Batch) peers.Batch {
	t.Helper()
	select {
	case b := <-batches:
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no batch within 5s")
	}
	return peers.Batch{}
}

func describe(b peers.Batch) string {
	var s []string
	for _, c := range b.Changes {
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
	if b.Full {
		return "full: " + strings.Join(s, " ")
	}
	return strings.Join(s, " ")
}

func TestManagerOnAPIServer(t *testing.T) {
	e := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	self := node("self", "10.244.1.0/24", "192.168.9.1", "0e:00:00:00:00:01", 0)
	// As the kubelet registers it, plus an admin's public-ip-overwrite.
	self.Annotations = map[string]string{"flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.7"}
	e.create(t, self)
	e.create(t, node("a", "10.244.2.0/24", "192.168.9.2", "0e:00:00:00:00:02", 0))

	m, err := New(ctx, e.opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	own, err := m.OwnNode(ctx)
	if err != nil || own.Subnet.String() != "10.244.1.0/24" || own.VtepMAC != nil || own.PublicIPOverwrite.String() != "203.0.113.7" {
		t.Fatalf("own node %+v %v", own, err)
	}

	batches := make(chan peers.Batch, 16)
	go m.Watch(ctx, func(b peers.Batch) { batches <- b })
	if got := describe(next(t, batches)); got != "full: node/a=10.244.2.0/24" {
		t.Fatalf("first batch %q", got)
	}

	// A status heartbeat changes nothing Weft reads: no batch for it. The
	// next batch is the Node created after it.
	a, err := e.kc.CoreV1().Nodes().Get(ctx, "a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	if _, err := e.kc.CoreV1().Nodes().UpdateStatus(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.create(t, node("b", "10.244.3.0/24", "192.168.9.3", "0e:00:00:00:00:03", 0))
	if got := describe(next(t, batches)); got != "node/b=10.244.3.0/24" {
		t.Fatalf("after a heartbeat and a join: %q", got)
	}
	e.del(t, "b")
	if got := describe(next(t, batches)); got != "node/b=gone" {
		t.Fatalf("after a delete: %q", got)
	}

	// A newer Node on a's podCIDR is an overlap until a goes.
	e.create(t, node("c", "10.244.2.0/24", "192.168.9.4", "0e:00:00:00:00:04", 0))
	if got := describe(next(t, batches)); got != "node/c=overlap" {
		t.Fatalf("duplicate podCIDR: %q", got)
	}
	e.del(t, "a")
	if got := describe(next(t, batches)); got != "node/a=gone node/c=10.244.2.0/24" {
		t.Fatalf("owner deleted: %q", got)
	}

	// Publishing: one PATCH of nodes/status with flannel's annotations and
	// NetworkUnavailable=False; the node then is a peer like any other.
	mac := net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x01}
	attrs, err := flannel.NewVXLANAttrs(own.PublicIPOverwrite, 1, mac)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(ctx, attrs); err != nil {
		t.Fatal(err)
	}
	if got := describe(next(t, batches)); got != "node/self=10.244.1.0/24" {
		t.Fatalf("after publishing: %q", got)
	}
	n, err := e.kc.CoreV1().Nodes().Get(ctx, "self", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Annotations["flannel.alpha.coreos.com/backend-data"] != `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}` ||
		n.Annotations["flannel.alpha.coreos.com/public-ip"] != "203.0.113.7" ||
		n.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" ||
		n.Annotations["flannel.alpha.coreos.com/backend-type"] != "vxlan" {
		t.Fatalf("annotations %v", n.Annotations)
	}
	if len(n.Status.Conditions) != 1 || n.Status.Conditions[0].Type != corev1.NodeNetworkUnavailable ||
		n.Status.Conditions[0].Status != corev1.ConditionFalse || n.Status.Conditions[0].Reason != ConditionReason {
		t.Fatalf("conditions %+v", n.Status.Conditions)
	}
	// The VtepMAC survives a restart: a new Manager reads it back.
	if own, err := m.OwnNode(ctx); err != nil || own.VtepMAC.String() != mac.String() {
		t.Fatalf("own VtepMAC after publishing: %+v %v", own, err)
	}
}

func TestOwnNodeWaitsForPodCIDR(t *testing.T) {
	e := startAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitPodCIDR = 100 * time.Millisecond
	self := node("self", "", "192.168.9.1", "0e:00:00:00:00:01", 0)
	self.Annotations = nil
	e.create(t, self)
	m, err := New(ctx, e.opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		own Own
		err error
	}
	done := make(chan result, 1)
	go func() { o, err := m.OwnNode(ctx); done <- result{o, err} }()
	select {
	case r := <-done:
		t.Fatalf("OwnNode returned before a podCIDR was assigned: %+v %v", r.own, r.err)
	case <-time.After(500 * time.Millisecond):
	}
	// The controller manager assigns one.
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"podCIDR": "10.244.7.0/24", "podCIDRs": []string{"10.244.7.0/24"}}})
	if _, err := e.kc.CoreV1().Nodes().Patch(ctx, "self", "application/strategic-merge-patch+json", patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.own.Subnet != netip.MustParsePrefix("10.244.7.0/24") {
			t.Fatalf("%+v %v", r.own, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OwnNode did not return after the podCIDR was assigned")
	}

	// A podCIDR outside the Network is refused, naming both.
	bad := node("outside", "10.99.0.0/24", "192.168.9.1", "0e:00:00:00:00:01", 0)
	e.create(t, bad)
	o := e.opts
	o.NodeName = "outside"
	m2, err := New(ctx, o, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m2.OwnNode(ctx); !errors.Is(err, flannel.ErrOutsideNetwork) || !strings.Contains(err.Error(), "10.244.0.0/16") {
		t.Fatalf("got %v", err)
	}
}
