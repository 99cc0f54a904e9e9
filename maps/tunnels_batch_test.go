package maps_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/maps"
)

func nthTunnel(i int) maps.Tunnel {
	return maps.Tunnel{
		Subnet:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24),
		Remote:  netip.AddrFrom4([4]byte{172, 20, byte(i >> 8), byte(i)}),
		VtepMAC: net.HardwareAddr{0x0e, 0, 0, 0, byte(i >> 8), byte(i)},
		VNI:     1, Mode: maps.ModeVXLAN,
	}
}

func TestTunnelsBatch(t *testing.T) {
	_, s := load(t)
	const n = 5000 // more than one batch chunk
	ts := make([]maps.Tunnel, n)
	for i := range ts {
		ts[i] = nthTunnel(i)
	}
	bad := maps.Tunnel{Subnet: netip.MustParsePrefix("10.255.0.0/24")} // no remote, no MAC
	if failed, err := s.Tunnels.PutBatch(append(ts, bad)); err == nil || len(failed) != 1 || failed[0] != bad.Subnet {
		t.Fatalf("an invalid tunnel in a batch: failed %v, err %v; want it named", failed, err)
	}
	all, err := s.Tunnels.All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Fatalf("All after PutBatch: %d entries, want %d", len(all), n)
	}
	got := map[netip.Prefix]maps.Tunnel{}
	for _, tun := range all {
		got[tun.Subnet] = tun
	}
	for _, tun := range ts {
		if !got[tun.Subnet].Equal(tun) {
			t.Fatalf("%s: read back %v, want %v", tun.Subnet, got[tun.Subnet], tun)
		}
	}
	t.Logf("batch syscalls used: %v", s.Tunnels.Batched())

	// Delete the first half plus subnets that have no entry.
	del := []netip.Prefix{netip.MustParsePrefix("10.254.0.0/24")}
	for _, tun := range ts[:n/2] {
		del = append(del, tun.Subnet)
	}
	del = append(del, netip.MustParsePrefix("10.253.0.0/24"))
	if _, err := s.Tunnels.DeleteBatch(del); err != nil {
		t.Fatal(err)
	}
	if all, err = s.Tunnels.All(); err != nil || len(all) != n-n/2 {
		t.Fatalf("after DeleteBatch: %d entries (%v), want %d", len(all), err, n-n/2)
	}
	if _, err := s.Tunnels.Lookup(ts[0].Subnet); !errors.Is(err, maps.ErrNotFound) {
		t.Fatalf("deleted entry still there: %v", err)
	}
}

// BenchmarkTunnels compares per-entry and batch syscalls on 10,000
// entries: writing them, and reading them all back
// (go test -run - -bench Tunnels ./maps/).
func BenchmarkTunnels(b *testing.B) {
	ts := make([]maps.Tunnel, 10000)
	for i := range ts {
		ts[i] = nthTunnel(i)
	}
	b.Run("put", func(b *testing.B) {
		_, s := load(b)
		for b.Loop() {
			for _, tun := range ts {
				if err := s.Tunnels.Put(tun); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		_, s := load(b)
		for b.Loop() {
			if _, err := s.Tunnels.PutBatch(ts); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read-all", func(b *testing.B) {
		_, s := load(b)
		if _, err := s.Tunnels.PutBatch(ts); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if all, err := s.Tunnels.All(); err != nil || len(all) != len(ts) {
				b.Fatal(len(all), err)
			}
		}
	})
}
