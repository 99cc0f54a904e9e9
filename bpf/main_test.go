package bpf_test

// The layer-1 tests run in a network namespace of their own: the programs
// consult the kernel's tables of the namespace they run in (conntrack via
// bpf_skb_ct_lookup, FIB and neighbours via bpf_fib_lookup), so a fixed,
// private namespace makes their answers the same on every machine and keeps
// the machine's own tables out of it. TestMain re-runs the test binary under
// `unshare --net` and builds there what node A of harness_test.go would
// have: loopback up, its underlay NIC at ifindex 2 (one end of a veth pair)
// with its address, and the
// DirectRouting peer C's MAC in the neighbour table. Fuzz workers, children
// of the re-run binary, inherit the namespace.

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const netnsEnv = "WEFT_BPF_TEST_NETNS"

func TestMain(m *testing.M) {
	if os.Getenv(netnsEnv) == "" {
		os.Exit(reexecInNetns())
	}
	if err := setupNetns(); err != nil {
		fmt.Fprintf(os.Stderr, "bpf tests: set up the test namespace: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func reexecInNetns() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bpf tests: %v\n", err)
		return 1
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--", self}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Exited() {
				return ws.ExitStatus()
			}
		}
		fmt.Fprintf(os.Stderr, "bpf tests: run under unshare --net (needs root and util-linux): %v\n", err)
		return 1
	}
	return 0
}

// setupNetns is idempotent: fuzz workers run it again in the same namespace.
func setupNetns() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	ul, err := netlink.LinkByIndex(int(underlayIfIndex))
	if err != nil {
		// A veth pair (this kernel may lack the dummy driver); the first link
		// created in a fresh namespace after lo gets ifindex 2, whichever end.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0"}, PeerName: "ul0peer"}); err != nil {
			return fmt.Errorf("add veth ul0: %w", err)
		}
		if ul, err = netlink.LinkByIndex(int(underlayIfIndex)); err != nil {
			return fmt.Errorf("no link at ifindex %d after adding a veth: %w", underlayIfIndex, err)
		}
		if err := netlink.LinkSetHardwareAddr(ul, underlayMAC); err != nil {
			return err
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: underlayIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(ul, addr); err != nil {
			return fmt.Errorf("address %s: %w", ul.Attrs().Name, err)
		}
		for _, name := range []string{"ul0", "ul0peer"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
	}
	// A node forwards; bpf_fib_lookup answers nothing on a device that does
	// not (for IPv6 too: DirectRouting over an IPv6 underlay).
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return err
		}
	}
	// Peer C (DirectRouting) as the kernel would have learnt it from C's ARP.
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V4,
		State: netlink.NUD_PERMANENT, IP: peerC.Remote.AsSlice(), HardwareAddr: peerCMAC}); err != nil {
		return err
	}
	// The IPv6 underlay: our address, and as neighbour discovery would have
	// learnt them peer C's IPv6 underlay address (ipv6_harness_test.go:
	// DirectRouting for IPv6 pods) and peer G's (outer6_test.go:
	// DirectRouting for IPv4 pods over the IPv6 underlay).
	addr6 := &netlink.Addr{IPNet: &net.IPNet{IP: underlayIP6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrReplace(ul, addr6); err != nil {
		return fmt.Errorf("address %s: %w", underlayIP6, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: peerC6Remote.AsSlice(), HardwareAddr: peerCMAC}); err != nil {
		return err
	}
	return netlink.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: netlink.FAMILY_V6,
		State: netlink.NUD_PERMANENT, IP: peerG.Remote.AsSlice(), HardwareAddr: peerGMAC})
}
