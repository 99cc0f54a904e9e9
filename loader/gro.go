package loader

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// DefaultGRODevice is the kernel vxlan device Weft keeps only for GRO.
const DefaultGRODevice = "weftgro0"

// LinkGROSink is the pin name of gro_sink's link on the GRO device.
const LinkGROSink = "gro-sink"

// The kernel coalesces VXLAN on receive (UDP tunnel GRO) only for UDP
// sockets that announce a tunnel, and only its vxlan driver opens one. With
// tc decapsulation and no such socket, every 1.4 KB segment costs a program
// run and reaches the pod alone; with it, GRO merges a flow's segments
// first (measured on the lab's wire-like underlay: ~19 segments per
// from_underlay run, TCP receive up by roughly half).
//
// So a node gets weftgro0: a collect_md ("external") vxlan device on our
// port, holding no FDB entry, route or address. from_underlay (and XDP) run
// before its socket and take every valid unfragmented packet. The socket is
// also where the kernel delivers VXLAN it reassembled from fragments (a
// router with a smaller MTU cut up an outer packet sent with DF clear), so
// both decap modes keep it. Whatever reaches weftgro0 leaves it
// decapsulated by the kernel: gro_sink, on its ingress, checks it with the
// outer source, destination and VNI from the collect_md tunnel metadata the
// same way from_underlay would, and delivers it or drops and counts it.
// One weftgro0 serves IPv4 and IPv6 underlays alike: a collect_md vxlan
// device opens a UDP socket for each family (the driver's vxlan_sock_add),
// takes reassembled IPv6 VXLAN, and encapsulates over IPv6 for a tunnel key
// set with BPF_F_TUNINFO_IPV6, with the UDP checksum IPv6 needs
// (bpf/outer6.h; TestV4InV6WithKernelVXLAN uses both directions).
// The price: another kernel vxlan device can no longer bind the same port on
// this node (--gro-device=false if you need that; fragmented VXLAN is then
// lost, counted as pass_fragment).

// ensureGRODevice creates (or keeps) weftgro0 bound to port on the underlay
// and attaches gro_sink to its ingress (before it goes up, so nothing leaves
// it unchecked).
func (d *Datapath) ensureGRODevice(underlayIndex int, port uint16) (int, error) {
	l, err := netlink.LinkByName(DefaultGRODevice)
	if err == nil {
		vx, ok := l.(*netlink.Vxlan)
		if !ok || !vx.FlowBased || vx.Port != int(port) || vx.VtepDevIndex != underlayIndex {
			// Someone else's device, or ours with an old port: recreate.
			if err := netlink.LinkDel(l); err != nil {
				return 0, fmt.Errorf("replace %s: %w", DefaultGRODevice, err)
			}
			l = nil
		}
	} else {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return 0, fmt.Errorf("look up %s: %w", DefaultGRODevice, err)
		}
		l = nil
	}
	if l == nil {
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: DefaultGRODevice},
			FlowBased:    true,
			Port:         int(port),
			VtepDevIndex: underlayIndex,
			Learning:     false,
		}
		if err := netlink.LinkAdd(vx); err != nil {
			return 0, fmt.Errorf("create %s (vxlan external, port %d): %w", DefaultGRODevice, port, err)
		}
		if l, err = netlink.LinkByName(DefaultGRODevice); err != nil {
			return 0, fmt.Errorf("look up %s: %w", DefaultGRODevice, err)
		}
	}
	if err := setSysctl("net/ipv6/conf/"+DefaultGRODevice+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	// The sink first, then up: no packet reaches an unguarded device.
	if err := d.attachTC(LinkGROSink, l.Attrs().Index, d.objs.GroSink, ebpf.AttachTCXIngress); err != nil {
		return 0, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("set %s up: %w", DefaultGRODevice, err)
	}
	return l.Attrs().Index, nil
}

// removeGRODevice deletes weftgro0 (its link goes with it) and the pin.
func removeGRODevice(pinPath string) error {
	var errs []error
	if l, err := netlink.LinkByName(DefaultGRODevice); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", DefaultGRODevice, err))
		}
	}
	errs = append(errs, detachPinned(pinPath, LinkGROSink))
	return errors.Join(errs...)
}
