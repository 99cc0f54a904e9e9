// Command weft-cni is Weft's CNI plugin (spec 1.0.0; also answers 0.3.x,
// 0.4.0 and 1.1.0 callers). It wires a pod into the node's Weft data plane:
//
//	ADD    veth pair (pod side CNI_IFNAME, host side "weft" + hash of the
//	       attachment), an address from each node subnet in subnet.env
//	       (IPv4, IPv6 or both; host-local's allocator, in-process), a
//	       default route per family via its gateway <subnet>.1 / <subnet>::1
//	       onlink, /32 and /128 routes to the pod on the host side, the
//	       pod's entries in the endpoints map (one per address) and
//	       from_pod attached to the host side (pinned link).
//	DEL    removes exactly that, idempotently, also without the netns.
//	CHECK  compares the live state with the prevResult.
//	STATUS reports whether the data plane and subnet.env are there.
//	GC     removes attachments the runtime no longer knows.
//
// The plugin never loads BPF: it attaches the program weftd pinned and
// fills the maps weftd pinned. Without them it refuses to start a pod
// ("weftd not running on this node?") rather than half-wire it.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

func init() {
	// Namespace switches are per thread: keep main on one. pkg/ns runs the
	// pod-side work on its own locked threads.
	runtime.LockOSThread()
}

// supportedVersions: 0.3.0 is the oldest spec with interfaces in results;
// 1.1.0 adds STATUS and GC.
var supportedVersions = version.VersionsStartingFrom("0.3.0")

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    cmdAdd,
		Del:    cmdDel,
		Check:  cmdCheck,
		Status: cmdStatus,
		GC:     cmdGC,
	}, supportedVersions, "weft-cni: wires pods into the Weft overlay")
}
