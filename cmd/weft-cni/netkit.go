package main

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pod devices: netkit, where the kernel has it.
//
// A pod's host-side veth gives the pod's skbs 16 bytes of headroom, so
// from_pod's encapsulation reallocates the head of every small packet
// (pskb_expand_head, ~120-200 ns of a 64-byte packet's ~1 µs of Weft work;
// README, "Where the rest goes"). netkit (Linux 6.7+, CONFIG_NETKIT) is the
// veth replacement whose pair can be created with a headroom
// (IFLA_NETKIT_HEADROOM, 6.14+) and whose BPF programs run in the device's
// own transmit path. Whether a node can use it is found out, never assumed
// from the kernel version (distributions backport netkit and configure it
// out, as this project's 6.18 machines do): netkitSupport creates a netkit
// pair in a private network namespace of its own and reports why not if
// that fails. Pods stay on veth until the netkit wiring (netkit's own BPF
// attach points instead of TCX on the host-side veth, L3 mode, headroom
// through a netlink library that speaks it) exists; this is its first
// half, checked by the tests on every kernel they meet.

// netkitSupport reports whether this kernel can create netkit pairs; when
// it cannot, reason says why in words an operator can act on.
func netkitSupport() (ok bool, reason string) {
	type result struct {
		ok     bool
		reason string
	}
	ch := make(chan result, 1)
	go func() {
		// The probe switches this thread into a new, private network
		// namespace and never back: the thread is not unlocked, so the Go
		// runtime ends it with this goroutine, and the namespace (with the
		// probe's pair in it) goes with its last user. Nothing on the
		// node's own namespace is touched.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{false, fmt.Sprintf("cannot create a private network namespace to try netkit in: %v", err)}
			return
		}
		h, err := netlink.NewHandle()
		if err != nil {
			ch <- result{false, fmt.Sprintf("cannot open netlink to try netkit: %v", err)}
			return
		}
		defer h.Close()
		nk := &netlink.Netkit{LinkAttrs: netlink.LinkAttrs{Name: "nkprobe0"}, Mode: netlink.NETKIT_MODE_L3,
			Policy: netlink.NETKIT_POLICY_FORWARD, PeerPolicy: netlink.NETKIT_POLICY_FORWARD}
		nk.SetPeerAttrs(&netlink.LinkAttrs{Name: "nkprobe1"})
		err = h.LinkAdd(nk)
		switch {
		case err == nil:
			ch <- result{true, ""}
		case errors.Is(err, unix.EOPNOTSUPP):
			// rtnetlink's answer to an unknown link kind ("Unknown device type").
			ch <- result{false, "the kernel has no netkit device type (CONFIG_NETKIT is not set, or Linux is older than 6.7): pods get veth pairs"}
		default:
			ch <- result{false, fmt.Sprintf("creating a netkit pair failed: %v: pods get veth pairs", err)}
		}
	}()
	r := <-ch
	return r.ok, r.reason
}
