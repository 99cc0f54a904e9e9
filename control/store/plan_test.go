package store

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// revision is etcd's current revision: unchanged means nothing was written.
func revision(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(testCtx(t), "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestPlanLease: weftd plans its subnet without writing, sets its data
// plane up, then takes the plan with AcquireLease (req.Previous = plan).
func TestPlanLease(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, smallNet)
	cfg, _ := s.GetConfig(testCtx(t))
	ctx := testCtx(t)

	t.Run("FreshNodeWritesNothingUntilAcquire", func(t *testing.T) {
		req := node(1)
		req.Previous = cfg.FreeSubnets(nil, 100)[2]
		rev := revision(t, cli)
		plan, err := s.PlanLease(ctx, cfg, req)
		if err != nil {
			t.Fatal(err)
		}
		if plan.Subnet != req.Previous || plan.Existing != nil {
			t.Fatalf("plan %v existing %v, want the free previous subnet %v", plan.Subnet, plan.Existing, req.Previous)
		}
		if got := revision(t, cli); got != rev {
			t.Fatalf("PlanLease wrote: revision %d -> %d", rev, got)
		}
		// Giving up a plan for a new subnet writes nothing either.
		if err := s.ReleasePlan(ctx, plan); err != nil || revision(t, cli) != rev {
			t.Fatalf("ReleasePlan of a new subnet: %v, revision %d -> %d", err, rev, revision(t, cli))
		}
		req.Previous = plan.Subnet
		o, err := s.AcquireLease(ctx, cfg, req)
		if err != nil || o.Subnet() != plan.Subnet {
			t.Fatalf("acquire the plan: %v %v, want %v", o, err, plan.Subnet)
		}
		t.Cleanup(func() { o.Release(context.Background()) })
	})

	t.Run("RestartPlansExistingAndWritesNothing", func(t *testing.T) {
		first, err := s.AcquireLease(ctx, cfg, node(2))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { first.Release(context.Background()) })
		rev := revision(t, cli)
		s2 := New(cli, s.Prefix(), nil, nil) // a restarted weftd
		req := node(2)
		plan, err := s2.PlanLease(ctx, cfg, req)
		if err != nil {
			t.Fatal(err)
		}
		if plan.Subnet != first.Subnet() || plan.Existing == nil || plan.Existing.EtcdLease != int64(first.ID()) {
			t.Fatalf("plan %v existing %+v, want our lease %v", plan.Subnet, plan.Existing, first.Subnet())
		}
		req.Previous = plan.Subnet
		again, err := s2.AcquireLease(ctx, cfg, req)
		if err != nil || again.Subnet() != first.Subnet() || again.ID() != first.ID() {
			t.Fatalf("acquire: %v %v", again, err)
		}
		if got := revision(t, cli); got != rev {
			t.Fatalf("restart wrote: revision %d -> %d", rev, got)
		}
	})

	t.Run("ReleasePlanRevokesExistingLease", func(t *testing.T) {
		first, err := s.AcquireLease(ctx, cfg, node(3))
		if err != nil {
			t.Fatal(err)
		}
		plan, err := New(cli, s.Prefix(), nil, nil).PlanLease(ctx, cfg, node(3))
		if err != nil || plan.Existing == nil {
			t.Fatalf("plan: %+v %v", plan, err)
		}
		if err := s.ReleasePlan(ctx, plan); err != nil {
			t.Fatal(err)
		}
		if _, _, _, ok := getKV(t, cli, first.Key()); ok {
			t.Fatal("key of a released plan still there")
		}
	})

	t.Run("LostRaceTakesAnotherSubnet", func(t *testing.T) {
		req := node(4)
		plan, err := s.PlanLease(ctx, cfg, req)
		if err != nil {
			t.Fatal(err)
		}
		// Another node takes the planned subnet between plan and acquire.
		rival := node(5)
		rival.Previous = plan.Subnet
		r, err := s.AcquireLease(ctx, cfg, rival)
		if err != nil || r.Subnet() != plan.Subnet {
			t.Fatalf("rival: %v %v", r, err)
		}
		t.Cleanup(func() { r.Release(context.Background()) })
		req.Previous = plan.Subnet
		o, err := s.AcquireLease(ctx, cfg, req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Release(context.Background()) })
		if o.Subnet() == plan.Subnet || !cfg.InRange(o.Subnet()) {
			t.Fatalf("after a lost race got %v (planned %v)", o.Subnet(), plan.Subnet)
		}
		v, _, _, _ := getKV(t, cli, r.Key())
		if v != leaseValue("192.168.8.5", mac(5)) {
			t.Fatalf("rival's lease overwritten: %q", v)
		}
	})
}
