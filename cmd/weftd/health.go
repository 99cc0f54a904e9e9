package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/store"
	"github.com/weftnet/weft/loader"
)

// auditInterval is how often the tunnels map is read back and compared
// with what weftd wrote (reconcile.Audit). At 50,000 entries a read costs
// tens of milliseconds of one core in batch syscalls, so once a minute is
// noise.
const auditInterval = time.Minute

// storeHealth is what the monitor asks of a store about itself: the etcd
// store has a network config to watch and a server to reach. The
// Kubernetes store (config from a file, no lease TTL) has neither; its node
// gets the link check only.
type storeHealth interface {
	WatchConfig(ctx context.Context, fn func(*flannel.NetworkConfig, error))
	Probe(ctx context.Context, timeout time.Duration) error
	Renewed() time.Time // last lease renewal: etcd answered
}

// checkInterval is how often the monitor looks at the program links and
// at how long etcd has been silent.
const checkInterval = time.Second

// health is what keeps weftd unready after it was first ready: each reason
// is set and cleared by the check that owns it. /healthz answers 503 and
// lists the reasons while any is set.
type health struct {
	mu      sync.Mutex
	reasons map[string]string // check -> why
}

func (h *health) set(check, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reasons == nil {
		h.reasons = map[string]string{}
	}
	if why == "" {
		delete(h.reasons, check)
	} else {
		h.reasons[check] = why
	}
}

// failing lists the current reasons, in a stable order.
func (h *health) failing() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, c := range []string{"store", "config", "links", "lease"} {
		if r, ok := h.reasons[c]; ok {
			out = append(out, c+": "+r)
		}
	}
	return out
}

func (h *health) gauges() (storeReachable, configChanged, linksMissing, leaseLost bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, s := h.reasons["store"]
	_, c := h.reasons["config"]
	_, l := h.reasons["links"]
	_, o := h.reasons["lease"]
	return !s, c, l, o
}

// renewalDeadline is how long the store may stay silent before weftd says
// it is unready: the lease TTL (past it the lease is gone anyway), but at
// most a minute, because with flannel's 24 h default TTL an outage would
// otherwise stay invisible for a day.
func renewalDeadline(ttl time.Duration) time.Duration { return min(ttl, time.Minute) }

// monitor runs the checks until ctx is done:
//   - store: weftd is unready when etcd has not answered for the renewal
//     deadline, and ready again at the next answer. Lease renewals and the
//     config watch count as answers; when neither came for a third of the
//     deadline, one cheap read asks (at flannel's 24 h TTL that is one
//     serializable read per node every 20 s, not a poll every second);
//   - config: the network config is watched (store.WatchConfig); one
//     different from the one weftd started with is logged, counted and
//     makes weftd unready, and is not applied. A change of Network,
//     SubnetLen, VNI or port re-addresses every node and needs every node
//     restarted; applying it piecemeal on a running node would leave half a
//     cluster on each config. flanneld reads its config only at start;
//     weftd keeps forwarding with the config it has and says so until an
//     operator restarts it;
//   - links: every program link SetupNode pinned must still be attached.
func (d *daemon) monitor(ctx context.Context, s subnetStore, running *flannel.NetworkConfig, links []string) {
	deadline := renewalDeadline(d.cfg.LeaseTTL)
	var lastContact atomic.Int64
	contact := func() { lastContact.Store(time.Now().UnixNano()) }
	contact()
	st, _ := s.(storeHealth)
	if st != nil {
		go d.watchConfig(ctx, st, running, contact)
	}

	t := time.NewTicker(checkInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.live.beat(time.Now())
		if st != nil {
			d.checkStore(ctx, st, deadline, &lastContact, contact)
		}
		if err := loader.CheckLinks(d.cfg.PinPath, links); err != nil {
			d.setHealth("links", err.Error())
		} else {
			d.setHealth("links", "")
		}
	}
}

// watchConfig compares every network config the store reports with the
// running one.
func (d *daemon) watchConfig(ctx context.Context, st storeHealth, running *flannel.NetworkConfig, contact func()) {
	st.WatchConfig(ctx, func(cfg *flannel.NetworkConfig, err error) {
		switch {
		case err == nil && !sameConfig(cfg, running):
			contact()
			d.setHealth("config", "the network config in etcd changed; restart weftd on every node to apply it")
		case err == nil:
			contact()
			d.setHealth("config", "")
		case errors.Is(err, store.ErrConfigNotFound) || errors.Is(err, store.ErrConfigInvalid):
			contact()
			d.setHealth("config", "the network config in etcd is gone or invalid: "+err.Error())
		}
	})
}

// checkStore marks the store unreachable when it has been silent past the
// deadline, asking it once when nothing was heard for a third of it.
func (d *daemon) checkStore(ctx context.Context, st storeHealth, deadline time.Duration, lastContact *atomic.Int64, contact func()) {
	if r := st.Renewed(); r.UnixNano() > lastContact.Load() {
		lastContact.Store(r.UnixNano())
	}
	if time.Since(time.Unix(0, lastContact.Load())) > deadline/3 {
		if err := st.Probe(ctx, checkInterval); err == nil {
			contact()
		}
	}
	if silent := time.Since(time.Unix(0, lastContact.Load())); silent > deadline {
		d.setHealth("store", fmt.Sprintf("no answer from etcd for %v (deadline %v)", silent.Round(time.Second), deadline))
	} else {
		d.setHealth("store", "")
	}
}

// setHealth records a check's result and logs each change of it once.
func (d *daemon) setHealth(check, why string) {
	d.health.mu.Lock()
	old := d.health.reasons[check]
	d.health.mu.Unlock()
	if old == why {
		return
	}
	d.health.set(check, why)
	if why == "" {
		d.log.Info("health check passing again", zap.String("check", check))
		return
	}
	d.log.Error("health check failing; weftd is unready", zap.String("check", check), zap.String("reason", why))
}

func sameConfig(a, b *flannel.NetworkConfig) bool { return reflect.DeepEqual(a, b) }

// keepLease runs the own lease's KeepAlive. If another node takes our
// subnet, weftd does not exit: it stays up, unready, with the reason in
// /healthz, weft_own_lease_lost and the log, and keeps forwarding to the
// other nodes for the pods still here, while stopping to treat the subnet
// as its own would need the operator (flanneld exits here; a DaemonSet then
// restarts it into a new subnet under running pods).
func (d *daemon) keepLease(ctx context.Context, own ownLease) error {
	err := own.KeepAlive(ctx)
	if !errors.Is(err, store.ErrSubnetTaken) {
		return err
	}
	d.setHealth("lease", err.Error())
	<-ctx.Done()
	return ctx.Err()
}

// nodeLinks is the node's own program links as SetupNode pinned them.
func nodeLinks(pinPath string) []string {
	links, _ := loader.NodeLinks(pinPath)
	return links
}

// releaseOnError gives the subnet lease back when the data plane could not
// be set up, so that other nodes do not program tunnels to a node that
// cannot receive, and returns err.
func (d *daemon) releaseOnError(own ownLease, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rerr := own.Release(ctx); rerr != nil {
		d.log.Warn("release subnet lease after a failed data plane setup", zap.Error(rerr))
	} else {
		d.log.Info("released the subnet lease: the data plane could not be set up", zap.Error(err))
	}
	return err
}
