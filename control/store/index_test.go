package store

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
)

// TestIndexMatchesFullValidation drives the incremental index with random
// events and checks, after every one, that the view built from its emitted
// changes alone equals what validating the whole set from scratch
// (ParseLeases, CheckOverlaps) says: same valid leases, same invalid keys,
// same error texts (the owner named in overlap errors included).
func TestIndexMatchesFullValidation(t *testing.T) {
	names := []string{
		"10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24", "10.244.1.0-24&fd00:1::-64", "10.244.2.0-24&fd00:2::-64",
		"10.244.1.0-25", "10.244.1.128-25", "10.244.2.0-23", "10.244.0.0-22", "10.244.0.0-16", "10.99.0.0-24", "junk",
	}
	values := []string{
		leaseValue("192.168.8.1", mac(1)), leaseValue("192.168.8.2", mac(2)), leaseValue("192.168.8.3", mac(3)),
		`{"PublicIP":`, leaseValue("192.168.8.300", mac(4)),
	}
	checkIndexAgainstFull(t, bigNet, names, values)
}

// The same for dual-stack and IPv6-only networks: keys that share one half
// or the other, IPv6-only keys, IPv6 prefixes wider and narrower than a
// lease, values of each family mix.
func TestIndexMatchesFullValidationIPv6(t *testing.T) {
	names := []string{
		"10.244.1.0-24&fd00:0:0:1::-64", "10.244.2.0-24&fd00:0:0:1::-64", "10.244.1.0-24&fd00:0:0:2::-64",
		"10.244.3.0-24&fd00:0:0:3::-64", "10.244.1.0-24", "10.244.3.0-24", "0.0.0.0-0&fd00:0:0:3::-64",
		"0.0.0.0-0&fd00:0:0:4::-64", "10.244.4.0-24&fd00::-60", "10.244.5.0-24&fd00:0:0:5:8000::-65",
		"10.244.6.0-24&fd00::-48", "10.244.7.0-24&fd01::-64", "10.244.8.0-24&fd00:0:0:1::-64", "junk",
	}
	dual := func(i int) string {
		return fmt.Sprintf(`{"PublicIP":"192.168.8.%d","PublicIPv6":"fd08::%d","BackendType":"vxlan",`+
			`"BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, i, i, mac(i), mac(i))
	}
	values := []string{
		dual(1), dual(2), dual(3), leaseValue("192.168.8.4", mac(4)), `{"PublicIP":`,
		fmt.Sprintf(`{"PublicIP":"0.0.0.0","PublicIPv6":"fd08::5","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`, mac(5)),
	}
	for _, cfg := range []string{
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"vxlan"}}`,
	} {
		checkIndexAgainstFull(t, cfg, names, values)
	}
}

// checkIndexAgainstFull drives the incremental index with random puts and
// deletes of names x values under the network config cfgJSON.
func checkIndexAgainstFull(t *testing.T, cfgJSON string, names, values []string) {
	t.Helper()
	cfg, err := flannel.ParseConfig([]byte(cfgJSON))
	if err != nil {
		t.Fatal(err)
	}
	const prefix = "/test"
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		ix := newIndex(cfg, prefix, 0)
		view := map[string]peers.Change{}
		current := map[string]flannel.KV{}
		rev := int64(1)
		for step := range 150 {
			rev++
			key := prefix + "/subnets/" + names[rng.IntN(len(names))]
			ev := Event{Type: EventPut, KV: flannel.KV{Key: key, Value: []byte(values[rng.IntN(len(values))]), ModRevision: rev}}
			if old, ok := current[key]; ok {
				ev.KV.CreateRevision = old.CreateRevision
			} else {
				ev.KV.CreateRevision = rev
			}
			if rng.IntN(4) == 0 {
				ev = Event{Type: EventDelete, KV: flannel.KV{Key: key, ModRevision: rev}}
				delete(current, key)
			} else {
				current[key] = ev.KV
			}
			for _, c := range ix.changes(ix.update([]Event{ev}, true)) {
				if c.Deleted() {
					delete(view, c.Key)
				} else {
					view[c.Key] = c
				}
			}
			wantValid, wantInvalid := cfg.ParseLeases(prefix, slices.Collect(maps.Values(current)))
			if got, want := describeView(view), describeSets(wantValid, wantInvalid); got != want {
				t.Fatalf("%s round %d step %d after %s %s:\n got %s\nwant %s", cfgJSON, round, step, ev.Type, key, got, want)
			}
		}
		// And a Full batch from the same index says the same.
		full := map[string]peers.Change{}
		for _, c := range ix.all() {
			full[c.Key] = c
		}
		if describeView(full) != describeView(view) {
			t.Fatalf("round %d: all() differs from the folded deltas", round)
		}
	}
}

func TestNthSubnet(t *testing.T) {
	for _, tc := range []struct {
		c    string
		bits int
		i    uint64
		want string
	}{
		{"10.244.0.0/16", 24, 0, "10.244.0.0/24"},
		{"10.244.0.0/16", 24, 255, "10.244.255.0/24"},
		{"10.244.0.0/22", 25, 5, "10.244.2.128/25"},
		{"fd00::/48", 64, 0x1234, "fd00:0:0:1234::/64"},
		{"fd00:0:0:ff00::/56", 64, 0xff, "fd00:0:0:ffff::/64"},
		{"fd00::/60", 65, 3, "fd00:0:0:1:8000::/65"},
		{"fd00::/100", 126, 1 << 20, "fd00::40:0/126"},
	} {
		if got := nthSubnet(netip.MustParsePrefix(tc.c), tc.bits, tc.i); got.String() != tc.want {
			t.Errorf("nthSubnet(%s, %d, %d) = %s, want %s", tc.c, tc.bits, tc.i, got, tc.want)
		}
	}
}

func describeSets(valid []flannel.Lease, invalid []*flannel.LeaseError) string {
	var s []string
	for _, l := range valid {
		s = append(s, fmt.Sprintf("%s=%s,%s %s %s", l.Key, l.PublicIP(), l.PublicIPv6(), l.Subnet, l.IPv6Subnet))
	}
	for _, e := range invalid {
		s = append(s, fmt.Sprintf("!%s: %v", e.Key, e.Err))
	}
	slices.Sort(s)
	return strings.Join(s, "\n")
}

func describeView(v map[string]peers.Change) string {
	var (
		valid   []flannel.Lease
		invalid []*flannel.LeaseError
	)
	for _, c := range v {
		if c.Invalid != nil {
			invalid = append(invalid, c.Invalid)
		} else {
			valid = append(valid, *c.Lease)
		}
	}
	return describeSets(valid, invalid)
}

// TestSyncBatchesSendsOnlyWhatChanged runs against etcd: the first batch is
// Full, every later one names only the keys a write affected, including
// the handover of a subnet when its owner goes.
func TestSyncBatchesSendsOnlyWhatChanged(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	ctx := testCtx(t)
	cfg, err := s.GetConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	put := func(name, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, s.Prefix()+"/subnets/"+name, v); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 50; i++ {
		put(fmt.Sprintf("10.244.%d.0-24", i), leaseValue(fmt.Sprintf("192.168.8.%d", i), mac(i)))
	}
	batches := make(chan peers.Batch, 16)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.SyncBatches(sctx, cfg, func(b peers.Batch) { batches <- b }) }()
	t.Cleanup(func() { cancel(); <-done })
	next := func() peers.Batch {
		t.Helper()
		select {
		case b := <-batches:
			return b
		case <-time.After(15 * time.Second):
			t.Fatal("no batch within 15s")
		}
		return peers.Batch{}
	}
	if b := next(); !b.Full || len(b.Changes) != 50 {
		t.Fatalf("first batch: full %v, %d changes; want a Full batch of 50", b.Full, len(b.Changes))
	}
	describe := func(b peers.Batch) string {
		var s []string
		for _, c := range b.Changes {
			name := c.Key[strings.LastIndex(c.Key, "/")+1:]
			switch {
			case c.Deleted():
				s = append(s, "-"+name)
			case c.Invalid != nil:
				s = append(s, "!"+name)
			default:
				s = append(s, "+"+name)
			}
		}
		slices.Sort(s)
		return fmt.Sprintf("full=%v %s", b.Full, strings.Join(s, " "))
	}
	put("10.244.60.0-24", leaseValue("192.168.8.60", mac(60)))
	if got := describe(next()); got != "full=false +10.244.60.0-24" {
		t.Fatalf("join: %s", got)
	}
	put("10.244.60.0-24&fd00::-64", leaseValue("192.168.8.61", mac(61))) // younger, same subnet
	if got := describe(next()); got != "full=false !10.244.60.0-24&fd00::-64 +10.244.60.0-24" {
		t.Fatalf("overlapping newcomer: %s", got)
	}
	if _, err := cli.Delete(ctx, s.Prefix()+"/subnets/10.244.60.0-24"); err != nil {
		t.Fatal(err)
	}
	if got := describe(next()); got != "full=false +10.244.60.0-24&fd00::-64 -10.244.60.0-24" {
		t.Fatalf("owner gone, subnet handed over: %s", got)
	}
}

// TestListPages lists more leases than one page holds, at one revision.
func TestListPages(t *testing.T) {
	defer func(n int64) { listPage = n }(listPage)
	listPage = 3
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	ctx := testCtx(t)
	cfg, err := s.GetConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 10; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("%s/subnets/10.244.%d.0-24", s.Prefix(), i), leaseValue(fmt.Sprintf("192.168.8.%d", i), mac(i))); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := s.List(ctx, cfg)
	if err != nil || len(snap.Leases) != 10 {
		t.Fatalf("List: %d leases, %v; want 10", len(snap.Leases), err)
	}
	ix, _, err := s.listIndex(ctx, cfg)
	if err != nil || len(ix.all()) != 10 {
		t.Fatalf("listIndex: %v", err)
	}
}
