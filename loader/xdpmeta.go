package loader

import (
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// XDP decapsulation hands each frame to tc with a tag in the XDP metadata
// area (bpf_xdp_adjust_meta). Drivers that cannot hold metadata make that
// helper fail; from_underlay_xdp then passes the frame undecapsulated and
// tc decapsulates it (counted as pass_no_xdp_meta), so nothing is lost, but
// every packet pays for XDP and tc both. So the loader checks first and
// uses tc decap where metadata is not known to work, with a warning.
//
// The kernel offers no query for metadata support, and a frame cannot be
// injected into a real NIC's receive path to try it. The check is the
// driver's name against the drivers whose receive path reserves metadata
// room (xdp_prepare_buff(..., meta_valid=true) in their XDP code, Linux
// 6.x). Unknown drivers fall back to tc: without native XDP, generic XDP
// would be slower than tc anyway.
var xdpMetaDrivers = []string{
	"veth", "tun", "virtio_net", // virtual
	"mlx5_core", "mlx4_en", "i40e", "ice", "ixgbe", "igb", "igc", "bnxt_en", "nfp",
}

// ProbeXDPMeta reports whether the underlay's driver supports XDP metadata
// (nil) or why not. Must run in the underlay's network namespace.
func ProbeXDPMeta(ifname string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe XDP metadata on %s: %w", ifname, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, ifname)
	if err != nil {
		return fmt.Errorf("probe XDP metadata on %s: driver info: %w", ifname, err)
	}
	drv := unix.ByteSliceToString(info.Driver[:])
	if !slices.Contains(xdpMetaDrivers, drv) {
		return fmt.Errorf("driver %q of %s is not known to support XDP metadata (bpf_xdp_adjust_meta)", drv, ifname)
	}
	return nil
}
