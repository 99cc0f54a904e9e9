package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/test/topo"
)

// Pods on Weft nodes are wired by weft-cni, called through libcni exactly
// as containerd and CRI-O call it: an empty sandbox namespace, then ADD,
// exec'd from the node's network namespace with the node's conflist.

// cniConfList is the node's conflist: the minimal one plus the three keys
// that differ from the defaults because several nodes share this machine.
func (n *Node) cniConfList() (*libcni.NetworkConfigList, error) {
	b, err := json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "weft",
		"plugins": []any{map[string]any{
			"type":       "weft-cni",
			"subnetFile": n.SubnetFile,
			"pinPath":    n.PinPath,
			"dataDir":    n.CNIDataDir,
		}},
	})
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromBytes(b)
}

func (c *Cluster) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{c.Opts.BinDir}, filepath.Join(c.Opts.RunDir, "cni-cache"), &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: os.Stderr},
		PluginDecoder: version.PluginDecoder{},
	})
}

// addPodCNI creates a sandbox and asks weft-cni to wire it.
func (c *Cluster) addPodCNI(n *Node, name string) (*topo.Pod, error) {
	nsPath, err := n.Topo.NewSandbox(name)
	if err != nil {
		return nil, err
	}
	list, err := n.cniConfList()
	if err != nil {
		return nil, err
	}
	rt := &libcni.RuntimeConf{ContainerID: c.Opts.Prefix + "-" + n.Name + "-" + name, NetNS: nsPath, IfName: "eth0"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res *current.Result
	err = n.Topo.Do(func() error {
		r, err := c.cni().AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(r)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD %s on %s: %w", name, n.Name, err)
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("CNI ADD %s on %s: result has no IP", name, n.Name)
	}
	pod := &topo.Pod{Name: name, NS: filepath.Base(nsPath), NSPath: nsPath, Node: n.Topo}
	for _, ipc := range res.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		ones, _ := ipc.Address.Mask.Size()
		if a = a.Unmap(); a.Is4() {
			pod.IP, pod.Prefix = a, netip.PrefixFrom(a, ones)
		} else {
			pod.IP6, pod.Prefix6 = a, netip.PrefixFrom(a, ones)
		}
	}
	for _, ifc := range res.Interfaces {
		if ifc.Sandbox == "" {
			pod.HostIf = ifc.Name
		}
	}
	return pod, nil
}
