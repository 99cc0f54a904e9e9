package reconcile

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/maps"
)

// fakeNeighbours records what the reconciler asked of a DirectNeighbours;
// fail makes Keep and Forget of that address fail.
type fakeNeighbours struct {
	held  map[netip.Addr]bool
	calls []string
	fail  netip.Addr
}

func newFakeNeighbours() *fakeNeighbours { return &fakeNeighbours{held: map[netip.Addr]bool{}} }

func (f *fakeNeighbours) Keep(a netip.Addr) error {
	f.calls = append(f.calls, "keep "+a.String())
	if a == f.fail {
		return errors.New("injected")
	}
	f.held[a] = true
	return nil
}

func (f *fakeNeighbours) Forget(a netip.Addr) error {
	f.calls = append(f.calls, "forget "+a.String())
	if a == f.fail {
		return errors.New("injected")
	}
	delete(f.held, a)
	return nil
}

// take returns the calls since the last take, sorted (map order is random).
func (f *fakeNeighbours) take() string {
	c := slices.Clone(f.calls)
	slices.Sort(c)
	f.calls = nil
	return strings.Join(c, ", ")
}

// Only Mode Direct tunnels get a neighbour entry, one per remote whatever
// the number of its tunnels; it is forgotten when the last direct tunnel
// to that remote goes or stops being direct, and a failed call is retried
// on the next write.
func TestDirectNeighboursHook(t *testing.T) {
	cfg := dualConfig(t, true)
	f := newFake()
	r := New(f, cfg, dualSelf, nil, nil)
	n := newFakeNeighbours()
	r.KeepNeighbours(n)

	two := dualKV("10.244.2.0-24&fd10:244:0:2::-64", "192.168.8.2", "fd00:8::2", 2, 4)    // direct in both families
	three := dualKV("10.244.3.0-24&fd10:244:0:3::-64", "192.168.8.3", "fd00:99::3", 3, 5) // v4 direct, v6 routed
	four := dualKV("10.244.4.0-24&fd10:244:0:4::-64", "192.168.50.4", "", 4, 6)           // v6-in-v4: vxlan only
	n.fail = netip.MustParseAddr("192.168.8.3")
	if _, err := r.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, two), change(t, cfg, three), change(t, cfg, four)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := n.take(), "keep 192.168.8.2, keep 192.168.8.3, keep fd00:8::2"; got != want {
		t.Fatalf("after the full batch: %s, want %s", got, want)
	}

	// The failed Keep is retried with the next write, whatever it touches.
	n.fail = netip.Addr{}
	four6 := dualKV("10.244.4.0-24&fd10:244:0:4::-64", "192.168.50.4", "", 4, 7)
	four6.Value = []byte(strings.Replace(string(four6.Value), "8e:00:00:00:00:04", "8e:00:00:00:00:44", 1))
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, four6)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := n.take(), "keep 192.168.8.3"; got != want {
		t.Fatalf("after a vxlan-only delta: %s, want only the retry %s", got, want)
	}

	// Node 2 leaves: both of its entries go. Node 3 moves off our L2: its
	// IPv4 tunnel becomes vxlan, so its entry goes too.
	moved := dualKV("10.244.3.0-24&fd10:244:0:3::-64", "192.168.50.3", "fd00:99::3", 3, 8)
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{{Key: two.Key}, change(t, cfg, moved)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := n.take(), "forget 192.168.8.2, forget 192.168.8.3, forget fd00:8::2"; got != want {
		t.Fatalf("after the delta: %s, want %s", got, want)
	}
	if len(n.held) != 0 {
		t.Fatalf("entries still held: %v", n.held)
	}

	// A restarted weftd adopts the pinned map: the direct entries it finds
	// are kept before any lease is read.
	back := dualKV("10.244.2.0-24&fd10:244:0:2::-64", "192.168.8.2", "fd00:8::2", 2, 9)
	if _, err := r.ApplyBatch(peers.Batch{Changes: []peers.Change{change(t, cfg, back)}}); err != nil {
		t.Fatal(err)
	}
	n.take()
	// A direct peer that left while weftd was down: its tunnel is still
	// pinned, and the earlier weftd's entry for it is forgotten.
	if err := f.Put(tun("10.244.6.0/24", "192.168.8.6", 6)); err != nil {
		t.Fatal(err)
	}
	departed := f.m[netip.MustParsePrefix("10.244.6.0/24")]
	departed.Mode = maps.ModeDirect
	f.m[departed.Subnet] = departed
	r2 := New(f, cfg, dualSelf, nil, nil)
	n2 := newFakeNeighbours()
	r2.KeepNeighbours(n2)
	if _, err := r2.ApplyBatch(peers.Batch{Full: true, Changes: []peers.Change{change(t, cfg, back), change(t, cfg, moved), change(t, cfg, four6)}}); err != nil {
		t.Fatal(err)
	}
	if got, want := n2.take(), "forget 192.168.8.6, keep 192.168.8.2, keep fd00:8::2"; got != want {
		t.Fatalf("after a restart: %s, want %s", got, want)
	}
}
