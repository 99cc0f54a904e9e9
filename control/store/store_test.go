package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/weftnet/weft/control/flannel"
)

// A /26 cut into /29s: seven allocatable subnets, so five nodes starting
// at once collide often.
const smallNet = `{"Network":"10.5.0.0/26","SubnetLen":29,"Backend":{"Type":"vxlan","VNI":1}}`
const bigNet = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`

func mac(i int) net.HardwareAddr { return net.HardwareAddr{0x8e, 0, 0, 0, 0, byte(i)} }

func node(i int) LeaseRequest {
	return LeaseRequest{PublicIP: netip.AddrFrom4([4]byte{192, 168, 8, byte(i)}), VtepMAC: mac(i), TTL: 30 * time.Second}
}

func leaseValue(ip string, m net.HardwareAddr) string {
	return fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, ip, m)
}

func getKV(t *testing.T, cli *clientv3.Client, key string) (value string, lease clientv3.LeaseID, modRev int64, ok bool) {
	t.Helper()
	resp, err := cli.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, 0, false
	}
	kv := resp.Kvs[0]
	return string(kv.Value), clientv3.LeaseID(kv.Lease), kv.ModRevision, true
}

func eventually(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if f() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}

func TestGetConfig(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, err := s.GetConfig(testCtx(t))
	if err != nil || cfg.Network.String() != "10.244.0.0/16" || cfg.SubnetLen != 24 || cfg.Backend.Port != 8472 {
		t.Fatalf("%+v %v", cfg, err)
	}

	if _, err := New(cli, s.Prefix()+"/nothing", nil, nil).GetConfig(testCtx(t)); !errors.Is(err, ErrConfigNotFound) {
		t.Fatalf("missing config: %v", err)
	}
	if _, err := cli.Put(testCtx(t), s.Prefix()+"/config", `{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}`); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetConfig(testCtx(t))
	if !errors.Is(err, flannel.ErrBackendType) || !strings.Contains(err.Error(), s.Prefix()+"/config") {
		t.Fatalf("host-gw config: %v", err)
	}
}

func TestAcquireConcurrentNodesGetDistinctSubnets(t *testing.T) {
	cli := shared.client(t)
	for round := range 3 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			s := newTestStore(t, cli, smallNet)
			cfg, err := s.GetConfig(testCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			var (
				wg   sync.WaitGroup
				got  = make([]*OwnLease, 5)
				errs = make([]error, 5)
			)
			core, logs := observer.New(zap.DebugLevel)
			start := make(chan struct{})
			for i := range 5 {
				wg.Go(func() {
					// Each node is its own Store, as each is its own weftd.
					ns := New(cli, s.Prefix(), zap.New(core), nil)
					<-start
					got[i], errs[i] = ns.AcquireLease(testCtx(t), cfg, node(i+1))
				})
			}
			close(start)
			wg.Wait()
			seen := map[netip.Prefix]int{}
			for i := range 5 {
				if errs[i] != nil {
					t.Fatalf("node %d: %v", i+1, errs[i])
				}
				sn := got[i].Subnet()
				if j, dup := seen[sn]; dup {
					t.Fatalf("nodes %d and %d both got %s", j+1, i+1, sn)
				}
				seen[sn] = i
				if !cfg.InRange(sn) {
					t.Fatalf("node %d got %s outside [%s, %s]", i+1, sn, cfg.SubnetMin, cfg.SubnetMax)
				}
				v, id, _, ok := getKV(t, cli, got[i].Key())
				if !ok || v != leaseValue(node(i+1).PublicIP.String(), mac(i+1)) || id != got[i].ID() {
					t.Fatalf("node %d key %s = %q lease %x, want ours with lease %x", i+1, got[i].Key(), v, id, got[i].ID())
				}
			}
			t.Logf("%d lost races, retried", logs.FilterMessageSnippet("taken concurrently").Len())
			snap, err := s.List(testCtx(t), cfg)
			if err != nil || len(snap.Leases) != 5 || len(snap.Invalid) != 0 {
				t.Fatalf("list: %d valid %v invalid, %v", len(snap.Leases), snap.Invalid, err)
			}
		})
	}
}

func TestAcquireKeepsSubnetAcrossRestart(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	first, err := s.AcquireLease(testCtx(t), cfg, node(1))
	if err != nil {
		t.Fatal(err)
	}
	_, _, rev0, _ := getKV(t, cli, first.Key())

	// A restarted weftd: a new Store, same PublicIP and VtepMAC. Same
	// subnet, same etcd lease, nothing written.
	again, err := New(cli, s.Prefix(), nil, nil).AcquireLease(testCtx(t), cfg, node(1))
	if err != nil {
		t.Fatal(err)
	}
	_, id, rev1, _ := getKV(t, cli, again.Key())
	if again.Subnet() != first.Subnet() || again.ID() != first.ID() || id != first.ID() || rev1 != rev0 {
		t.Fatalf("restart: subnet %s lease %x rev %d, want %s %x %d", again.Subnet(), again.ID(), rev1, first.Subnet(), first.ID(), rev0)
	}

	// A new VtepMAC (flannel#1795 is a MAC that changes on reboot): same
	// subnet, value updated in place.
	req := node(1)
	req.VtepMAC = mac(99)
	moved, err := New(cli, s.Prefix(), nil, nil).AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	v, id, _, _ := getKV(t, cli, moved.Key())
	if moved.Subnet() != first.Subnet() || v != leaseValue("192.168.8.1", mac(99)) || id != first.ID() {
		t.Fatalf("new MAC: %s %q %x", moved.Subnet(), v, id)
	}
}

func TestAcquireRules(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, smallNet)
	cfg, _ := s.GetConfig(testCtx(t))
	ctx := testCtx(t)

	// Our PublicIP holds 10.5.0.0/29, which the config no longer allows
	// (the first subnet is skipped): flannel deletes it and allocates anew.
	stale := flannel.LeaseKey(s.Prefix(), netip.MustParsePrefix("10.5.0.0/29"))
	if _, err := cli.Put(ctx, stale, leaseValue("192.168.8.1", mac(1))); err != nil {
		t.Fatal(err)
	}
	// Likewise one whose size is no longer SubnetLen.
	wrongSize := flannel.LeaseKey(s.Prefix(), netip.MustParsePrefix("10.5.0.32/28"))
	if _, err := cli.Put(ctx, wrongSize, leaseValue("192.168.8.1", mac(1))); err != nil {
		t.Fatal(err)
	}
	o, err := s.AcquireLease(ctx, cfg, node(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{stale, wrongSize} {
		if _, _, _, ok := getKV(t, cli, k); ok {
			t.Fatalf("incompatible lease %s kept", k)
		}
	}
	if !cfg.InRange(o.Subnet()) {
		t.Fatalf("new lease %s out of range", o.Subnet())
	}

	// Previous is honoured when free.
	req := node(2)
	free := cfg.FreeSubnets([]netip.Prefix{o.Subnet()}, 100)
	req.Previous = free[len(free)-1]
	if o2, err := s.AcquireLease(ctx, cfg, req); err != nil || o2.Subnet() != req.Previous {
		t.Fatalf("previous: %v %v", o2.Subnet(), err)
	}

	// A garbage value still blocks its subnet: fill the rest with it.
	for _, p := range cfg.FreeSubnets([]netip.Prefix{o.Subnet(), req.Previous}, 100) {
		if _, err := cli.Put(ctx, flannel.LeaseKey(s.Prefix(), p), "garbage"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AcquireLease(ctx, cfg, node(3)); !errors.Is(err, ErrNoFreeSubnet) {
		t.Fatalf("full network: %v", err)
	}
	if leases, _ := cli.Leases(ctx); leases != nil {
		for _, l := range leases.Leases {
			ttl, _ := cli.TimeToLive(ctx, l.ID, clientv3.WithAttachedKeys())
			if len(ttl.Keys) == 0 {
				t.Errorf("etcd lease %x left behind with no keys", l.ID)
			}
		}
	}
}

func TestLeaseExpiresWithoutKeepAlive(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	req := node(1)
	req.TTL = time.Second
	o, err := s.AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the unrenewed key to expire", func() bool {
		_, _, _, ok := getKV(t, cli, o.Key())
		return !ok
	})

	// With KeepAlive running the key outlives its TTL several times over.
	o2, err := s.AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o2.KeepAlive(ctx) }()
	time.Sleep(3 * time.Second)
	_, _, _, ok := getKV(t, cli, o2.Key())
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("KeepAlive returned %v", err)
	}
	if !ok {
		t.Fatal("key expired while KeepAlive ran")
	}
}

func TestKeepAliveReacquiresSameSubnet(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	req := node(1)
	req.TTL = 2 * time.Second
	o, err := s.AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	sn, oldID := o.Subnet(), o.ID()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.KeepAlive(ctx) }()
	defer func() { cancel(); <-done }()

	// Lose the etcd lease as a long etcd outage would: the key goes with it.
	if _, err := cli.Revoke(testCtx(t), oldID); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "the subnet to be re-acquired under a new etcd lease", func() bool {
		v, id, _, ok := getKV(t, cli, flannel.LeaseKey(s.Prefix(), sn))
		return ok && id != oldID && id == o.ID() && v == leaseValue("192.168.8.1", mac(1))
	})
	if o.Subnet() != sn {
		t.Fatalf("moved to %s", o.Subnet())
	}
}

func TestKeepAliveStopsWhenSubnetTaken(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	req := node(1)
	req.TTL = 2 * time.Second
	o, err := s.AcquireLease(testCtx(t), cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(testCtx(t), o.ID()); err != nil {
		t.Fatal(err)
	}
	// Another node takes the subnet before we notice.
	if _, err := cli.Put(testCtx(t), o.Key(), leaseValue("192.168.8.7", mac(7))); err != nil {
		t.Fatal(err)
	}
	err = o.KeepAlive(testCtx(t))
	if !errors.Is(err, ErrSubnetTaken) || !strings.Contains(err.Error(), o.Key()) {
		t.Fatalf("KeepAlive = %v, want ErrSubnetTaken naming %s", err, o.Key())
	}
}

func TestRelease(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	o, err := s.AcquireLease(testCtx(t), cfg, node(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Release(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := getKV(t, cli, o.Key()); ok {
		t.Fatal("key still there after Release")
	}
}

func TestWatchDeliversAddChangeDelete(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	snap, err := s.List(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	key := flannel.LeaseKey(s.Prefix(), netip.MustParsePrefix("10.244.9.0/24"))
	ctx := testCtx(t)
	for _, op := range []clientv3.Op{
		clientv3.OpPut(key, leaseValue("192.168.8.9", mac(9))),
		clientv3.OpPut(key, leaseValue("192.168.8.10", mac(9))),
		clientv3.OpDelete(key),
	} {
		if _, err := cli.Do(ctx, op); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, snap.Revision+1)
	var got []string
	for len(got) < 3 {
		b := <-ch
		if b.Err != nil {
			t.Fatal(b.Err)
		}
		for _, e := range b.Events {
			got = append(got, e.Type.String()+" "+strings.TrimPrefix(e.KV.Key, s.Prefix())+" "+string(e.KV.Value))
		}
	}
	want := []string{
		"put /subnets/10.244.9.0-24 " + leaseValue("192.168.8.9", mac(9)),
		"put /subnets/10.244.9.0-24 " + leaseValue("192.168.8.10", mac(9)),
		"delete /subnets/10.244.9.0-24 ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestWatchFromCompactedRevision(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	ctx := testCtx(t)
	r1, err := cli.Put(ctx, s.Prefix()+"/subnets/10.244.3.0-24", leaseValue("192.168.8.3", mac(3)))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := cli.Put(ctx, s.Prefix()+"/subnets/10.244.4.0-24", leaseValue("192.168.8.4", mac(4)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, r2.Header.Revision); err != nil {
		t.Fatal(err)
	}
	b := <-s.Watch(ctx, r1.Header.Revision)
	if !errors.Is(b.Err, ErrCompacted) {
		t.Fatalf("watch below the compaction horizon: %+v", b)
	}
}

// syncRecorder runs Sync and keeps the latest snapshot.
type syncRecorder struct {
	mu     sync.Mutex
	last   Snapshot
	n      int
	cancel context.CancelFunc
	done   chan error
}

func startSync(t *testing.T, s *Store, cfg *flannel.NetworkConfig) *syncRecorder {
	ctx, cancel := context.WithCancel(context.Background())
	r := &syncRecorder{cancel: cancel, done: make(chan error, 1)}
	go func() {
		r.done <- s.Sync(ctx, cfg, func(snap Snapshot) {
			r.mu.Lock()
			r.last, r.n = snap, r.n+1
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-r.done; !errors.Is(err, context.Canceled) {
			t.Errorf("Sync returned %v", err)
		}
	})
	return r
}

func (r *syncRecorder) snapshot() Snapshot { r.mu.Lock(); defer r.mu.Unlock(); return r.last }

// describe renders a snapshot as "subnet=publicIP ..." and "!key" per bad key.
func describe(s Snapshot) string {
	var parts []string
	for _, l := range s.Leases {
		parts = append(parts, l.Subnet.String()+"="+l.PublicIP().String())
	}
	for _, e := range s.Invalid {
		parts = append(parts, "!"+e.Key[strings.LastIndex(e.Key, "/")+1:])
	}
	return strings.Join(parts, " ")
}

func (r *syncRecorder) waitFor(t *testing.T, want string) Snapshot {
	t.Helper()
	var last string
	eventually(t, 15*time.Second, "snapshot "+want, func() bool {
		last = describe(r.snapshot())
		return last == want
	})
	return r.snapshot()
}

func TestSyncFollowsChangesAndReportsBadData(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	ctx := testCtx(t)
	put := func(sn, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, s.Prefix()+"/subnets/"+sn, v); err != nil {
			t.Fatal(err)
		}
	}
	put("10.244.1.0-24", leaseValue("192.168.8.1", mac(1)))
	r := startSync(t, s, cfg)
	r.waitFor(t, "10.244.1.0/24=192.168.8.1")

	put("10.244.2.0-24", leaseValue("192.168.8.2", mac(2)))
	r.waitFor(t, "10.244.1.0/24=192.168.8.1 10.244.2.0/24=192.168.8.2")
	put("10.244.2.0-24", leaseValue("192.168.8.22", mac(2)))
	r.waitFor(t, "10.244.1.0/24=192.168.8.1 10.244.2.0/24=192.168.8.22")

	// Each bad value is reported under its key; the valid leases stay.
	bad := []struct{ key, value string }{
		{"10.244.3.0-24", `{"PublicIP":`},
		{"10.244.4.0-24", leaseValue("192.168.8.300", mac(4))},
		{"10.244.5.0-24", `{"PublicIP":"192.168.8.5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"nope"}}`},
		{"10.244.1.0-25", leaseValue("192.168.8.6", mac(6))},
		{"10.99.0.0-24", leaseValue("192.168.8.7", mac(7))},
	}
	for _, b := range bad {
		put(b.key, b.value)
	}
	snap := r.waitFor(t, "10.244.1.0/24=192.168.8.1 10.244.2.0/24=192.168.8.22 !10.244.1.0-25 !10.244.3.0-24 !10.244.4.0-24 !10.244.5.0-24 !10.99.0.0-24")
	wantErr := map[string]error{
		"10.244.3.0-24": flannel.ErrLeaseJSON,
		"10.244.4.0-24": flannel.ErrPublicIP,
		"10.244.5.0-24": flannel.ErrVtepMAC,
		"10.244.1.0-25": flannel.ErrOverlap,
		"10.99.0.0-24":  flannel.ErrOutsideNetwork,
	}
	for _, e := range snap.Invalid {
		name := e.Key[strings.LastIndex(e.Key, "/")+1:]
		if !errors.Is(e, wantErr[name]) || !strings.Contains(e.Error(), e.Key) {
			t.Errorf("%s: %v, want %v naming the key", name, e, wantErr[name])
		}
	}

	if _, err := cli.Delete(ctx, s.Prefix()+"/subnets/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "")
}

func TestSyncResyncsAfterCompaction(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	ctx := testCtx(t)
	if _, err := cli.Put(ctx, s.Prefix()+"/subnets/10.244.1.0-24", leaseValue("192.168.8.1", mac(1))); err != nil {
		t.Fatal(err)
	}
	// Between the first list and its watch, a lease changes, another is
	// added, and etcd compacts past the listed revision: the watch can only
	// fail, and only a re-list can recover the change.
	var once sync.Once
	s.afterList = func() {
		once.Do(func() {
			cli.Put(ctx, s.Prefix()+"/subnets/10.244.1.0-24", leaseValue("192.168.8.11", mac(1)))
			r, err := cli.Put(ctx, s.Prefix()+"/subnets/10.244.2.0-24", leaseValue("192.168.8.2", mac(2)))
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
				t.Error(err)
			}
		})
	}
	r := startSync(t, s, cfg)
	r.waitFor(t, "10.244.1.0/24=192.168.8.11 10.244.2.0/24=192.168.8.2")
	if n := s.metrics.Resyncs.Load(); n < 1 {
		t.Fatalf("resyncs = %d", n)
	}
	// And it keeps watching after the resync.
	if _, err := cli.Put(ctx, s.Prefix()+"/subnets/10.244.3.0-24", leaseValue("192.168.8.3", mac(3))); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "10.244.1.0/24=192.168.8.11 10.244.2.0/24=192.168.8.2 10.244.3.0/24=192.168.8.3")
}

func TestSyncSurvivesEtcdRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts etcd")
	}
	dir := t.TempDir()
	e, err := startEtcd(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer e.stop()
	cli := e.client(t)
	s := newTestStore(t, cli, bigNet)
	cfg, _ := s.GetConfig(testCtx(t))
	r := startSync(t, s, cfg)
	r.waitFor(t, "")

	e.stop()
	time.Sleep(time.Second)
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(testCtx(t), s.Prefix()+"/subnets/10.244.1.0-24", leaseValue("192.168.8.1", mac(1))); err != nil {
		t.Fatal(err)
	}
	r.waitFor(t, "10.244.1.0/24=192.168.8.1")
}
