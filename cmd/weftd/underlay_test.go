package main

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on a locked thread inside a new network namespace with a
// NIC eth0 (a veth) configured by the given `ip` commands (run inside it).
func inNetns(t *testing.T, setup [][]string, fn func()) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "wtd-" + hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p") // no dummy driver everywhere
	ip("link", "set", "eth0", "up")
	ip("link", "set", "eth0p", "up")
	for _, args := range setup {
		ip(args...)
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	target, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread() // else the thread dies with the goroutine
		}
		orig.Close()
	}()
	fn()
}

// TestFindUnderlayIPv6 checks which addresses weftd takes from its underlay
// NIC: a global IPv6 one beside the IPv4 one, permanent before dynamic,
// never deprecated or link-local ones; --iface by IPv6 address; an
// IPv6-only NIC.
func TestFindUnderlayIPv6(t *testing.T) {
	inNetns(t, [][]string{
		{"addr", "add", "192.168.8.1/24", "dev", "eth0"},
		{"-6", "addr", "add", "fe80::99/64", "dev", "eth0", "nodad"},
		// dynamic (a valid lifetime), deprecated (preferred 0), then permanent ones
		{"-6", "addr", "add", "fd00:8::5/64", "dev", "eth0", "nodad", "valid_lft", "3600", "preferred_lft", "3600"},
		{"-6", "addr", "add", "fd00:8::6/64", "dev", "eth0", "nodad", "preferred_lft", "0"},
		{"-6", "addr", "add", "fd00:8::1/64", "dev", "eth0", "nodad"},
		{"-6", "addr", "add", "fd00:9::1/64", "dev", "eth0", "nodad"},
	}, func() {
		u, err := findUnderlay("eth0", netip.Addr{}, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		if u.IP.String() != "192.168.8.1" || u.PublicIP != u.IP || u.Prefix.String() != "192.168.8.0/24" {
			t.Errorf("IPv4: %v %v %v", u.IP, u.PublicIP, u.Prefix)
		}
		// Permanent first; of the two permanent ones the kernel lists the
		// newest first.
		if !u.IP6.IsValid() || (u.IP6.String() != "fd00:8::1" && u.IP6.String() != "fd00:9::1") || u.PublicIPv6 != u.IP6 ||
			u.Prefix6 != netip.PrefixFrom(u.IP6, 64).Masked() {
			t.Errorf("IPv6: %v %v %v, want a permanent global one", u.IP6, u.PublicIPv6, u.Prefix6)
		}
		// --iface names the IPv6 address; --public-ipv6 overrides what is published.
		u, err = findUnderlay("fd00:8::5", netip.Addr{}, netip.MustParseAddr("2001:db8::1"))
		if err != nil || u.Link.Attrs().Name != "eth0" || u.IP6.String() != "fd00:8::5" || u.PublicIPv6.String() != "2001:db8::1" || u.IP.String() != "192.168.8.1" {
			t.Errorf("--iface fd00:8::5: %+v %v", u, err)
		}
		if _, err := findUnderlay("fd00:77::1", netip.Addr{}, netip.Addr{}); err == nil {
			t.Error("--iface with an address no NIC has was accepted")
		}
	})
	inNetns(t, [][]string{{"-6", "addr", "add", "fd00:8::2/64", "dev", "eth0", "nodad"}, {"-6", "route", "add", "default", "via", "fd00:8::ff", "dev", "eth0"}},
		func() {
			// IPv6-only: found by the IPv6 default route.
			u, err := findUnderlay("", netip.Addr{}, netip.Addr{})
			if err != nil || u.IP.IsValid() || u.PublicIP.IsValid() || u.IP6.String() != "fd00:8::2" {
				t.Errorf("IPv6-only NIC: %+v %v", u, err)
			}
		})
	inNetns(t, [][]string{{"-6", "addr", "add", "fe80::2/64", "dev", "eth0", "nodad"}}, func() {
		if _, err := findUnderlay("eth0", netip.Addr{}, netip.Addr{}); err == nil {
			t.Error("a NIC with only a link-local address was accepted")
		}
	})
}
