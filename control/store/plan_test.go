package store

import (
	"context"
	"errors"
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
// plane up, then takes exactly that subnet with AcquirePlan.
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
		o, err := s.AcquirePlan(ctx, cfg, req, plan)
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
		again, err := s2.AcquirePlan(ctx, cfg, req, plan)
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

	t.Run("LostRaceWritesNothingAndReplans", func(t *testing.T) {
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
		rev := revision(t, cli)
		if _, err := s.AcquirePlan(ctx, cfg, req, plan); !errors.Is(err, ErrPlanStale) {
			t.Fatalf("acquire a plan taken meanwhile: %v, want ErrPlanStale", err)
		}
		if got := revision(t, cli); got != rev {
			t.Fatalf("a stale plan wrote: revision %d -> %d", rev, got)
		}
		// Plan again (the caller sets its data plane up anew), then take it.
		plan2, err := s.PlanLease(ctx, cfg, req)
		if err != nil || plan2.Subnet == plan.Subnet {
			t.Fatalf("re-plan: %v %v", plan2.Subnet, err)
		}
		o, err := s.AcquirePlan(ctx, cfg, req, plan2)
		if err != nil || o.Subnet() != plan2.Subnet {
			t.Fatalf("acquire the new plan: %v %v", o, err)
		}
		t.Cleanup(func() { o.Release(context.Background()) })
		v, _, _, _ := getKV(t, cli, r.Key())
		if v != leaseValue("192.168.8.5", mac(5)) {
			t.Fatalf("rival's lease overwritten: %q", v)
		}
	})
}
