package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weftnet/weft/control/flannel"
)

// startKeepAlive acquires node 1's lease (long TTL, so only the key's own
// changes matter) and runs KeepAlive; done yields its result.
func startKeepAlive(t *testing.T) (*Store, *OwnLease, <-chan error) {
	t.Helper()
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	req := node(1)
	req.TTL = time.Minute
	o, err := s.AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() { done <- o.KeepAlive(ctx); close(finished) }()
	first := o.ID()
	t.Cleanup(func() {
		cancel()
		<-finished
		// Leave no etcd lease behind for TestAcquireRules' check.
		cli.Revoke(context.Background(), first)
		cli.Revoke(context.Background(), o.ID())
	})
	return s, o, done
}

func TestKeepAliveRestoresDeletedKey(t *testing.T) {
	s, o, _ := startKeepAlive(t)
	cli := s.cli
	sn, id := o.Subnet(), o.ID()
	if _, err := cli.Delete(testCtx(t), o.Key()); err != nil { // an operator's etcdctl del
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 5*time.Second, "the deleted key to be written again", func() bool {
		v, _, _, ok := getKV(t, cli, flannel.LeaseKey(s.Prefix(), sn))
		return ok && v == leaseValue("192.168.8.1", mac(1))
	})
	t.Logf("restored in %v", time.Since(start))
	if _, lid, _, _ := getKV(t, cli, o.Key()); lid != id || o.ID() != id || o.Subnet() != sn {
		t.Fatalf("restored under etcd lease %x (ours %x, now %x), subnet %s; want the live lease and the same subnet", lid, id, o.ID(), o.Subnet())
	}
	eventually(t, 5*time.Second, "the repair to be counted", func() bool { return s.metrics.OwnLeaseRepairs.Load() == 1 })
}

func TestKeepAlivePutsBackOverwrittenValue(t *testing.T) {
	s, o, _ := startKeepAlive(t)
	cli := s.cli
	// Someone rewrites our key with our PublicIP but another VtepMAC.
	if _, err := cli.Put(testCtx(t), o.Key(), leaseValue("192.168.8.1", mac(99))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "our value to be put back", func() bool {
		v, _, _, ok := getKV(t, cli, o.Key())
		return ok && v == leaseValue("192.168.8.1", mac(1))
	})
}

func TestKeepAliveReportsSubnetTakenWhileLeaseLives(t *testing.T) {
	s, o, done := startKeepAlive(t)
	// Another node writes our key with its own PublicIP while our etcd
	// lease is alive: noticed at once, not when the lease runs out.
	if _, err := s.cli.Put(testCtx(t), o.Key(), leaseValue("192.168.8.7", mac(7))); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrSubnetTaken) {
			t.Fatalf("KeepAlive = %v, want ErrSubnetTaken", err)
		}
		if s.metrics.OwnLeaseLost.Load() != 1 {
			t.Fatal("weft_own_lease_lost not set")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("taken subnet not noticed within 5s")
	}
}
