package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestDecodeNode(t *testing.T) {
	good := func() *corev1.Node { return remoteNode(7) }
	sn, ip, mac := remote(7)
	if p, ok := decodeNode(good()); !ok || p.sn != sn || !p.ip.Equal(ip.AsSlice()) || p.mac.String() != mac.String() {
		t.Fatalf("remote node 7: %+v %v, want %s %s %s", p, ok, sn, ip, mac)
	}
	for name, spoil := range map[string]func(*corev1.Node){
		"not kube-managed": func(n *corev1.Node) { delete(n.Annotations, "flannel.alpha.coreos.com/kube-subnet-manager") },
		"host-gw backend":  func(n *corev1.Node) { n.Annotations["flannel.alpha.coreos.com/backend-type"] = "host-gw" },
		"bad backend data": func(n *corev1.Node) { n.Annotations["flannel.alpha.coreos.com/backend-data"] = "{" },
		"bad VtepMAC":      func(n *corev1.Node) { n.Annotations["flannel.alpha.coreos.com/backend-data"] = `{"VtepMAC":"x"}` },
		"no podCIDR":       func(n *corev1.Node) { n.Spec.PodCIDR = "" },
		"IPv6 podCIDR":     func(n *corev1.Node) { n.Spec.PodCIDR = "fd00::/64" },
		// weftd's own Node: its underlay address is not a remote()'s.
		"not a remote": func(n *corev1.Node) { n.Annotations["flannel.alpha.coreos.com/public-ip"] = "192.168.1.1" },
	} {
		n := good()
		spoil(n)
		if p, ok := decodeNode(n); ok {
			t.Errorf("%s: decoded as %+v", name, p)
		}
	}
}

func TestPool(t *testing.T) {
	var done atomic.Int64
	if err := pool(context.Background(), 10, 1010, func(context.Context, int) error { done.Add(1); return nil }); err != nil || done.Load() != 1000 {
		t.Fatalf("pool over 1000: %d done, %v", done.Load(), err)
	}
	boom := errors.New("boom")
	done.Store(0)
	err := pool(context.Background(), 0, 100000, func(_ context.Context, i int) error {
		done.Add(1)
		if i == 5 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || done.Load() == 100000 {
		t.Fatalf("pool with a failing item: %v after %d calls, want boom and an early stop", err, done.Load())
	}
	if err := pool(context.Background(), 3, 3, nil); err != nil {
		t.Fatalf("empty range: %v", err)
	}
}

// TestStoresSmall runs the benchmark end to end on both stores at two
// small counts: real etcd, kube-apiserver, weftd and kernel vxlan node.
func TestStoresSmall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the scale benchmark needs root (network namespaces, BPF); run the tests as root")
	}
	bin := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", bin+"/", "github.com/weftnet/weft/cmd/weftd").CombinedOutput(); err != nil {
		t.Fatalf("build weftd: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	o := options{nodes: []int{20, 60}, joins: 5, rounds: 1, writeBudget: time.Minute}
	for _, store := range []string{"etcd", "kube"} {
		rows, note, err := runStore(ctx, o, bin, store)
		if err != nil {
			t.Fatalf("%s: %v", store, err)
		}
		if note != "" || len(rows) != 2 {
			t.Fatalf("%s: %d rows, note %q", store, len(rows), note)
		}
		for _, r := range rows {
			if r.Store != store || r.ColdStartMS <= 0 || r.WeftProgramMS <= 0 || r.FlannelProgramMS <= 0 || r.JoinP50MS <= 0 ||
				r.JoinP99MS < r.JoinP50MS || r.FlannelJoinP50MS <= 0 || r.RSSMB <= 0 {
				t.Errorf("%s %d: incomplete row %+v", store, r.Nodes, r)
			}
		}
	}

	// A budget smaller than the second count's estimate skips it.
	rows, note, err := runStore(ctx, options{nodes: []int{10, 20}, joins: 2, rounds: 1, writeBudget: time.Nanosecond}, bin, "etcd")
	if err != nil || len(rows) != 1 || note == "" {
		t.Fatalf("budget 1ns: %d rows, note %q, %v; want 1 row and a note", len(rows), note, err)
	}
	t.Log(note)
}
