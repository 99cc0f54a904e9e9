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

// addPodDirect wires a pod without CNI, with the next free address of n's
// subnet: what AddPod does on flannel nodes, and on Weft nodes when a test
// wants the data plane without the plugin.
func (c *Cluster) addPodDirect(n *Node, name string) (*topo.Pod, error) {
	sn := n.Subnet
	ip := netip.PrefixFrom(nthAddr(sn.Addr(), 2+len(n.Pods)), sn.Bits())
	if !sn.Contains(ip.Addr()) {
		return nil, fmt.Errorf("add pod on %s: subnet %s is full", n.Name, sn)
	}
	if n.Kind == KindFlannel {
		pod, err := n.Topo.AddPod(name, n.Topo.Flannel.PodOptions(ip.Addr()))
		if err != nil {
			return nil, err
		}
		n.Pods = append(n.Pods, pod)
		return pod, nil
	}
	pod, err := n.Topo.AddPod(name, topo.PodOptions{IP: ip, Gateway: loader.GatewayIP(sn), MTU: loader.PodMTU(n.Topo.Lab.MTU), GatewayByARP: true})
	if err != nil {
		return nil, err
	}
	set, err := n.Maps()
	if err != nil {
		return nil, err
	}
	defer set.Close()
	if err := set.Endpoints.Put(maps.Endpoint{IP: pod.IP, IfIndex: uint32(pod.HostIfIndex), MAC: pod.MAC, HostMAC: pod.HostMAC}); err != nil {
		return nil, err
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
