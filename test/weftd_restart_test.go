package test

import (
	"context"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/lab"
)

// TestWeftdRestartKeepsForwarding: weftd on n1 is killed (SIGKILL, then
// SIGTERM in a second round) in the middle of a TCP transfer through n1 and
// a 1,000 pkt/s ping between pods on n2 and n1, stays down while leases
// change, and is restarted. The pinned data plane forwards throughout: no
// ping is lost, the transfer arrives intact. The restarted weftd keeps its
// lease without rewriting it and makes the tunnels map equal to the other
// leases exactly: the lease deleted meanwhile is gone, the one added is
// there. Last, --cleanup-on-exit removes the data plane and the lease.
func TestWeftdRestartKeepsForwarding(t *testing.T) {
	c := newLab(t, "")
	n1 := mustAddWeftNode(t, c, "n1")
	n2 := mustAddWeftNode(t, c, "n2")
	k1, err := c.AddFlannelNode("k1", netip.MustParsePrefix("10.244.200.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := c.AddPod(n, "p1"); err != nil {
			t.Fatal(err)
		}
	}
	cli := etcdClient(t, c)
	ghost := fakeNodeN(1)
	putLease(t, cli, c, ghost)
	for _, n := range []*lab.Node{n1, n2} {
		waitTunnelsMatchEtcd(t, cli, c, n, 5*time.Second)
	}

	ownLease := func() []etcdLease {
		var mine []etcdLease
		for _, l := range etcdLeases(t, cli, c) {
			if l.PublicIP == n1.Topo.UnderlayIP {
				mine = append(mine, l)
			}
		}
		return mine
	}
	orig := ownLease()
	if len(orig) != 1 {
		t.Fatalf("n1 holds %d leases, want 1: %+v", len(orig), orig)
	}

	for i, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		name := map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM"}[sig]
		t.Run(name, func(t *testing.T) {
			// ~13 s of pings: the transfer starts, weftd dies 1.5 s in, stays
			// down 3 s, restarts, and the ping runs on 4 s past the restart.
			ping := startFloodPing(t, n2.Pods[0].NSPath, n1.Pods[0].IP, 13000)
			const size, rate = 48 << 20, 8 << 20 // 6 s through n1's encap and decap
			type result struct {
				res lab.Transfer
				err error
			}
			tr := make(chan result, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				res, err := pacedTransfer(ctx, n1.Pods[0].NSPath, k1.Pods[0].NSPath, k1.Pods[0].IP, size, rate)
				tr <- result{res, err}
			}()
			time.Sleep(1500 * time.Millisecond)

			exitErr := stopWeftd(t, c, n1, sig)
			if sig == syscall.SIGTERM && exitErr != nil {
				t.Errorf("weftd exit after SIGTERM: %v", exitErr)
			}
			assertDataPlaneInstalled(t, n1)
			// While n1's weftd is down: one node leaves, another joins.
			gone, newcomer := ghost, fakeNodeN(10+i)
			deleteKey(t, cli, leaseKey(c, gone.Subnet))
			putLease(t, cli, c, newcomer)
			ghost = newcomer // the next round deletes this one
			time.Sleep(3 * time.Second)
			if stale := mustTunnels(t, n1); !hasTunnel(stale, gone.Subnet) || hasTunnel(stale, newcomer.Subnet) {
				t.Errorf("n1's tunnels changed while its weftd was down: %v", tunnelSet(stale))
			}

			if err := c.StartWeftd(n1); err != nil {
				t.Fatal(err)
			}
			restarted := time.Now()
			waitTunnelsMatchEtcd(t, cli, c, n1, 2*time.Second)
			if mine := ownLease(); len(mine) != 1 || mine[0].Key != orig[0].Key || mine[0].ModRevision != orig[0].ModRevision {
				t.Errorf("n1's leases after the restart: %+v, want exactly the original %+v, unwritten", mine, orig[0])
			}
			if _, ok := findLog(n1, "msg", "kept existing subnet lease", orig[0].Key); !ok {
				t.Errorf("restarted weftd did not log keeping %s", orig[0].Key)
			}

			r := <-tr
			switch {
			case r.err != nil:
				t.Errorf("TCP n1 -> k1 across the %s: %v", name, r.err)
			case !r.res.Intact(size):
				t.Errorf("TCP n1 -> k1 across the %s: received %d of %d bytes, sha256 %s, sent %s", name, r.res.Bytes, size, r.res.RecvSum, r.res.SentSum)
			default:
				t.Logf("TCP n1 -> k1 across the %s: %d MB intact in %v", name, r.res.Bytes>>20, r.res.Duration.Round(time.Millisecond))
			}
			ping.assertNoLoss(t, "ping n2 -> n1 across the "+name+" and restart", restarted.Add(time.Second))
			waitTunnelsMatchEtcd(t, cli, c, n2, 2*time.Second)
		})
	}

	t.Run("CleanupOnExit", func(t *testing.T) {
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatalf("weftd exit after SIGTERM: %v", err)
		}
		if err := c.StartWeftd(n1, "--cleanup-on-exit"); err != nil {
			t.Fatal(err)
		}
		if err := stopWeftd(t, c, n1, syscall.SIGTERM); err != nil {
			t.Fatalf("weftd --cleanup-on-exit exit after SIGTERM: %v", err)
		}
		if _, err := os.Stat(n1.PinPath); !os.IsNotExist(err) {
			t.Errorf("pins still at %s: %v", n1.PinPath, err)
		}
		if _, err := os.Stat(n1.SubnetFile); !os.IsNotExist(err) {
			t.Errorf("subnet.env still at %s: %v", n1.SubnetFile, err)
		}
		for _, dev := range []string{loader.DefaultHostDevice, loader.DefaultGRODevice} {
			if nodeLink(t, n1, dev) != nil {
				t.Errorf("%s still on n1 after --cleanup-on-exit", dev)
			}
		}
		if mine := ownLease(); len(mine) != 0 {
			t.Errorf("n1's lease still in etcd: %+v", mine)
		}
		waitTunnelsMatchEtcd(t, cli, c, n2, 2*time.Second)
		if hasTunnel(mustTunnels(t, n2), n1.Subnet) {
			t.Errorf("n2 still has a tunnel to n1's released subnet %s", n1.Subnet)
		}
	})
}

func mustTunnels(t *testing.T, n *lab.Node) []maps.Tunnel {
	t.Helper()
	ts, err := n.Tunnels()
	if err != nil {
		t.Fatalf("node %s: read tunnels: %v", n.Name, err)
	}
	return ts
}

func hasTunnel(ts []maps.Tunnel, sn netip.Prefix) bool {
	for _, t := range ts {
		if t.Subnet == sn {
			return true
		}
	}
	return false
}

// assertDataPlaneInstalled checks what must outlive weftd: the pins, weft0
// and (tc decap, the default) weftgro0.
func assertDataPlaneInstalled(t *testing.T, n *lab.Node) {
	t.Helper()
	for _, p := range []string{"tunnels", "endpoints", "config", "links"} {
		if _, err := os.Stat(n.PinPath + "/" + p); err != nil {
			t.Errorf("node %s: pinned %s gone with weftd: %v", n.Name, p, err)
		}
	}
	for _, dev := range []string{loader.DefaultHostDevice, loader.DefaultGRODevice} {
		if nodeLink(t, n, dev) == nil {
			t.Errorf("node %s: %s gone with weftd", n.Name, dev)
		}
	}
}

// nodeLink returns the device called name on n, nil if there is none.
func nodeLink(t *testing.T, n *lab.Node, name string) netlink.Link {
	t.Helper()
	h, err := n.Topo.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil
	}
	return l
}
