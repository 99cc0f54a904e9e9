package loader

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// TestGROCellFollowsDecapMode: tc decap brings the GRO cell (weftgc0 with
// TSO off -> weftgc1 with GRO on, from_gro_cell on weftgc1, weftgc0 in the
// config); XDP decap and NoGROCell remove it and clear the config field;
// teardown leaves nothing.
func TestGROCellFollowsDecapMode(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	nc := testNodeConfig()
	nc.Decap = DecapTC
	gone := func(when string) {
		if _, err := netlink.LinkByName(GROCellTx); err == nil {
			t.Errorf("%s still exists %s", GROCellTx, when)
		}
		if _, err := netlink.LinkByName(GROCellRx); err == nil {
			t.Errorf("%s still exists %s", GROCellRx, when)
		}
	}
	err = inNS(func() error {
		st, err := SetupNode(d, nc)
		if err != nil {
			return err
		}
		tx, err := netlink.LinkByName(GROCellTx)
		if err != nil {
			return err
		}
		rx, err := netlink.LinkByName(GROCellRx)
		if err != nil {
			return err
		}
		if st.Config.GROCellIfIndex != uint32(tx.Attrs().Index) {
			t.Errorf("config gro_cell_ifindex = %d, want %s's %d", st.Config.GROCellIfIndex, GROCellTx, tx.Attrs().Index)
		}
		if ids := attachedProgramIDs(t, rx.Attrs().Index, ebpf.AttachTCXIngress); len(ids) != 1 || ids[0] != progID(t, d.objs.FromGroCell) {
			t.Errorf("%s ingress programs = %v, want [from_gro_cell]", GROCellRx, ids)
		}
		et, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer et.Close()
		txf, err := et.Features(GROCellTx)
		if err != nil {
			return err
		}
		rxf, err := et.Features(GROCellRx)
		if err != nil {
			return err
		}
		// veth takes its NAPI (GRO) path only for skbs from a peer without TSO.
		if txf["tx-tcp-segmentation"] || txf["tx-tcp6-segmentation"] || !rxf["rx-gro"] {
			t.Errorf("offloads: %s tso %v/%v (want off), %s gro %v (want on)", GROCellTx,
				txf["tx-tcp-segmentation"], txf["tx-tcp6-segmentation"], GROCellRx, rxf["rx-gro"])
		}
		if _, err := SetupNode(d, nc); err != nil { // idempotent
			return err
		}

		nc.Decap = DecapXDP
		if st, err = SetupNode(d, nc); err != nil {
			return err
		}
		gone("in XDP mode")
		if st.Config.GROCellIfIndex != 0 {
			t.Errorf("XDP mode: config gro_cell_ifindex = %d, want 0", st.Config.GROCellIfIndex)
		}
		nc.Decap, nc.NoGROCell = DecapTC, true
		if st, err = SetupNode(d, nc); err != nil {
			return err
		}
		gone("with NoGROCell")
		nc.NoGROCell = false
		if _, err := SetupNode(d, nc); err != nil {
			return err
		}
		return TeardownNode(pin, "")
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	inNS(func() error {
		gone("after teardown")
		return nil
	})
}
