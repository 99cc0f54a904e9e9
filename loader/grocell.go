package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// The GRO cell: aggregation after decapsulation, for underlays that do not
// coalesce before tc.
//
// Weft's default receive path (DecapTC) decapsulates whole GRO trains: the
// underlay's NAPI runs the kernel's UDP-tunnel GRO (weftgro0 lends it the
// socket) and from_underlay sees ~40 KB per run. That needs the underlay to
// run GRO at all. A veth runs NAPI (and so GRO) only for skbs from a peer
// without TSO (veth_skb_is_eligible_for_gro): container-based nodes (kind)
// whose host-side bridge ports keep veth defaults, and NICs with GRO off,
// hand tc one 1.5 KB segment at a time, and every segment then crosses the
// pod's stack alone. Measured on the bench's bridged underlay: 1.5 KB per
// decap, TCP below kernel vxlan, which re-aggregates after decapsulation in
// its gro_cells.
//
// The GRO cell builds the same thing from stock parts: a veth pair in the
// node, weftgc0 -> weftgc1, no address, no route. from_underlay decapsulates
// each TCP segment and transmits it into weftgc0 (TSO off there, so the
// kernel takes weftgc1's NAPI path); weftgc1's GRO coalesces the inner flow;
// from_gro_cell on weftgc1's tc ingress delivers the train into the pod.
// Every tc-decap node has both weftgro0 and the cell; from_underlay uses the
// cell only until it sees the first aggregated skb, the sign that the
// underlay runs GRO itself (see to_gro_cell in bpf/weft.c): the choice is
// made per node, by the traffic, once.
const (
	GROCellTx = "weftgc0" // from_underlay transmits into it
	GROCellRx = "weftgc1" // its GRO aggregates; from_gro_cell delivers
	// LinkGROCell is the pin name of from_gro_cell's link on weftgc1.
	LinkGROCell = "gro-cell"
)

// ensureGROCell creates (or keeps) the veth pair, sets its offloads, and
// attaches from_gro_cell; it returns weftgc0's ifindex for the config map.
func (d *Datapath) ensureGROCell(mtu int) (int, error) {
	tx, err := netlink.LinkByName(GROCellTx)
	if err == nil {
		if _, ok := tx.(*netlink.Veth); !ok {
			return 0, fmt.Errorf("%s exists and is a %s, not a veth", GROCellTx, tx.Type())
		}
	} else {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return 0, fmt.Errorf("look up %s: %w", GROCellTx, err)
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: GROCellTx, MTU: mtu}, PeerName: GROCellRx}
		if err := netlink.LinkAdd(veth); err != nil {
			return 0, fmt.Errorf("create %s/%s: %w", GROCellTx, GROCellRx, err)
		}
		if tx, err = netlink.LinkByName(GROCellTx); err != nil {
			return 0, fmt.Errorf("look up %s: %w", GROCellTx, err)
		}
	}
	rx, err := netlink.LinkByName(GROCellRx)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", GROCellRx, err)
	}
	for _, l := range []netlink.Link{tx, rx} {
		name := l.Attrs().Name
		// Nothing but our redirects should ever appear on the pair.
		if err := setSysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		if l.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(l, mtu); err != nil {
				return 0, fmt.Errorf("set %s MTU: %w", name, err)
			}
		}
	}
	if err := setGROCellOffloads(); err != nil {
		return 0, err
	}
	// The program first, then up: nothing reaches an unguarded weftgc1.
	if err := d.attachTC(LinkGROCell, rx.Attrs().Index, d.objs.FromGroCell, ebpf.AttachTCXIngress); err != nil {
		return 0, err
	}
	for _, l := range []netlink.Link{rx, tx} {
		if err := netlink.LinkSetUp(l); err != nil {
			return 0, fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	return tx.Attrs().Index, nil
}

// setGROCellOffloads turns TSO off on weftgc0 (every TSO flavour: the
// kernel checks NETIF_F_ALL_TSO) and GRO on on weftgc1 (which gives the veth
// its NAPI). Through the ethtool ioctl, in the calling thread's namespace.
func setGROCellOffloads() error {
	et, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("gro cell offloads: %w", err)
	}
	defer et.Close()
	have, err := et.FeatureNames(GROCellTx)
	if err != nil {
		return fmt.Errorf("gro cell offloads: features of %s: %w", GROCellTx, err)
	}
	off := map[string]bool{}
	for _, f := range []string{"tx-tcp-segmentation", "tx-tcp-ecn-segmentation", "tx-tcp-mangleid-segmentation", "tx-tcp6-segmentation"} {
		if _, ok := have[f]; ok {
			off[f] = false
		}
	}
	if err := et.Change(GROCellTx, off); err != nil {
		return fmt.Errorf("gro cell offloads: TSO off on %s: %w", GROCellTx, err)
	}
	if err := et.Change(GROCellRx, map[string]bool{"rx-gro": true}); err != nil {
		return fmt.Errorf("gro cell offloads: GRO on on %s: %w", GROCellRx, err)
	}
	return nil
}

// removeGROCell deletes the pair (the link on weftgc1 goes with it) and its pin.
func removeGROCell(pinPath string) error {
	var errs []error
	if l, err := netlink.LinkByName(GROCellTx); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", GROCellTx, err))
		}
	}
	errs = append(errs, detachPinned(pinPath, LinkGROCell))
	return errors.Join(errs...)
}
