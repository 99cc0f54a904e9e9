package test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/lab"
)

// planLog is weftd's message once it has picked its subnet (etcd) and
// before it sets the data plane up.
const planLog = "subnet planned; its lease is published once the data plane is set up"

// ownPut is one write of a lease holding our PublicIP, with the node's
// pinned config as it was when the test saw the write.
type ownPut struct {
	subnet netip.Prefix
	hostIP netip.Addr // the pinned config's weft0 address at that moment
	err    error
}

// watchOwnPuts reports every put of a lease with n's PublicIP from now on,
// reading n's pinned config as soon as each arrives.
func watchOwnPuts(t *testing.T, cli *clientv3.Client, c *lab.Cluster, n *lab.Node) <-chan ownPut {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	out := make(chan ownPut, 16)
	rev := etcdRevision(t, cli)
	prefix := c.EtcdPrefix + "/subnets/"
	wch := cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	mine := `"PublicIP":"` + n.Topo.UnderlayIP.String() + `"`
	go func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut || !strings.Contains(string(ev.Kv.Value), mine) {
					continue
				}
				p := ownPut{}
				name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				p.subnet, p.err = netip.ParsePrefix(strings.Replace(name, "-", "/", 1))
				if ms, err := n.Maps(); err != nil {
					p.err = err
				} else {
					cfg, err := ms.Config.Get()
					ms.Close()
					p.hostIP, p.err = cfg.HostIP, err
				}
				out <- p
			}
		}
	}()
	return out
}

func etcdRevision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(t.Context(), "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// nextOwnPut waits for the next put of our lease.
func nextOwnPut(t *testing.T, puts <-chan ownPut, timeout time.Duration) ownPut {
	t.Helper()
	select {
	case p := <-puts:
		if p.err != nil {
			t.Fatalf("own lease put: %v", p.err)
		}
		return p
	case <-time.After(timeout):
		t.Fatalf("no own lease written within %v", timeout)
	}
	return ownPut{}
}

// TestWeftdPublishesLeaseAfterSetup: with etcd, a peer sees weftd's lease
// key only once weftd's data plane serves the subnet (issue 11): weftd
// plans its subnet without writing, sets the data plane up, then takes
// exactly that subnet; a failed setup writes nothing; a restart writes
// nothing; a subnet taken between plan and publish is never published.
func TestWeftdPublishesLeaseAfterSetup(t *testing.T) {
	c := newLab(t, "")
	n := mustAddWeftNode(t, c, "n1")
	cli := etcdClient(t, c)
	first := n.Subnet

	// fresh stops weftd and leaves the node with only its subnet.env: no
	// lease, no pins, as after a reboot past the lease TTL.
	fresh := func(t *testing.T) {
		t.Helper()
		if n.Cmd != nil {
			select {
			case <-c.Lab.Exited(n.Cmd):
			default:
				if err := stopWeftd(t, c, n, syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
		}
		deleteKey(t, cli, leaseKey(c, first))
		if err := n.Topo.Do(func() error { return loader.TeardownNode(n.PinPath, "") }); err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(n.PinPath)
	}
	// startHeld starts weftd while the test holds the pin lock, so that it
	// plans its subnet and then blocks before loading the data plane.
	startHeld := func(t *testing.T) (unlock func()) {
		t.Helper()
		unlock, err := loader.Lock(n.PinPath)
		if err != nil {
			t.Fatal(err)
		}
		startWeftdNoWait(t, c, n)
		for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
			if _, ok := findLog(n, "msg", planLog); ok {
				break
			}
			running(t, c, n)
			if time.Since(start) > 20*time.Second {
				unlock()
				t.Fatalf("weftd did not plan its subnet:\n%s", n.Log())
			}
		}
		return unlock
	}

	t.Run("RestartWritesNothing", func(t *testing.T) {
		if err := stopWeftd(t, c, n, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		rev := etcdRevision(t, cli)
		if err := c.StartWeftd(n); err != nil {
			t.Fatal(err)
		}
		if n.Subnet != first {
			t.Fatalf("subnet after restart %v, want %v", n.Subnet, first)
		}
		if got := etcdRevision(t, cli); got != rev {
			t.Fatalf("a restart with its lease in place wrote to etcd: revision %d -> %d", rev, got)
		}
	})

	t.Run("SetupFailureWritesNothing", func(t *testing.T) {
		fresh(t)
		// Pins of another layout make the data plane setup fail.
		if err := os.MkdirAll(filepath.Join(n.PinPath, "layout-99"), 0o700); err != nil {
			t.Fatal(err)
		}
		rev := etcdRevision(t, cli)
		startWeftdNoWait(t, c, n)
		select {
		case <-c.Lab.Exited(n.Cmd):
		case <-time.After(20 * time.Second):
			t.Fatal("weftd kept running over pins of another layout")
		}
		if !strings.Contains(n.Log(), "pin layout 99") {
			t.Fatalf("weftd log does not say why:\n%s", n.Log())
		}
		if got := etcdRevision(t, cli); got != rev {
			t.Fatalf("a failed setup wrote to etcd: revision %d -> %d", rev, got)
		}
	})

	t.Run("KeyAfterDataPlane", func(t *testing.T) {
		fresh(t)
		puts := watchOwnPuts(t, cli, c, n)
		rev := etcdRevision(t, cli)
		unlock := startHeld(t)
		// Planned, data plane not loaded (we hold its lock): no key yet.
		got := etcdRevision(t, cli)
		unlock()
		if got != rev {
			t.Fatalf("etcd written before the data plane was set up: revision %d -> %d", rev, got)
		}
		p := nextOwnPut(t, puts, 20*time.Second)
		if p.subnet != first || p.hostIP != loader.HostIP(first) {
			t.Fatalf("lease %v appeared with the pinned config at %v, want %v set up first", p.subnet, p.hostIP, loader.HostIP(first))
		}
		waitReady(t, c, n, 20*time.Second)
	})

	t.Run("PlannedSubnetTakenMeanwhile", func(t *testing.T) {
		fresh(t)
		puts := watchOwnPuts(t, cli, c, n)
		unlock := startHeld(t)
		// weftd planned first (its subnet.env); another node takes it now.
		rival := flannelLease(netip.MustParseAddr("192.0.2.77"), net.HardwareAddr{0x8e, 0, 0, 0, 0, 0x77})
		putKey(t, cli, leaseKey(c, first), rival)
		unlock()
		p := nextOwnPut(t, puts, 20*time.Second)
		if p.subnet == first {
			t.Fatalf("weftd published the subnet another node took")
		}
		if p.hostIP != loader.HostIP(p.subnet) {
			t.Fatalf("lease %v appeared with the pinned config at %v: data plane not set up for it first", p.subnet, p.hostIP)
		}
		waitReady(t, c, n, 20*time.Second)
		if _, ok := findLog(n, "msg", "planned subnet taken by another node before publishing; setting the data plane up for another"); !ok {
			t.Errorf("weftd did not say its planned subnet was taken:\n%s", n.Log())
		}
		resp, err := cli.Get(t.Context(), leaseKey(c, first))
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != rival {
			t.Fatalf("the rival's lease changed: %v %v", resp, err)
		}
		select {
		case p := <-puts:
			t.Fatalf("a second own lease written: %v", p.subnet)
		default:
		}
	})
}
