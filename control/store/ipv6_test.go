package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

// Dual-stack and IPv6-only networks against a real etcd: keys and values
// in flannel's shapes (flannel-io/flannel pkg/subnet MakeSubnetKey and
// lease.LeaseAttrs through encoding/json; control/flannel's tests hold the
// byte-level goldens), flannel's allocator rules per family, the owner
// index per family.

const (
	dualNet   = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
	v6OnlyNet = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
)

func node6(i int) LeaseRequest {
	r := node(i)
	r.PublicIPv6 = netip.MustParseAddr(fmt.Sprintf("fd08::%d", i))
	return r
}

// flannel's dual-stack lease value for node i: both families' fields, the
// same VtepMAC in both (Weft's one VTEP).
func dualValue(i int) string {
	return fmt.Sprintf(`{"PublicIP":"192.168.8.%d","PublicIPv6":"fd08::%d","BackendType":"vxlan",`+
		`"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, i, i, mac(i), mac(i))
}

func v6OnlyValue(i int) string {
	return fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"fd08::%d","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, i, mac(i))
}

func TestAcquireDualStack(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, dualNet)
	ctx := testCtx(t)
	cfg, err := s.GetConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o, err := s.AcquireLease(ctx, cfg, node6(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Revoke(context.Background(), o.ID())
	sn, sn6 := o.Subnet(), o.IPv6Subnet()
	if !cfg.InRange(sn) || !cfg.InRangeIPv6(sn6) {
		t.Fatalf("subnets %s %s out of range", sn, sn6)
	}
	// flannel's key: "10.244.x.0-24&fd00:10:244:y::-64".
	wantKey := fmt.Sprintf("%s/subnets/%s-24&%s-64", s.Prefix(), sn.Addr(), sn6.Addr())
	if o.Key() != wantKey {
		t.Fatalf("key %s, want %s", o.Key(), wantKey)
	}
	v, id, rev, ok := getKV(t, cli, wantKey)
	if !ok || v != dualValue(1) || id != o.ID() {
		t.Fatalf("value %q lease %x\nwant %q", v, id, dualValue(1))
	}
	// It reads back as a lease of both families, as a flannel node's would.
	snap, err := s.List(ctx, cfg)
	if err != nil || len(snap.Leases) != 1 || snap.Leases[0].Subnet != sn || snap.Leases[0].IPv6Subnet != sn6 ||
		snap.Leases[0].PublicIPv6() != node6(1).PublicIPv6 || snap.Leases[0].VXLANv6.VtepMAC.String() != mac(1).String() {
		t.Fatalf("list: %+v %v", snap, err)
	}

	// A restart keeps both subnets and writes nothing.
	again, err := New(cli, s.Prefix(), nil, nil).AcquireLease(ctx, cfg, node6(1))
	if _, _, rev2, _ := getKV(t, cli, wantKey); err != nil || again.Key() != wantKey || again.ID() != o.ID() || rev2 != rev {
		t.Fatalf("restart: %v key %s lease %x rev %d->%d", err, again.Key(), again.ID(), rev, rev2)
	}

	// A node without an IPv6 underlay address (v6-in-v4) gets both subnets
	// and a lease without PublicIPv6, reached over IPv4 for both families.
	req := node(2)
	o2, err := s.AcquireLease(ctx, cfg, req)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Revoke(context.Background(), o2.ID())
	if !o2.IPv6Subnet().IsValid() || o2.IPv6Subnet() == sn6 || o2.Subnet() == sn {
		t.Fatalf("second node: %s", o2.Key())
	}
	// "PublicIPv6":null, but BackendV6Data: a flannel node then still
	// programs the IPv4 half (it skips a lease whose BackendV6Data does not
	// decode altogether).
	wantV6in4 := fmt.Sprintf(`{"PublicIP":"192.168.8.2","PublicIPv6":null,"BackendType":"vxlan",`+
		`"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, mac(2), mac(2))
	if v, _, _, _ := getKV(t, cli, o2.Key()); v != wantV6in4 {
		t.Fatalf("v6-in-v4 value %s\nwant %s", v, wantV6in4)
	}
	snap, err = s.List(ctx, cfg)
	if err != nil || len(snap.Leases) != 2 {
		t.Fatalf("list: %+v %v", snap, err)
	}
	for _, l := range snap.Leases {
		if l.Key == o2.Key() && (l.PublicIPv6().IsValid() || l.VXLANv6.VtepMAC.String() != mac(2).String() || l.IPv6Subnet != o2.IPv6Subnet()) {
			t.Fatalf("v6-in-v4 lease read back: %+v", l)
		}
	}

	// Previous subnets of both families are honoured when free.
	req3 := node6(3)
	req3.Previous = netip.MustParsePrefix("10.244.200.0/24")
	req3.PreviousIPv6 = netip.MustParsePrefix("fd00:10:244:c8::/64")
	plan, err := s.PlanLease(ctx, cfg, req3)
	if err != nil || plan.Subnet != req3.Previous || plan.IPv6Subnet != req3.PreviousIPv6 || plan.Existing != nil {
		t.Fatalf("plan %+v %v", plan, err)
	}
	// A key that takes the planned IPv6 subnet meanwhile (under another
	// IPv4 one) makes the plan stale, though its IPv4 half is still free.
	taken := flannel.LeaseKeyDual(s.Prefix(), netip.MustParsePrefix("10.244.201.0/24"), req3.PreviousIPv6)
	if _, err := cli.Put(ctx, taken, dualValue(9)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AcquirePlan(ctx, cfg, req3, plan); !errors.Is(err, ErrPlanStale) {
		t.Fatalf("AcquirePlan with a taken IPv6 subnet: %v, want ErrPlanStale", err)
	}
	if _, err := cli.Delete(ctx, taken); err != nil {
		t.Fatal(err)
	}
	o3, err := s.AcquirePlan(ctx, cfg, req3, plan)
	if err != nil || o3.Subnet() != plan.Subnet || o3.IPv6Subnet() != plan.IPv6Subnet {
		t.Fatalf("AcquirePlan: %v %v", o3, err)
	}
	o3.Release(ctx)
}

// TestAcquireFamilyChange: turning IPv6 on makes a node give up its IPv4
// lease and take a pair (flannel's isIPv6SubnetConfigCompat), keeping its
// IPv4 subnet when subnet.env names it; turning it off again goes back to
// an IPv4 key, whose value has "PublicIPv6":null as flannel writes it.
func TestAcquireFamilyChange(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	ctx := testCtx(t)
	cfg4, _ := s.GetConfig(ctx)
	o, err := s.AcquireLease(ctx, cfg4, node6(1))
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _, _ := getKV(t, cli, o.Key()); v != leaseValue("192.168.8.1", mac(1)) || o.IPv6Subnet().IsValid() {
		t.Fatalf("IPv4 network: key %s value %s; want no IPv6 fields though the node has an IPv6 address", o.Key(), v)
	}
	cfg6, err := flannel.ParseConfig([]byte(dualNet))
	if err != nil {
		t.Fatal(err)
	}
	req := node6(1)
	req.Previous = o.Subnet()
	o2, err := s.AcquireLease(ctx, cfg6, req)
	if err != nil {
		t.Fatal(err)
	}
	if o2.Subnet() != o.Subnet() || !o2.IPv6Subnet().IsValid() {
		t.Fatalf("after IPv6 on: %s, want %s plus an IPv6 subnet", o2.Key(), o.Subnet())
	}
	if _, _, _, ok := getKV(t, cli, o.Key()); ok {
		t.Fatalf("old IPv4-only key %s kept", o.Key())
	}
	// Off again: the dual key is stale in an IPv4 network.
	o3, err := s.AcquireLease(ctx, cfg4, req)
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _, _ := getKV(t, cli, o3.Key()); o3.Key() != o.Key() || v != leaseValue("192.168.8.1", mac(1)) {
		t.Fatalf("after IPv6 off: %s = %s", o3.Key(), v)
	}
	if _, _, _, ok := getKV(t, cli, o2.Key()); ok {
		t.Fatalf("dual key %s kept in an IPv4 network", o2.Key())
	}
	o3.Release(ctx)
}

func TestAcquireIPv6Only(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, v6OnlyNet)
	ctx := testCtx(t)
	cfg, _ := s.GetConfig(ctx)
	if _, err := s.AcquireLease(ctx, cfg, node(1)); !errors.Is(err, flannel.ErrPublicIP) {
		t.Fatalf("IPv6-only network without PublicIPv6: %v, want ErrPublicIP", err)
	}
	var owns []*OwnLease
	for i := 1; i <= 3; i++ {
		o, err := New(cli, s.Prefix(), nil, nil).AcquireLease(ctx, cfg, node6(i))
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		defer cli.Revoke(context.Background(), o.ID())
		owns = append(owns, o)
		// flannel's IPv6-only key and value.
		if o.Subnet().IsValid() || !strings.HasPrefix(o.Key(), s.Prefix()+"/subnets/0.0.0.0-0&fd00:10:244:") {
			t.Fatalf("node %d key %s", i, o.Key())
		}
		if v, _, _, _ := getKV(t, cli, o.Key()); v != v6OnlyValue(i) {
			t.Fatalf("node %d value %s\nwant %s", i, v, v6OnlyValue(i))
		}
	}
	// Every IPv6-only lease has PublicIP 0.0.0.0: a restart finds its own
	// by PublicIPv6, not another node's (flannel's etcd manager would).
	for i, o := range owns {
		again, err := New(cli, s.Prefix(), nil, nil).AcquireLease(ctx, cfg, node6(i+1))
		if err != nil || again.Key() != o.Key() || again.ID() != o.ID() {
			t.Fatalf("node %d restart: %v %s, want %s", i+1, err, again.Key(), o.Key())
		}
	}
	snap, err := s.List(ctx, cfg)
	if err != nil || len(snap.Leases) != 3 || len(snap.Invalid) != 0 {
		t.Fatalf("list %+v %v", snap, err)
	}
}

// TestSyncBatchesDualStack: the watch's index hands over both families and
// resolves an IPv6 overlap between two keys.
func TestSyncBatchesDualStack(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, dualNet)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	cfg, _ := s.GetConfig(ctx)
	key := func(v4, v6 string) string {
		var p4 netip.Prefix
		if v4 != "" {
			p4 = netip.MustParsePrefix(v4)
		}
		return flannel.LeaseKeyDual(s.Prefix(), p4, netip.MustParsePrefix(v6))
	}
	a := key("10.244.1.0/24", "fd00:10:244:1::/64")
	if _, err := cli.Put(ctx, a, dualValue(1)); err != nil {
		t.Fatal(err)
	}
	batches := make(chan peers.Batch, 16)
	go s.SyncBatches(ctx, cfg, func(b peers.Batch) { batches <- b })
	next := func() peers.Batch {
		t.Helper()
		select {
		case b := <-batches:
			return b
		case <-time.After(10 * time.Second):
			t.Fatal("no batch")
		}
		return peers.Batch{}
	}
	if b := next(); !b.Full || len(b.Changes) != 1 || b.Changes[0].Lease == nil || b.Changes[0].Lease.IPv6Subnet.String() != "fd00:10:244:1::/64" {
		t.Fatalf("first batch %+v", b)
	}
	// A newer key naming a's IPv6 subnet under another IPv4 one loses.
	b2 := key("10.244.2.0/24", "fd00:10:244:1::/64")
	if _, err := cli.Put(ctx, b2, dualValue(2)); err != nil {
		t.Fatal(err)
	}
	changes := func(b peers.Batch) map[string]peers.Change {
		got := map[string]peers.Change{}
		for _, c := range b.Changes {
			got[c.Key] = c
		}
		return got
	}
	b := next()
	if got := changes(b); !errors.Is(got[b2].Invalid, flannel.ErrOverlap) || (got[a] != peers.Change{} && got[a].Lease == nil) {
		t.Fatalf("overlap batch %+v", b)
	}
	// a goes: b2 takes over the IPv6 subnet, in the same delta.
	if _, err := cli.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	b = next()
	if got := changes(b); len(got) != 2 || !got[a].Deleted() || got[b2].Lease == nil {
		t.Fatalf("handover batch %+v", b)
	}
	// An IPv6-only key is an error in a dual-stack network (ErrLeaseFamily).
	c := key("", "fd00:10:244:3::/64")
	if _, err := cli.Put(ctx, c, v6OnlyValue(3)); err != nil {
		t.Fatal(err)
	}
	if b = next(); len(b.Changes) != 1 || !errors.Is(b.Changes[0].Invalid, flannel.ErrLeaseFamily) {
		t.Fatalf("IPv6-only key batch %+v", b)
	}
}
