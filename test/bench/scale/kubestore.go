package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/test/kubetest"
	"github.com/weftnet/weft/test/lab"
)

// kubeWorkers is how many creates or deletes are in flight at once when
// writing Nodes in bulk: enough to keep a 2-core apiserver busy over one
// HTTP/2 connection, few enough not to time out its requests.
const kubeWorkers = 32

// kubeStore is flanneld's --kube-subnet-mgr schema: remote node i is Node
// "r<i>" with spec.podCIDR(s) = its subnet and the lease annotations as
// flanneld writes them. A Node is created with its annotations in one
// request (a real node gets them in a later PATCH of nodes/status; the
// benchmark's join starts when the lease exists, as in etcd).
type kubeStore struct {
	setup   kubernetes.Interface // bulk writes: no client-side rate limit
	flannel kubernetes.Interface // flannel's side and the joins: client-go's defaults (protobuf for Nodes since 0.34)
}

func newKubeStore(api *kubetest.APIServer) *kubeStore {
	cfg := api.AdminConfig()
	cfg.QPS, cfg.Burst = -1, 0 // no client-side throttling of the bulk creates
	fcfg := api.AdminConfig()
	fcfg.QPS = -1
	return &kubeStore{setup: kubernetes.NewForConfigOrDie(cfg), flannel: kubernetes.NewForConfigOrDie(fcfg)}
}

func nodeName(i int) string { return fmt.Sprintf("r%d", i) }

func remoteNode(i int) *corev1.Node {
	sn, ip, mac := remote(i)
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName(i), Annotations: lab.FlannelAnnotations(ip, mac),
			Labels: map[string]string{"kubernetes.io/os": "linux"}},
		Spec: corev1.NodeSpec{PodCIDR: sn.String(), PodCIDRs: []string{sn.String()}},
	}
}

// write creates Nodes [from, to) with a bounded pool of workers.
func (s *kubeStore) write(ctx context.Context, from, to int) error {
	return pool(ctx, from, to, func(ctx context.Context, i int) error {
		_, err := s.setup.CoreV1().Nodes().Create(ctx, remoteNode(i), metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create node %s: %w", nodeName(i), err)
		}
		return nil
	})
}

func (s *kubeStore) remove(ctx context.Context, from, to int) error {
	return pool(ctx, from, to, func(ctx context.Context, i int) error {
		err := s.setup.CoreV1().Nodes().Delete(ctx, nodeName(i), metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete node %s: %w", nodeName(i), err)
		}
		return nil
	})
}

// pool runs fn for every i in [from, to) on kubeWorkers goroutines and
// returns the first error (the others stop taking work).
func pool(ctx context.Context, from, to int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range min(kubeWorkers, max(to-from, 0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= to {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && err != context.Canceled {
		return err
	}
	return ctx.Err()
}

func (s *kubeStore) put(ctx context.Context, i int) error {
	_, err := s.flannel.CoreV1().Nodes().Create(ctx, remoteNode(i), metav1.CreateOptions{})
	return err
}

// list is the informer's initial list as flanneld's reflector makes it
// (resourceVersion "0": served from the apiserver's watch cache), decoded.
func (s *kubeStore) list(ctx context.Context) ([]peer, error) {
	l, err := s.flannel.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, err
	}
	peers := make([]peer, 0, len(l.Items))
	for i := range l.Items {
		if p, ok := decodeNode(&l.Items[i]); ok {
			peers = append(peers, p)
		}
	}
	return peers, nil
}

// follow is flanneld's kube subnet manager: a Node informer whose add and
// update events are decoded and handed over a channel to the loop that
// programs the kernel. Nodes of the initial list are not sent: the flannel
// node programmed them already (list).
func (s *kubeStore) follow(ctx context.Context) (<-chan peer, error) {
	inf := cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return s.flannel.CoreV1().Nodes().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return s.flannel.CoreV1().Nodes().Watch(ctx, o)
		},
	}, &corev1.Node{}, 0, cache.Indexers{})
	out := make(chan peer, 1024)
	send := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			if p, ok := decodeNode(n); ok {
				select {
				case out <- p:
				case <-ctx.Done():
				}
			}
		}
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, initial bool) {
			if !initial {
				send(obj)
			}
		},
		UpdateFunc: func(_, obj any) { send(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("flannel: node informer: %w", err)
	}
	go inf.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil, fmt.Errorf("flannel: node informer did not sync: %w", ctx.Err())
	}
	return out, nil
}

// decodeNode reads a peer from a Node as flanneld does (managed, vxlan, a
// public IP, a VtepMAC, an IPv4 podCIDR). Only the remote() nodes count,
// so both sides program the same set (not weftd's own Node).
func decodeNode(n *corev1.Node) (peer, bool) {
	a := n.Annotations
	if a["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" || a["flannel.alpha.coreos.com/backend-type"] != "vxlan" {
		return peer{}, false
	}
	var d struct{ VtepMAC string }
	if json.Unmarshal([]byte(a["flannel.alpha.coreos.com/backend-data"]), &d) != nil {
		return peer{}, false
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	ip, ierr := netip.ParseAddr(a["flannel.alpha.coreos.com/public-ip"])
	sn, serr := netip.ParsePrefix(n.Spec.PodCIDR)
	if err != nil || ierr != nil || serr != nil || !sn.Addr().Is4() || !remotes.Contains(ip) {
		return peer{}, false
	}
	return peer{sn: sn.Masked(), ip: ip.AsSlice(), mac: mac}, true
}
