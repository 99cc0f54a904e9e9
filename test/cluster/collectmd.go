package cluster

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/cluster/collectmd"
)

// collectMD is a kernel-collect-md node's data plane: test/cluster/collectmd/collectmd.c
// loaded without pins (it lives as long as this process holds it), an
// external-mode vxlan device, and the tc links.
type collectMD struct {
	objs  collectmd.CollectmdObjects
	links []link.Link
}

func (m *collectMD) Close() error {
	var errs []error
	for _, l := range m.links {
		errs = append(errs, l.Close())
	}
	m.links = nil
	return errors.Join(append(errs, m.objs.Close())...)
}

// setupCollectMD creates vxlan_md (external/collect_md mode: no VNI, no
// remote, no FDB; the tunnel key on each skb says where it goes, as
// Cilium's cilium_vxlan), fills Weft's tunnels and endpoints maps of the
// collectmd object and attaches cmd_from_pod to every pod's host-side veth
// and cmd_from_overlay to vxlan_md's ingress.
func setupCollectMD(c *Cluster, n *Node) (_ *collectMD, err error) {
	spec, err := collectmd.LoadCollectmd()
	if err != nil {
		return nil, fmt.Errorf("load collectmd spec: %w", err)
	}
	// helpers.h brings Weft's maps with LIBBPF_PIN_BY_NAME; these stay private.
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	m := &collectMD{}
	err = n.Topo.Do(func() error {
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: CollectMDDevice, MTU: c.PodMTU(), HardwareAddr: n.VtepMAC},
			FlowBased: true,
			Port:      int(c.Port),
			Learning:  false,
		}
		if err := netlink.LinkAdd(vx); err != nil {
			return fmt.Errorf("add %s: %w", CollectMDDevice, err)
		}
		dev, err := netlink.LinkByName(CollectMDDevice)
		if err != nil {
			return fmt.Errorf("find %s: %w", CollectMDDevice, err)
		}
		if err := netlink.LinkSetUp(dev); err != nil {
			return fmt.Errorf("set %s up: %w", CollectMDDevice, err)
		}
		if err := spec.LoadAndAssign(&m.objs, nil); err != nil {
			var verr *ebpf.VerifierError
			if errors.As(err, &verr) {
				return fmt.Errorf("load collectmd: %+v", verr)
			}
			return fmt.Errorf("load collectmd: %w", err)
		}
		cfg := collectmd.CollectmdCollectmdConfig{
			VxlanIfindex: uint32(dev.Attrs().Index),
			Vni:          c.VNI,
			TunnelTtl:    CollectMDTTL,
		}
		copy(cfg.VxlanMac[:], n.VtepMAC)
		if err := m.objs.CmdConfig.Put(uint32(0), &cfg); err != nil {
			return fmt.Errorf("set collectmd config: %w", err)
		}
		tunnels := maps.NewTunnelMap(m.objs.Tunnels)
		for _, t := range c.tunnels(n) {
			if err := tunnels.Put(t); err != nil {
				return err
			}
		}
		eps := maps.NewEndpointMap(m.objs.Endpoints)
		for _, e := range endpoints(n) {
			if err := eps.Put(e); err != nil {
				return err
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: int(e.IfIndex), Program: m.objs.CmdFromPod, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return fmt.Errorf("attach cmd_from_pod to ifindex %d: %w", e.IfIndex, err)
			}
			m.links = append(m.links, l)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: dev.Attrs().Index, Program: m.objs.CmdFromOverlay, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach cmd_from_overlay to %s: %w", CollectMDDevice, err)
		}
		m.links = append(m.links, l)
		return nil
	})
	if err != nil {
		return nil, errors.Join(err, m.Close())
	}
	return m, nil
}
