package lab

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
	"github.com/weftnet/weft/test/topo"
)

// AddPod creates a pod on n. On Weft nodes weft-cni wires it (see cni.go);
// on flannel nodes it hangs off cni0 like flannel's bridge CNI.
func (c *Cluster) AddPod(n *Node, name string) (*topo.Pod, error) {
	if n.Kind == KindWeft {
		pod, err := c.addPodCNI(n, name)
		if err != nil {
			return nil, err
		}
		n.Pods = append(n.Pods, pod)
		return pod, nil
	}
	return c.addPodDirect(n, name)
}

// addPodDirect wires a pod without CNI, with the next free address of each
// of n's subnets: what AddPod does on flannel nodes, and on Weft nodes when
// a test wants the data plane without the plugin.
func (c *Cluster) addPodDirect(n *Node, name string) (*topo.Pod, error) {
	var ip, ip6 netip.Prefix
	for _, f := range []struct {
		sn  netip.Prefix
		out *netip.Prefix
	}{{n.Subnet, &ip}, {n.Subnet6, &ip6}} {
		if !f.sn.IsValid() {
			continue
		}
		*f.out = netip.PrefixFrom(nthAddr(f.sn.Addr(), 2+len(n.Pods)), f.sn.Bits())
		if !f.sn.Contains(f.out.Addr()) {
			return nil, fmt.Errorf("add pod on %s: subnet %s is full", n.Name, f.sn)
		}
	}
	if n.Kind == KindFlannel {
		pod, err := n.Topo.AddPod(name, n.Topo.Flannel.PodOptionsFor(ip.Addr(), ip6.Addr()))
		if err != nil {
			return nil, err
		}
		n.Pods = append(n.Pods, pod)
		return pod, nil
	}
	po := topo.PodOptions{IP: ip, MTU: loader.PodMTU(n.Topo.Lab.MTU), GatewayByARP: true}
	if ip.IsValid() {
		po.Gateway = loader.GatewayIP(n.Subnet)
	}
	if ip6.IsValid() {
		po.IP6, po.Gateway6 = ip6, loader.GatewayIP(n.Subnet6)
		if n.Topo.UnderlayIP6.IsValid() {
			po.MTU = n.Topo.Lab.MTU - topo.FlannelEncapOverhead6 // IPv6 travels over the IPv6 underlay
		}
	}
	pod, err := n.Topo.AddPod(name, po)
	if err != nil {
		return nil, err
	}
	set, err := n.Maps()
	if err != nil {
		return nil, err
	}
	defer set.Close()
	for _, a := range pod.Addrs() {
		if err := set.Endpoints.Put(maps.Endpoint{IP: a, IfIndex: uint32(pod.HostIfIndex), MAC: pod.MAC, HostMAC: pod.HostMAC}); err != nil {
			return nil, err
		}
	}
	if err := n.Topo.Do(func() error { return loader.AttachPodPinned(n.PinPath, pod.HostIfIndex) }); err != nil {
		return nil, fmt.Errorf("attach from_pod on %s: %w", n.Name, err)
	}
	n.Pods = append(n.Pods, pod)
	return pod, nil
}

func nthAddr(a netip.Addr, n int) netip.Addr {
	for ; n > 0; n-- {
		a = a.Next()
	}
	return a
}
