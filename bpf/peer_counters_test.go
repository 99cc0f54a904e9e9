package bpf_test

import (
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/weftnet/weft/bpf"
)

// The programs count each peer's traffic at the slot its tunnel entry
// carries (maps/slots.go assigns it); an entry without one (slot 0) or with
// one past the map's end counts in slot 0, the overflow, never elsewhere
// and never at the packet's expense.
func TestPeerCountersBySlot(t *testing.T) {
	for _, c := range []struct {
		name     string
		slot     func(e *env) uint32 // what peer B's entry carries
		overflow bool
	}{
		{"assigned slot", nil, false},
		{"no slot", func(*env) uint32 { return 0 }, true},
		{"slot past the map", func(e *env) uint32 { return e.objs.PeerCounters.MaxEntries() }, true},
		{"slot far past the map", func(*env) uint32 { return 1 << 31 }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			if c.slot != nil {
				setRawSlot(t, e, c.slot(e))
			}
			// tx: a pod on this node to a pod on B (encapsulated)
			r := e.run("from_pod", podFrame(t, pod1, pkt{dst: remotePodB, proto: layers.IPProtocolUDP, size: 64}))
			r.check(t, tcActRedirect, counters("encap"))
			// rx: B's pod to ours (decapsulated)
			r = e.run("from_underlay", validVX(t, pkt{proto: layers.IPProtocolUDP, size: 64}))
			r.check(t, tcActRedirect, counters("decap", "deliver"))

			over, err := e.m.PeerStats.Overflow()
			if err != nil {
				t.Fatal(err)
			}
			var onB, onB2 uint64
			all, err := e.m.PeerStats.All()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range all {
				if p.Remote == peerB.Remote {
					onB, onB2 = p.TxPackets, p.RxPackets
				}
			}
			if c.overflow {
				if over.TxPackets != 1 || over.RxPackets != 1 || onB+onB2 != 0 {
					t.Errorf("overflow tx %d rx %d, peer B's slot %d/%d; want 1/1 in overflow only", over.TxPackets, over.RxPackets, onB, onB2)
				}
			} else if onB != 1 || onB2 != 1 || over.TxPackets+over.RxPackets != 0 {
				t.Errorf("peer B tx %d rx %d, overflow %d/%d; want 1/1 on peer B only", onB, onB2, over.TxPackets, over.RxPackets)
			}
		})
	}
}

// setRawSlot rewrites peer B's entry with another counter slot, as a writer
// other than the typed API might leave it.
func setRawSlot(t *testing.T, e *env, slot uint32) {
	t.Helper()
	key := bpf.WeftTunnelKey{Prefixlen: 96 + 24}
	key.Addr = peerB.Subnet.Addr().As16()
	var val bpf.WeftTunnelInfo
	if err := e.objs.Tunnels.Lookup(&key, &val); err != nil {
		t.Fatal(err)
	}
	val.StatsSlot = slot
	if err := e.objs.Tunnels.Put(&key, &val); err != nil {
		t.Fatal(err)
	}
}
