package loader

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/maps"
)

// TestPeerNeighbours: writing a DirectRouting tunnel to a peer's IPv6
// underlay address makes the kernel resolve that peer (a managed entry,
// REACHABLE with the peer's MAC, before any traffic); VXLAN and IPv4 direct
// tunnels get none; deleting the tunnel, or turning it into VXLAN, removes
// the entry; reading the map (weftd's start, an audit) restores an entry
// that went missing; the batch calls do the same.
func TestPeerNeighbours(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	peer := netip.MustParseAddr("fd00:99::2")
	direct := maps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:2::/64"), Remote: peer,
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 2}, VNI: 1, Mode: maps.ModeDirect}
	vxlan := direct
	vxlan.Mode = maps.ModeVXLAN
	other := maps.Tunnel{Subnet: netip.MustParsePrefix("fd00:10:244:3::/64"), Remote: netip.MustParseAddr("fd00:99::3"),
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 3}, VNI: 1, Mode: maps.ModeVXLAN}
	direct4 := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Remote: netip.MustParseAddr("192.168.99.2"),
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 2}, VNI: 1, Mode: maps.ModeDirect}

	err = inNS(func() error {
		// The peer: ul0p, the other end of the underlay veth, owns its address.
		for _, args := range [][]string{{"addr", "add", "fd00:99::1/64", "dev", "ul0", "nodad"},
			{"addr", "add", peer.String() + "/64", "dev", "ul0p", "nodad"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %v: %s", args, out)
			}
		}
		ul, err := netlink.LinkByName("ul0")
		if err != nil {
			return err
		}
		ulp, err := netlink.LinkByName("ul0p")
		if err != nil {
			return err
		}
		idx := ul.Attrs().Index
		// state returns the entry for a on ul0: whether it is ours (managed,
		// externally learned), its state and MAC; ok false when there is none.
		state := func(a netip.Addr) (ours bool, nud int, mac net.HardwareAddr, ok bool) {
			ns, err := netlink.NeighList(idx, netlink.FAMILY_ALL)
			if err != nil {
				t.Fatalf("neighbours: %v", err)
			}
			for _, n := range ns {
				if got, _ := netip.AddrFromSlice(n.IP); got.Unmap() == a {
					return n.Flags&netlink.NTF_EXT_LEARNED != 0 && n.FlagsExt&netlink.NTF_EXT_MANAGED != 0, n.State, n.HardwareAddr, true
				}
			}
			return false, 0, nil, false
		}
		waitResolved := func(step string) {
			t.Helper()
			deadline := time.Now().Add(5 * time.Second)
			for {
				ours, nud, mac, ok := state(peer)
				if ok && ours && nud&netlink.NUD_REACHABLE != 0 && mac.String() == ulp.Attrs().HardwareAddr.String() {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: entry for %v: present %v, managed %v, state %#x, MAC %v; want managed, REACHABLE, %v",
						step, peer, ok, ours, nud, mac, ulp.Attrs().HardwareAddr)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		gone := func(step string, a netip.Addr) {
			t.Helper()
			if ours, _, _, ok := state(a); ok && ours {
				t.Errorf("%s: a managed entry for %v is left", step, a)
			}
		}

		pn := NewPeerNeighbours(d.Maps.Tunnels, idx, nil)
		for _, tun := range []maps.Tunnel{direct, other, direct4} {
			if err := pn.Put(tun); err != nil {
				return err
			}
		}
		waitResolved("put")
		gone("VXLAN tunnel", other.Remote)
		gone("IPv4 direct tunnel", direct4.Remote)

		// A restarted weftd adopts the pinned map: reading it puts a lost entry back.
		if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V6, IP: net.IP(peer.AsSlice())}); err != nil {
			return fmt.Errorf("delete the entry: %w", err)
		}
		pn = NewPeerNeighbours(d.Maps.Tunnels, idx, nil)
		if _, err := pn.All(); err != nil {
			return err
		}
		waitResolved("all")

		if err := pn.Put(vxlan); err != nil {
			return err
		}
		gone("direct turned VXLAN", peer)
		if err := pn.Put(direct); err != nil {
			return err
		}
		waitResolved("VXLAN turned direct")
		if err := pn.Delete(direct.Subnet); err != nil {
			return err
		}
		gone("delete", peer)

		if _, err := pn.PutBatch([]maps.Tunnel{direct}); err != nil {
			return err
		}
		waitResolved("put batch")
		if _, err := pn.DeleteBatch([]netip.Prefix{direct.Subnet}); err != nil {
			return err
		}
		gone("delete batch", peer)
		return nil
	})
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%v: %s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
}
