package loader

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/maps"
)

// TestNeighboursManagedEntries: Keep adds a kernel-managed entry that the
// kernel resolves against a real peer (another namespace) with no traffic
// of ours, for both families; Keep again leaves it resolved; Forget and
// TeardownNode (through the pinned direct tunnels) remove it.
func TestNeighboursManagedEntries(t *testing.T) {
	name := "wtl-" + randHex(4)
	peer := name + "p"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	for _, ns := range []string{name, peer} {
		run("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", name, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p", "netns", peer)
	run("-n", name, "addr", "add", "192.168.99.1/24", "dev", "ul0")
	run("-n", name, "addr", "add", "fd00:99::1/64", "dev", "ul0", "nodad")
	run("-n", peer, "addr", "add", "192.168.99.2/24", "dev", "ul0p")
	run("-n", peer, "addr", "add", "fd00:99::2/64", "dev", "ul0p", "nodad")
	run("-n", name, "link", "set", "ul0", "up")
	run("-n", peer, "link", "set", "ul0p", "up")
	var peerMAC net.HardwareAddr
	if err := nsRunner(peer)(func() error {
		l, err := netlink.LinkByName("ul0p")
		if err == nil {
			peerMAC = l.Attrs().HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	remotes := []netip.Addr{netip.MustParseAddr("192.168.99.2"), netip.MustParseAddr("fd00:99::2")}

	pin := testPinPath(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	err = nsRunner(name)(func() error {
		nc := testNodeConfig()
		nc.Decap = DecapTC
		nc.UnderlayIP6 = netip.MustParseAddr("fd00:99::1")
		st, err := SetupNode(d, nc)
		if err != nil {
			return err
		}
		n := NewNeighbours(int(st.Config.UnderlayIfIndex))
		// entry returns a's entry on ul0: nil if none.
		entry := func(a netip.Addr) (*netlink.Neigh, error) { return n.find(a) }
		resolved := func(a netip.Addr) error {
			deadline := time.Now().Add(15 * time.Second)
			for {
				e, err := entry(a)
				if err != nil {
					return err
				}
				if e != nil && e.FlagsExt&netlink.NTF_EXT_MANAGED != 0 && e.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE) != 0 &&
					bytes.Equal(e.HardwareAddr, peerMAC) {
					return nil
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("%s not resolved to %s by a managed entry: %+v", a, peerMAC, e)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		gone := func(a netip.Addr) error {
			if e, err := entry(a); err != nil || e != nil {
				return fmt.Errorf("entry of %s still there: %+v (%v)", a, e, err)
			}
			return nil
		}
		// An entry the kernel learned by itself (traffic to the peer) is
		// made managed.
		if out, err := exec.Command("ping", "-n", "-c", "1", "-W", "5", remotes[0].String()).CombinedOutput(); err != nil {
			return fmt.Errorf("ping the peer: %v: %s", err, out)
		}
		if m, err := entry(remotes[0]); err != nil || m == nil || m.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			return fmt.Errorf("after a ping, want a learned unmanaged entry: %+v (%v)", m, err)
		}
		for _, a := range remotes {
			if err := n.Keep(a); err != nil {
				return err
			}
		}
		for _, a := range remotes {
			if err := resolved(a); err != nil {
				return err
			}
		}
		// Idempotent: a second Keep (a restarted weftd) keeps the resolved entry.
		for _, a := range remotes {
			if err := n.Keep(a); err != nil {
				return err
			}
			if e, _ := entry(a); e == nil || !bytes.Equal(e.HardwareAddr, peerMAC) {
				return fmt.Errorf("second Keep of %s lost the resolved entry: %+v", a, e)
			}
		}
		for _, a := range remotes {
			if err := n.Forget(a); err != nil {
				return err
			}
			if err := gone(a); err != nil {
				return err
			}
			if err := n.Forget(a); err != nil {
				return fmt.Errorf("second Forget: %w", err)
			}
		}

		// Teardown removes the entries of the pinned direct tunnels.
		for i, a := range remotes {
			if err := n.Keep(a); err != nil {
				return err
			}
			sn := netip.MustParsePrefix("10.244.2.0/24")
			if a.Is6() {
				sn = netip.MustParsePrefix("fd10:244:0:2::/64")
			}
			if err := d.Maps.Tunnels.Put(maps.Tunnel{Subnet: sn, Remote: a, VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, byte(i)}, VNI: 1, Mode: maps.ModeDirect}); err != nil {
				return err
			}
		}
		// An address no direct tunnel names is not weft's: teardown leaves it.
		other := netip.MustParseAddr("192.168.99.77")
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: n.ifindex, Family: netlink.FAMILY_V4, IP: other.AsSlice(),
			HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 0x77}, State: netlink.NUD_PERMANENT}); err != nil {
			return err
		}
		if err := TeardownNode(pin, ""); err != nil {
			return err
		}
		for _, a := range remotes {
			if err := gone(a); err != nil {
				return fmt.Errorf("after TeardownNode: %w", err)
			}
		}
		if e, err := entry(other); err != nil || e == nil {
			return fmt.Errorf("TeardownNode removed an entry that is not weft's (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
}
