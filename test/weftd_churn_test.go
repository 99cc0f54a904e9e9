package test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// joinBound is how fast every weftd must have a new lease in its tunnels map.
const joinBound = time.Second

// TestWeftdLeaseChurn: leases of remote nodes appear, disappear, expire and
// change in etcd (written in flannel's JSON, for nodes that exist only as
// leases), and every weftd follows: a join reaches every tunnels map within
// a second, over 20 joins.
func TestWeftdLeaseChurn(t *testing.T) {
	c := newLab(t, "")
	var nodes []*lab.Node
	for _, name := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, mustAddWeftNode(t, c, name))
	}
	cli := etcdClient(t, c)
	w := newTunnelWatcher(t, nodes)

	t.Run("Join20", func(t *testing.T) {
		var lat []time.Duration
		for i := range 20 {
			f := fakeNodeN(i)
			start := time.Now()
			putLease(t, cli, c, f)
			lat = append(lat, w.until(t, start, present(f), f.Subnet, 5*time.Second))
		}
		sorted := slices.Clone(lat)
		slices.Sort(sorted)
		t.Logf("join -> in every tunnels map (3 nodes), 20 joins: p50 %v, p99 %v, max %v",
			percentile(sorted, 0.50).Round(time.Microsecond), percentile(sorted, 0.99).Round(time.Microsecond), sorted[len(sorted)-1].Round(time.Microsecond))
		for i, d := range lat {
			if d > joinBound {
				t.Errorf("join %d (%s): %v until every node had it, want at most %v", i, fakeNodeN(i).Subnet, d, joinBound)
			}
		}
	})

	t.Run("Delete", func(t *testing.T) {
		for _, i := range []int{0, 1, 2} {
			f := fakeNodeN(i)
			start := time.Now()
			deleteKey(t, cli, leaseKey(c, f.Subnet))
			d := w.until(t, start, absent, f.Subnet, 5*time.Second)
			t.Logf("lease %s deleted -> gone from every tunnels map in %v", f.Subnet, d.Round(time.Microsecond))
		}
	})

	t.Run("Expire", func(t *testing.T) {
		const ttl = 2 // seconds; the test etcd's minimum is 1
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g, err := cli.Grant(ctx, ttl)
		if err != nil {
			t.Fatal(err)
		}
		f := fakeNodeN(30)
		start := time.Now()
		putLease(t, cli, c, f, clientv3.WithLease(g.ID))
		w.until(t, start, present(f), f.Subnet, 5*time.Second)
		// Not renewed: etcd deletes the key once the lease runs out.
		d := w.until(t, start, absent, f.Subnet, ttl*time.Second+10*time.Second)
		t.Logf("lease %s on a %ds etcd lease, not renewed -> gone from every tunnels map %v after it was written", f.Subnet, ttl, d.Round(time.Millisecond))
		if d < ttl*time.Second {
			t.Errorf("entry gone after %v, before the %ds lease could expire", d, ttl)
		}
	})

	t.Run("PublicIPChanged", func(t *testing.T) {
		f := fakeNodeN(3)
		f.PublicIP = netip.MustParseAddr("192.168.77.250")
		start := time.Now()
		putLease(t, cli, c, f)
		d := w.until(t, start, present(f), f.Subnet, 5*time.Second)
		t.Logf("lease %s PublicIP -> %s: every tunnels map updated in %v", f.Subnet, f.PublicIP, d.Round(time.Microsecond))
	})

	t.Run("VtepMACChanged", func(t *testing.T) {
		f := fakeNodeN(4)
		f.VtepMAC = net.HardwareAddr{0x0e, 0xfa, 0x4e, 0xff, 0xff, 0x04}
		start := time.Now()
		putLease(t, cli, c, f)
		d := w.until(t, start, present(f), f.Subnet, 5*time.Second)
		t.Logf("lease %s VtepMAC -> %s: every tunnels map updated in %v", f.Subnet, f.VtepMAC, d.Round(time.Microsecond))
	})

	t.Run("EveryMapEqualsEtcd", func(t *testing.T) {
		for _, n := range nodes {
			waitTunnelsMatchEtcd(t, cli, c, n, 2*time.Second)
			running(t, c, n)
		}
	})
}

// present holds once the entry is exactly f's; absent once there is none.
func present(f fakeNode) func(maps.Tunnel, bool) bool {
	return func(got maps.Tunnel, ok bool) bool { return ok && got.Equal(f.tunnel()) }
}

func absent(_ maps.Tunnel, ok bool) bool { return !ok }

// tunnelWatcher polls several nodes' pinned tunnels maps directly.
type tunnelWatcher struct {
	nodes []*lab.Node
	sets  []*maps.Set
}

func newTunnelWatcher(t *testing.T, nodes []*lab.Node) *tunnelWatcher {
	t.Helper()
	w := &tunnelWatcher{nodes: nodes}
	for _, n := range nodes {
		s, err := n.Maps()
		if err != nil {
			t.Fatalf("open maps of %s: %v", n.Name, err)
		}
		w.sets = append(w.sets, s)
	}
	t.Cleanup(func() {
		for _, s := range w.sets {
			s.Close()
		}
	})
	return w
}

// until polls every node's entry for subnet (a kernel LPM lookup, what the
// data plane does for a packet) until cond holds on all of them, and
// returns how long after start that was; it fails after timeout.
func (w *tunnelWatcher) until(t *testing.T, start time.Time, cond func(got maps.Tunnel, ok bool) bool, subnet netip.Prefix, timeout time.Duration) time.Duration {
	t.Helper()
	done := make([]bool, len(w.sets))
	left := len(w.sets)
	var last time.Duration
	for {
		for i, s := range w.sets {
			if done[i] {
				continue
			}
			got, err := s.Tunnels.Match(subnet.Addr())
			if err != nil && !errors.Is(err, maps.ErrNotFound) {
				t.Fatalf("node %s: %v", w.nodes[i].Name, err)
			}
			got.Subnet = subnet
			if ok := err == nil; cond(got, ok) {
				done[i] = true
				left--
				last = time.Since(start)
			}
		}
		if left == 0 {
			return last
		}
		if time.Since(start) > timeout {
			for i, d := range done {
				if !d {
					got, err := w.sets[i].Tunnels.Match(subnet.Addr())
					t.Errorf("node %s: entry for %s still %v (%v) after %v", w.nodes[i].Name, subnet, got, err, timeout)
				}
			}
			t.FailNow()
		}
		time.Sleep(500 * time.Microsecond)
	}
}
