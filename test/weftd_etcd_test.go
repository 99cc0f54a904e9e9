package test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestWeftdEtcdOutage: etcd stops for 30 s while pods on two nodes ping
// each other at 1,000 pkt/s: nothing is lost, nothing is removed, and once
// etcd is back every weftd follows changes again. Then one node is cut off
// etcd (its data plane untouched) while leases are added, changed and
// deleted; when it can reach etcd again it picks up every change.
func TestWeftdEtcdOutage(t *testing.T) {
	c := newLab(t, "")
	var nodes []*lab.Node
	for _, name := range []string{"n1", "n2", "n3"} {
		n := mustAddWeftNode(t, c, name)
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	outer := t
	cli := etcdClient(t, c)
	for i := range 4 {
		putLease(t, cli, c, fakeNodeN(i))
	}
	for _, n := range nodes {
		waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
	}

	t.Run("Stopped30s", func(t *testing.T) {
		before := map[string][]maps.Tunnel{}
		for _, n := range nodes {
			before[n.Name] = mustTunnels(t, n)
		}
		// etcd's graceful stop waits for open watches for a few seconds
		// before it cuts them: ~43 s of pings cover that, 30 s down, the restart.
		ping := startFloodPing(t, n1.Pods[0].NSPath, n2.Pods[0].IP, 43000)
		time.Sleep(time.Second)
		c.Etcd.Stop()
		stopped := time.Now()
		time.Sleep(30 * time.Second)
		for _, n := range nodes {
			running(t, c, n)
			if got := mustTunnels(t, n); !sameTunnels(got, before[n.Name]) {
				t.Errorf("node %s: tunnels changed while etcd was down: %v, before %v", n.Name, tunnelSet(got), tunnelSet(before[n.Name]))
			}
		}
		if err := c.Etcd.Restart(); err != nil {
			t.Fatal(err)
		}
		t.Logf("etcd down for %v", time.Since(stopped).Round(time.Millisecond))

		// Back: a lease written at once reaches every node (their clients
		// reconnect, the watches resume or re-list). The test's own client
		// is in gRPC's reconnect backoff like the daemons': use a fresh one.
		cli = etcdClient(outer, c)
		w := newTunnelWatcher(t, nodes)
		f := fakeNodeN(20)
		start := time.Now()
		putLease(t, cli, c, f)
		d := w.until(t, start, present(f), f.Subnet, 60*time.Second)
		t.Logf("lease written as etcd came back: in every tunnels map after %v", d.Round(time.Millisecond))
		if d > 5*time.Second {
			// weftd caps gRPC's reconnect backoff at 2 s; the default grows to 2 minutes.
			t.Errorf("weftd took %v to follow etcd again after the outage, want at most 5s", d)
		}
		ping.assertNoLoss(t, "ping n1 -> n2 across 30 s without etcd", start)
		for _, n := range nodes {
			waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
			running(t, c, n)
		}
	})

	t.Run("PartitionResync", func(t *testing.T) {
		w := newTunnelWatcher(t, []*lab.Node{n1, n2})
		c.Fwd.Partition(n3.Topo.UnderlayIP)
		partitioned := time.Now()
		healed := false
		heal := func() {
			if !healed {
				c.Fwd.Heal(n3.Topo.UnderlayIP)
				healed = true
			}
		}
		defer heal()
		before := mustTunnels(t, n3)

		// Changes n3 cannot see: a join, a leave, a new PublicIP, a new VtepMAC.
		join := fakeNodeN(21)
		moved := fakeNodeN(1)
		moved.PublicIP = netip.MustParseAddr("192.168.77.251")
		remac := fakeNodeN(2)
		remac.VtepMAC = net.HardwareAddr{0x0e, 0xfa, 0x4e, 0xee, 0xee, 0x02}
		start := time.Now()
		putLease(t, cli, c, join)
		deleteKey(t, cli, leaseKey(c, fakeNodeN(0).Subnet))
		putLease(t, cli, c, moved)
		putLease(t, cli, c, remac)
		for _, cond := range []struct {
			sn netip.Prefix
			ok func(maps.Tunnel, bool) bool
		}{{join.Subnet, present(join)}, {fakeNodeN(0).Subnet, absent}, {moved.Subnet, present(moved)}, {remac.Subnet, present(remac)}} {
			w.until(t, start, cond.ok, cond.sn, 5*time.Second) // the connected nodes follow at once
		}
		// n3 keeps forwarding on what it had.
		if out, err := ping(n1.Pods[0].NSPath, n3.Pods[0].IP, 3, 0); err != nil {
			t.Errorf("pod n1 -> pod n3 while n3 is cut off etcd: %v\n%s", err, out)
		}
		time.Sleep(3 * time.Second)
		if got := mustTunnels(t, n3); !sameTunnels(got, before) {
			t.Fatalf("n3 changed its tunnels while cut off etcd (is the partition real?): %v", tunnelSet(got))
		}
		running(t, c, n3)

		heal()
		healedAt := time.Now()
		waitTunnelsMatchEtcd(t, cli, c, n3, 30*time.Second)
		t.Logf("n3 cut off etcd for %v; after the heal it had all 4 changes in %v", healedAt.Sub(partitioned).Round(time.Millisecond), time.Since(healedAt).Round(time.Millisecond))
		for _, n := range nodes {
			waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
		}
		if out, err := ping(n3.Pods[0].NSPath, n1.Pods[0].IP, 2, 0); err != nil {
			t.Errorf("pod n3 -> pod n1 after the heal: %v\n%s", err, out)
		}
	})
}
