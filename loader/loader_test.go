package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/weftnet/weft/bpf"
	"github.com/weftnet/weft/maps"
)

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// testPinPath returns a per-run pin directory, removed at the end.
func testPinPath(t *testing.T) string {
	t.Helper()
	if err := EnsureBPFFS(BPFFSRoot); err != nil {
		t.Fatalf("bpffs: %v", err)
	}
	parent := filepath.Join(BPFFSRoot, "weft-test-"+randHex(4))
	if err := os.MkdirAll(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		Remove(filepath.Join(parent, "node"))
		ForgetPinPath(filepath.Join(parent, "node"))
		os.RemoveAll(parent)
	})
	return filepath.Join(parent, "node")
}

// testNS creates a network namespace with veth pair ul0/ul0p (up) and dummy
// weft0-like device hd0, and returns a function running fn inside it.
func testNS(t *testing.T) func(fn func() error) error {
	t.Helper()
	name := "wtl-" + randHex(4)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p")
	run("-n", name, "addr", "add", "192.168.99.1/24", "dev", "ul0")
	run("-n", name, "link", "set", "ul0", "up")
	run("-n", name, "link", "set", "ul0p", "up")
	run("-n", name, "link", "set", "lo", "up")
	return nsRunner(name)
}

// nsRunner returns a function running fn inside the named network namespace
// on a locked thread.
func nsRunner(name string) func(fn func() error) error {
	return func(fn func() error) error {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return err
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			return err
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			return err
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go discards it when the goroutine ends.
			return errors.Join(ferr, err)
		}
		runtime.UnlockOSThread()
		return ferr
	}
}

func testNodeConfig() NodeConfig {
	return NodeConfig{
		Underlay: "ul0",
		Network:  netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:   netip.MustParsePrefix("10.244.1.0/24"),
		VtepMAC:  net.HardwareAddr{0x0e, 0, 0, 0, 0, 1},
		VNI:      1,
		Port:     8472,
		Decap:    DecapXDP,
	}
}

func TestLoadCreatesPinsAndReopenAdoptsMaps(t *testing.T) {
	pin := testPinPath(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	for _, name := range []string{"tunnels", "endpoints", "config", "stats", "peer_counters", "progs/from_pod", "progs/from_host", "progs/from_underlay", "progs/from_underlay_xdp", "progs/gro_sink"} {
		if _, err := os.Stat(filepath.Join(pin, name)); err != nil {
			t.Errorf("pin %s missing: %v", name, err)
		}
	}
	tun := maps.Tunnel{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Remote: netip.MustParseAddr("192.168.99.2"),
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, 0, 2}, VNI: 1, Mode: maps.ModeVXLAN}
	if err := d.Maps.Tunnels.Put(tun); err != nil {
		t.Fatal(err)
	}
	d.Close()

	// A second load (a restarted daemon) must see the same map contents.
	d2, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("reload: %+v", err)
	}
	defer d2.Close()
	got, err := d2.Maps.Tunnels.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].Equal(tun) {
		t.Fatalf("after reload tunnels = %v, want [%v]", got, tun)
	}
	// No temporary directories left beside the pin path.
	ents, _ := os.ReadDir(filepath.Dir(pin))
	if len(ents) != 1 {
		t.Errorf("pin parent holds %d entries, want only the pin directory", len(ents))
	}
}

func TestLoadRejectsIncompatiblePins(t *testing.T) {
	pin := testPinPath(t)
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	// A "tunnels" map from some other layout (value too small).
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tunnels", Type: ebpf.LPMTrie, KeySize: 20, ValueSize: 4, MaxEntries: 16, Flags: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(pin, "tunnels")); err != nil {
		t.Fatal(err)
	}
	// Marked with this binary's layout, so the map check behind the marker
	// (a layout change nobody versioned) is what must catch it.
	if err := maps.MarkLayout(pin); err != nil {
		t.Fatal(err)
	}
	_, err = Load(Options{PinPath: pin})
	if !errors.Is(err, ErrIncompatiblePins) {
		t.Fatalf("load against incompatible pins: err = %v, want ErrIncompatiblePins", err)
	}
}

// attachedProgramIDs returns the TCX programs on ifindex for at, queried
// from the kernel (not from our pins).
func attachedProgramIDs(t *testing.T, ifindex int, at ebpf.AttachType) []ebpf.ProgramID {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
	if err != nil {
		t.Fatalf("query programs: %v", err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestSetupNodeUpgradeAndRemove(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	var ulIndex, hostIndex int

	d1, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d1.Close()
	err = inNS(func() error {
		st, err := SetupNode(d1, testNodeConfig())
		if err != nil {
			return err
		}
		ulIndex, hostIndex = int(st.Config.UnderlayIfIndex), int(st.Config.HostIfIndex)
		// A pod veth: from_pod on its host side.
		if out, err := exec.Command("ip", "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p").CombinedOutput(); err != nil {
			return errors.New(string(out))
		}
		pod, _ := net.InterfaceByName("pod0")
		if err := d1.AttachPod(pod.Index); err != nil {
			return err
		}
		// Running SetupNode twice is harmless (idempotent).
		_, err = SetupNode(d1, testNodeConfig())
		return err
	})
	if err != nil {
		t.Fatalf("setup node: %+v", err)
	}

	var podIndex int
	inNS(func() error {
		pod, _ := net.InterfaceByName("pod0")
		podIndex = pod.Index
		if ids := attachedProgramIDs(t, ulIndex, ebpf.AttachTCXIngress); len(ids) != 1 || ids[0] != progID(t, d1.objs.FromUnderlay) {
			t.Errorf("underlay ingress programs = %v, want [from_underlay]", ids)
		}
		if ids := attachedProgramIDs(t, hostIndex, ebpf.AttachTCXEgress); len(ids) != 1 || ids[0] != progID(t, d1.objs.FromHost) {
			t.Errorf("host egress programs = %v, want [from_host]", ids)
		}
		if ids := attachedProgramIDs(t, podIndex, ebpf.AttachTCXIngress); len(ids) != 1 {
			t.Errorf("pod ingress programs = %v, want one", ids)
		}
		return nil
	})
	links, _ := Links(pin)
	if len(links) != 5 {
		t.Errorf("pinned links = %v, want underlay-tc, underlay-xdp, host, gro-sink, pod-N", links)
	}

	// The loading process goes away; the links stay because they are pinned.
	d1.Close()
	runtime.GC()
	inNS(func() error {
		if ids := attachedProgramIDs(t, ulIndex, ebpf.AttachTCXIngress); len(ids) != 1 {
			t.Errorf("after close: underlay ingress programs = %v, want one", ids)
		}
		return nil
	})

	// Upgrade: a new load swaps every link's program in place.
	d2, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("reload: %+v", err)
	}
	defer d2.Close()

	// First a failing swap: the old program must stay attached.
	d2.updateLink = func(pinnedLink, *ebpf.Program) error { return errors.New("injected") }
	if err := d2.Upgrade(); err == nil {
		t.Fatal("upgrade with failing link update succeeded")
	}
	inNS(func() error {
		if ids := attachedProgramIDs(t, podIndex, ebpf.AttachTCXIngress); len(ids) != 1 || ids[0] == progID(t, d2.objs.FromPod) {
			t.Errorf("after failed upgrade pod programs = %v, want the old one still", ids)
		}
		return nil
	})
	d2.updateLink = func(l pinnedLink, p *ebpf.Program) error { return l.Update(p) }
	if err := d2.Upgrade(); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	inNS(func() error {
		for _, c := range []struct {
			ifindex int
			at      ebpf.AttachType
			want    *ebpf.Program
		}{
			{ulIndex, ebpf.AttachTCXIngress, d2.objs.FromUnderlay},
			{hostIndex, ebpf.AttachTCXEgress, d2.objs.FromHost},
			{podIndex, ebpf.AttachTCXIngress, d2.objs.FromPod},
		} {
			if ids := attachedProgramIDs(t, c.ifindex, c.at); len(ids) != 1 || ids[0] != progID(t, c.want) {
				t.Errorf("after upgrade ifindex %d programs = %v, want [%d]", c.ifindex, ids, progID(t, c.want))
			}
		}
		return nil
	})

	// Removal detaches everything and deletes the pins.
	if err := inNS(func() error { return TeardownNode(pin, "") }); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there after teardown: %v", err)
	}
	inNS(func() error {
		if ids := attachedProgramIDs(t, ulIndex, ebpf.AttachTCXIngress); len(ids) != 0 {
			t.Errorf("after teardown underlay programs = %v, want none", ids)
		}
		if ids := attachedProgramIDs(t, podIndex, ebpf.AttachTCXIngress); len(ids) != 0 {
			t.Errorf("after teardown pod programs = %v, want none", ids)
		}
		if _, err := net.InterfaceByName(DefaultHostDevice); err == nil {
			t.Errorf("%s still exists after teardown", DefaultHostDevice)
		}
		return nil
	})
}

func TestParseDecapMode(t *testing.T) {
	for _, ok := range []string{"xdp", "tc"} {
		if _, err := ParseDecapMode(ok); err != nil {
			t.Errorf("ParseDecapMode(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "XDP", "skb", "tcx"} {
		if _, err := ParseDecapMode(bad); err == nil {
			t.Errorf("ParseDecapMode(%q) accepted", bad)
		}
	}
}

var _ = bpf.WeftProgFromPod

// TestGRODeviceFollowsDecapMode: both decap modes bring weftgro0 (external
// vxlan, guarded by gro_sink: tc decap needs its GRO, both need it for what
// the kernel reassembles), NoGRODevice removes it, teardown leaves none.
func TestGRODeviceFollowsDecapMode(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	nc := testNodeConfig()
	nc.Decap = DecapTC
	err = inNS(func() error {
		if _, err := SetupNode(d, nc); err != nil {
			return err
		}
		l, err := netlink.LinkByName(DefaultGRODevice)
		if err != nil {
			return err
		}
		vx, ok := l.(*netlink.Vxlan)
		if !ok || !vx.FlowBased || vx.Port != 8472 {
			t.Errorf("%s = %+v, want an external vxlan device on 8472", DefaultGRODevice, l)
		}
		if ids := attachedProgramIDs(t, l.Attrs().Index, ebpf.AttachTCXIngress); len(ids) != 1 || ids[0] != progID(t, d.objs.GroSink) {
			t.Errorf("%s ingress programs = %v, want [gro_sink]", DefaultGRODevice, ids)
		}
		if l.Attrs().OperState != netlink.OperUp && l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is not up", DefaultGRODevice)
		}

		nc.Decap = DecapXDP
		if _, err := SetupNode(d, nc); err != nil {
			return err
		}
		if _, err := netlink.LinkByName(DefaultGRODevice); err != nil {
			t.Errorf("%s missing in XDP mode: %v", DefaultGRODevice, err)
		}
		nc.NoGRODevice = true
		if _, err := SetupNode(d, nc); err != nil {
			return err
		}
		if _, err := netlink.LinkByName(DefaultGRODevice); err == nil {
			t.Errorf("%s still exists with NoGRODevice", DefaultGRODevice)
		}
		nc.NoGRODevice = false
		nc.Decap = DecapTC
		if _, err := SetupNode(d, nc); err != nil {
			return err
		}
		return TeardownNode(pin, "")
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	inNS(func() error {
		if _, err := netlink.LinkByName(DefaultGRODevice); err == nil {
			t.Errorf("%s still exists after teardown", DefaultGRODevice)
		}
		return nil
	})
}

// TestXDPMetaProbeFallback: --decap=xdp on an underlay whose driver cannot
// carry XDP metadata runs tc decap instead, says so in a warning, and keeps
// tc from trusting XDP tags; on a driver that can (veth), XDP is attached and
// the config flag raised; going back to tc lowers it.
func TestXDPMetaProbeFallback(t *testing.T) {
	pin := testPinPath(t)
	inNS := testNS(t)
	d, err := Load(Options{PinPath: pin})
	if err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer d.Close()
	core, logs := observer.New(zap.WarnLevel)
	nc := testNodeConfig()
	nc.Log = zap.New(core)
	links := func() []string {
		names, err := Links(pin)
		if err != nil {
			t.Fatal(err)
		}
		return names
	}
	err = inNS(func() error {
		// The real probe on a veth: supported.
		if err := ProbeXDPMeta("ul0"); err != nil {
			t.Errorf("ProbeXDPMeta(veth): %v", err)
		}
		if err := ProbeXDPMeta("lo"); err == nil {
			t.Errorf("ProbeXDPMeta(lo) accepted the loopback driver")
		}

		nc.ProbeXDPMeta = func(string) error { return errors.New("test hook: no metadata here") }
		st, err := SetupNode(d, nc)
		if err != nil {
			return err
		}
		if st.Decap != DecapTC || slices.Contains(links(), LinkUnderlayXDP) {
			t.Errorf("probe failed but decap = %s, links %v; want tc and no XDP link", st.Decap, links())
		}
		if st.Config.Flags&maps.NodeFlagXDPDecap != 0 {
			t.Errorf("config flags %#x: XDP flag set without XDP", st.Config.Flags)
		}
		warned := logs.FilterMessageSnippet("falling back to --decap=tc").All()
		if len(warned) != 1 || !strings.Contains(fmt.Sprint(warned[0].ContextMap()["error"]), "test hook") {
			t.Errorf("want one fallback warning naming the probe error, got %v", logs.All())
		}

		nc.ProbeXDPMeta = nil
		if st, err = SetupNode(d, nc); err != nil {
			return err
		}
		if st.Decap != DecapXDP || !slices.Contains(links(), LinkUnderlayXDP) || st.Config.Flags&maps.NodeFlagXDPDecap == 0 {
			t.Errorf("veth: decap %s, links %v, flags %#x; want XDP attached and flagged", st.Decap, links(), st.Config.Flags)
		}
		nc.Decap = DecapTC
		if st, err = SetupNode(d, nc); err != nil {
			return err
		}
		if slices.Contains(links(), LinkUnderlayXDP) || st.Config.Flags&maps.NodeFlagXDPDecap != 0 {
			t.Errorf("back to tc: links %v, flags %#x; want no XDP and no flag", links(), st.Config.Flags)
		}
		return TeardownNode(pin, "")
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
}
