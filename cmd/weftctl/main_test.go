package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

func runCtl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func TestEverySubcommandHasHelp(t *testing.T) {
	for _, c := range commands {
		_, stderr, code := runCtl(t, c.name, "-h")
		if code != 0 || !strings.Contains(stderr, "Usage: weftctl "+c.name) || !strings.Contains(stderr, "--pin-path") {
			t.Errorf("%s -h: code %d, stderr:\n%s", c.name, code, stderr)
		}
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"tunnels", "-o", "yaml"}, {"stats", "--no-such-flag"}, {"tunnels", "extra"}} {
		if _, _, code := runCtl(t, args...); code != 2 {
			t.Errorf("weftctl %v: exit %d, want 2", args, code)
		}
	}
}

func TestMissingPinsIsAClearError(t *testing.T) {
	_, stderr, code := runCtl(t, "tunnels", "--pin-path", "/nonexistent/weft")
	if code != 1 || !strings.Contains(stderr, "no Weft data plane pinned at /nonexistent/weft") {
		t.Errorf("code %d, stderr %q", code, stderr)
	}
}

// TestReadsPinnedMaps fills a pinned data plane, drops every handle (as if
// weftd had stopped) and reads it back through each subcommand.
func TestReadsPinnedMaps(t *testing.T) {
	b := make([]byte, 4)
	rand.Read(b)
	parent := filepath.Join(loader.BPFFSRoot, "weft-test-ctl-"+hex.EncodeToString(b))
	pin := filepath.Join(parent, "node")
	if err := loader.EnsureBPFFS(loader.BPFFSRoot); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(parent, 0o700)
	t.Cleanup(func() { loader.Remove(pin); loader.ForgetPinPath(pin); os.RemoveAll(parent) })

	d, err := loader.Load(loader.Options{PinPath: pin})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	want := []maps.Tunnel{
		{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Remote: netip.MustParseAddr("192.168.77.12"), VtepMAC: net.HardwareAddr{0xe, 0x77, 0, 0, 0, 2}, VNI: 1, Mode: maps.ModeVXLAN},
		{Subnet: netip.MustParsePrefix("10.244.3.0/24"), Remote: netip.MustParseAddr("192.168.77.13"), VtepMAC: net.HardwareAddr{0xe, 0x77, 0, 0, 0, 3}, VNI: 1, Mode: maps.ModeDirect},
		// IPv6 pod subnets (issue 14): over the IPv6 underlay, and v6-in-v4.
		{Subnet: netip.MustParsePrefix("fd10:244:0:2::/64"), Remote: netip.MustParseAddr("fd00:77::12"), VtepMAC: net.HardwareAddr{0xe, 0x77, 0, 0, 0, 2}, VNI: 1, Mode: maps.ModeVXLAN},
		{Subnet: netip.MustParsePrefix("fd10:244:0:3::/64"), Remote: netip.MustParseAddr("192.168.77.13"), VtepMAC: net.HardwareAddr{0xe, 0x77, 0, 0, 0, 3}, VNI: 1, Mode: maps.ModeVXLAN},
	}
	for _, tu := range want {
		if err := d.Maps.Tunnels.Put(tu); err != nil {
			t.Fatal(err)
		}
	}
	ep := maps.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), IfIndex: 1, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}
	if err := d.Maps.Endpoints.Put(ep); err != nil {
		t.Fatal(err)
	}
	d.Close()

	out, stderr, code := runCtl(t, "tunnels", "--pin-path", pin, "-o", "json")
	if code != 0 {
		t.Fatalf("tunnels: %d %s", code, stderr)
	}
	var got []maps.Tunnel // the rows' extra traffic fields are ignored
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("tunnels -o json is not JSON: %v\n%s", err, out)
	}
	if len(got) != len(want) {
		t.Fatalf("tunnels: got %d rows, want %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("tunnel %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if !strings.Contains(out, `"vtep_mac": "0e:77:00:00:00:02"`) {
		t.Errorf("tunnels -o json does not print MACs as text:\n%s", out)
	}

	out, _, code = runCtl(t, "tunnels", "--pin-path", pin)
	if code != 0 || !strings.Contains(out, "SUBNET") || !strings.Contains(out, "10.244.3.0/24") || !strings.Contains(out, "direct") ||
		!regexp.MustCompile(`(?m)^fd10:244:0:2::/64 +fd00:77::12 +0e:77:00:00:00:02 +1 +vxlan`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^fd10:244:0:3::/64 +192\.168\.77\.13 `).MatchString(out) {
		t.Errorf("tunnels table:\n%s", out)
	}
	// bpftool reads the IPv6 entries through BTF too: a plain IPv6 key
	// (prefix length 64, no ::ffff: mapping) and an IPv6 remote.
	if _, err := exec.LookPath("bpftool"); err == nil {
		dump, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", filepath.Join(pin, "tunnels")).Output()
		if err != nil {
			t.Fatalf("bpftool map dump: %v", err)
		}
		var entries []struct {
			Formatted struct { // bpftool's BTF view
				Key struct {
					Prefixlen int
					Addr      [16]byte
				}
				Value struct {
					Remote [16]byte
					Mode   int
					Vni    int
				}
			}
		}
		if err := json.Unmarshal(dump, &entries); err != nil {
			t.Fatalf("bpftool -j output: %v\n%s", err, dump)
		}
		found := false
		for _, e := range entries {
			en := e.Formatted
			a, r := netip.AddrFrom16(en.Key.Addr), netip.AddrFrom16(en.Value.Remote)
			if en.Key.Prefixlen == 64 && a.String() == "fd10:244:0:2::" && r.String() == "fd00:77::12" && en.Value.Vni == 1 {
				found = true
			}
		}
		if !found {
			t.Errorf("bpftool dump lacks the IPv6 tunnel by its BTF field names:\n%s", dump)
		}
	}
	out, _, code = runCtl(t, "endpoints", "--pin-path", pin)
	if code != 0 || !strings.Contains(out, "10.244.1.2") || !strings.Contains(out, "02:00:00:00:00:02") {
		t.Errorf("endpoints table:\n%s", out)
	}
	out, _, code = runCtl(t, "stats", "--pin-path", pin, "--all", "-o", "json")
	var stats struct{ Counters []maps.Counter }
	if code != 0 || json.Unmarshal([]byte(out), &stats) != nil || len(stats.Counters) == 0 {
		t.Errorf("stats --all -o json:\n%s", out)
	}
	out, _, code = runCtl(t, "status", "--pin-path", pin)
	if code != 0 || !strings.Contains(out, "Tunnels:") || !strings.Contains(out, "not set") ||
		!regexp.MustCompile(`weftd: +not running`).MatchString(out) || !regexp.MustCompile(`Decap: +none`).MatchString(out) {
		t.Errorf("status:\n%s", out)
	}
	// A daemon holding the pin path shows as running.
	release, err := loader.HoldAlive(pin)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	out, _, _ = runCtl(t, "status", "--pin-path", pin)
	if !strings.Contains(out, fmt.Sprintf("running (pid %d)", os.Getpid())) {
		t.Errorf("status with weftd alive:\n%s", out)
	}

	// An IPv6-only node's config (issue 14): no IPv4 address anywhere.
	d, err = loader.Load(loader.Options{PinPath: pin})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	err = d.Maps.Config.Set(maps.Config{UnderlayIfIndex: 1, UnderlayIP6: netip.MustParseAddr("fd00:77::11"), UnderlayMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9},
		HostIfIndex: 2, HostIP6: netip.MustParseAddr("fd10:244:0:1::"), VtepMAC: net.HardwareAddr{0xe, 0x77, 0, 0, 0, 1}, VNI: 1, Port: 8472, MTU: 1500})
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ = runCtl(t, "status", "--pin-path", pin)
	if !regexp.MustCompile(`Underlay: +fd00:77::11 \(ifindex 1,`).MatchString(out) || !regexp.MustCompile(`Host device: +ifindex 2, fd10:244:0:1::\n`).MatchString(out) {
		t.Errorf("status of an IPv6-only node:\n%s", out)
	}
}

func TestGlobalFlagsBeforeTheCommand(t *testing.T) {
	for _, args := range [][]string{
		{"--pin-path", "/nonexistent/weft", "tunnels"},
		{"--pin-path=/nonexistent/weft", "tunnels", "-o", "json"},
		{"-o", "json", "--pin-path", "/nonexistent/weft", "tunnels"},
		{"tunnels", "--pin-path", "/nonexistent/weft"},
	} {
		_, stderr, code := runCtl(t, args...)
		if code != 1 || !strings.Contains(stderr, "no Weft data plane pinned at /nonexistent/weft") {
			t.Errorf("weftctl %v: code %d, stderr %q", args, code, stderr)
		}
	}
	for _, c := range commands {
		_, stderr, code := runCtl(t, "help", c.name)
		if code != 0 || !strings.Contains(stderr, "Usage: weftctl "+c.name) {
			t.Errorf("help %s: code %d, stderr:\n%s", c.name, code, stderr)
		}
	}
}

func TestPermissionErrorSaysRunAsRoot(t *testing.T) {
	if err := explain(os.ErrPermission); !strings.Contains(err.Error(), "run weftctl as root") {
		t.Errorf("explain(EPERM) = %v", err)
	}
}
