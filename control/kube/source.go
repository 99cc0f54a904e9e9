package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/control/peers"
)

// ResyncPeriod is the informer's resync, flanneld's. A resync replays every
// Node as an update; the index drops the ones that changed nothing.
const ResyncPeriod = 5 * time.Minute

// probeInterval is how often, while the apiserver is unreachable, weftd
// checks whether it is back. client-go's reflector backs off up to 30 s
// (doubling from 0.8 s, with jitter up to twice that), so after a 30 s
// outage it could stay blind to Node changes for most of a minute; a new
// informer started as soon as the apiserver answers bounds that to about
// this interval plus one list.
const probeInterval = time.Second

// Watch implements peers.Source: a Node informer whose first batch (and the
// first after every reconnect) is Full, then one batch per burst of Node
// adds, updates and deletes, each Change keyed "node/<name>". Bad Nodes are
// logged with their name and reported as Invalid; Nodes without the
// kube-subnet-manager annotation are not peers and not reported. It returns
// when ctx is done.
func (m *Manager) Watch(ctx context.Context, apply func(peers.Batch)) error {
	go m.republishLoop(ctx)
	for {
		if err := m.session(ctx, apply); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		m.log.Info("the apiserver is back: restarting the Node informer (a full re-list)")
		m.metrics.Resyncs.Add(1)
	}
}

// session runs one informer until ctx is done or the apiserver, after being
// unreachable, answers again (then a fresh list is quicker than waiting out
// the reflector's backoff); both return nil. An error means the informer
// could not be set up at all.
func (m *Manager) session(ctx context.Context, apply func(peers.Batch)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var broken atomic.Bool
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := m.client.listNodes(ctx, o)
			m.noteAPI(&broken, "list", err)
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := m.client.watchNodes(ctx, o)
			m.noteAPI(&broken, "watch", err)
			return w, err
		},
	}
	inf := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Node{}, cache.SharedIndexInformerOptions{ResyncPeriod: ResyncPeriod})
	if err := inf.SetTransform(m.ann.slimNode); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}

	q := newDirtySet()
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if n, ok := obj.(*corev1.Node); ok {
			q.add(n.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, n any) { enqueue(n) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	go inf.RunWithContext(ctx)
	go m.probe(ctx, &broken, cancel)

	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // ctx done, or the probe restarts a session that never synced
	}
	// Everything queued so far is in the list below.
	q.take()
	x := newIndex()
	m.unmanaged = map[string]bool{}
	for _, obj := range inf.GetStore().List() {
		n := obj.(*corev1.Node)
		x.set(Key(n.Name), m.parse(n))
	}
	m.metrics.UnmanagedNodes.Store(int64(len(m.unmanaged)))
	full := x.full()
	m.report(full)
	apply(peers.Batch{Full: true, Changes: full})

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-q.ready:
		}
		var changes []peers.Change
		for _, name := range q.take() {
			p := parsed{}
			if obj, ok, _ := inf.GetStore().GetByKey(name); ok {
				p = m.parse(obj.(*corev1.Node))
			} else {
				m.setUnmanaged(name, false)
			}
			changes = append(changes, x.update(Key(name), p)...)
		}
		if len(changes) > 0 {
			m.report(changes)
			apply(peers.Batch{Changes: changes})
		}
	}
}

// slimNode is the informer's transform: it keeps only what weftd reads of
// a Node (name, UID, versions, creation time, podCIDRs and the annotations
// of our prefix), copied out of the decode buffers. At 10,000 Nodes the
// full objects (kubelet's annotations, managedFields, status) were most of
// weftd's heap in kube mode.
func (a Annotations) slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil // a DeletedFinalStateUnknown tombstone
	}
	var ann map[string]string
	for _, k := range [...]string{a.BackendType, a.BackendData, a.PublicIP, a.PublicIPOverwrite, a.KubeManaged,
		a.BackendV6Data, a.PublicIPv6, a.PublicIPv6Overwrite} {
		if v, ok := n.Annotations[k]; ok {
			if ann == nil {
				ann = make(map[string]string, 5)
			}
			ann[k] = strings.Clone(v)
		}
	}
	cidrs := make([]string, len(n.Spec.PodCIDRs))
	for i, c := range n.Spec.PodCIDRs {
		cidrs[i] = strings.Clone(c)
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: strings.Clone(n.Name), ResourceVersion: strings.Clone(n.ResourceVersion),
			UID: n.UID, CreationTimestamp: n.CreationTimestamp, Annotations: ann},
		Spec: corev1.NodeSpec{PodCIDR: strings.Clone(n.Spec.PodCIDR), PodCIDRs: cidrs},
	}, nil
}

// checkOwn republishes this node's lease when its annotations no longer
// say what Publish wrote (removed by hand, or the Node was deleted and the
// kubelet registered it again): peers would otherwise drop this node while
// it keeps forwarding. flanneld only publishes at start.
func (m *Manager) checkOwn(n *corev1.Node) {
	want := m.published.Load()
	if want == nil || n.Name != m.nodeName {
		return
	}
	for k, v := range m.ann.annotationsFor(*want) {
		if n.Annotations[k] != v {
			m.log.Warn("own Node lost its lease annotations; publishing them again", zap.String("node", n.Name),
				zap.String("annotation", k), zap.String("found", n.Annotations[k]))
			select {
			case m.republish <- struct{}{}:
			default:
			}
			return
		}
	}
}

// republishLoop publishes again whenever checkOwn asks, until ctx ends.
func (m *Manager) republishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.republish:
		}
		if want := m.published.Load(); want != nil {
			if err := m.Publish(ctx, *want); err != nil && ctx.Err() == nil {
				m.log.Error("republish own lease", zap.Error(err))
			}
		}
		select { // at most once a second, should something fight over them
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// parse is ParseNode for the index. A Node without the
// kube-subnet-manager annotation (no annotations at all, or a node whose
// daemon has not started yet) is not a peer, as in flannel; it is logged
// once and counted so an operator can tell "not ours" from "missing".
func (m *Manager) parse(n *corev1.Node) parsed {
	m.checkOwn(n)
	m.setUnmanaged(n.Name, !m.ann.Managed(n))
	if !m.ann.Managed(n) {
		return parsed{}
	}
	l, bad := m.ann.ParseNode(m.cfg, n)
	if bad != nil {
		return parsed{invalid: bad}
	}
	return parsed{lease: l}
}

// setUnmanaged tracks Nodes that are not peers for the metric and logs a
// Node when it becomes one.
func (m *Manager) setUnmanaged(name string, unmanaged bool) {
	switch {
	case unmanaged && !m.unmanaged[name]:
		m.unmanaged[name] = true
		m.log.Info("node has no "+m.ann.KubeManaged+`="true" annotation; not a peer until its subnet manager publishes it`,
			zap.String("node", name))
	case !unmanaged && m.unmanaged[name]:
		delete(m.unmanaged, name)
	default:
		return
	}
	m.metrics.UnmanagedNodes.Store(int64(len(m.unmanaged)))
}

// report logs every bad Node in a batch by name (once per change: the
// index leaves out Changes that repeat the last one) and counts it.
func (m *Manager) report(changes []peers.Change) {
	for _, c := range changes {
		if c.Invalid != nil {
			m.metrics.InvalidNodeReports.Add(1)
			m.log.Warn("node is not a usable peer", zap.String("node", strings.TrimPrefix(c.Key, "node/")),
				zap.Stringer("subnet", c.Invalid.Subnet), zap.Error(c.Invalid.Err))
		}
	}
}

// noteAPI counts a failed list or watch. A connection failure or an
// apiserver that is not ready (5xx, 429, timeouts) marks the session
// broken, so the probe restarts it once the apiserver answers. A refusal
// (403 after an RBAC change, 401) is left to the reflector's backoff: a
// fresh informer would be refused just the same, once a second.
func (m *Manager) noteAPI(broken *atomic.Bool, verb string, err error) {
	if err == nil {
		broken.Store(false)
		return
	}
	m.metrics.StoreErrors.Add(1)
	var status apierrors.APIStatus
	transient := apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsServerTimeout(err) ||
		apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err)
	if errors.As(err, &status) && !transient {
		m.log.Warn("kube-apiserver refused a Node "+verb+"; retrying with backoff", zap.Error(apiError(verb, "nodes", err)))
		return
	}
	if !broken.Swap(true) {
		m.log.Warn("kube-apiserver unreachable; the data plane keeps forwarding with the tunnels it has",
			zap.String("call", verb+" nodes"), zap.Error(err))
	}
}

// probe asks the apiserver for its version while the session is broken and
// ends the session (cancel) as soon as it answers.
func (m *Manager) probe(ctx context.Context, broken *atomic.Bool, cancel func()) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !broken.Load() {
			continue
		}
		pctx, pcancel := context.WithTimeout(ctx, probeInterval)
		err := m.client.version(pctx)
		pcancel()
		if err == nil {
			cancel()
			return
		}
	}
}

// dirtySet collects Node names that changed since the last take, so a
// burst of events becomes one batch and a Node changed twice is read once.
type dirtySet struct {
	mu    sync.Mutex
	names map[string]struct{}
	ready chan struct{} // has a value when names is not empty
}

func newDirtySet() *dirtySet {
	return &dirtySet{names: map[string]struct{}{}, ready: make(chan struct{}, 1)}
}

func (d *dirtySet) add(name string) {
	d.mu.Lock()
	d.names[name] = struct{}{}
	d.mu.Unlock()
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

func (d *dirtySet) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.names))
	for n := range d.names {
		out = append(out, n)
	}
	d.names = map[string]struct{}{}
	return out
}
