package store

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/control/peers"
	"github.com/weftnet/weft/control/reconcile"
	"github.com/weftnet/weft/maps"
)

// nopTable is a tunnels map that forgets what it is told: the benchmark
// times the control plane's own work per change.
type nopTable struct{}

func (nopTable) All() ([]maps.Tunnel, error) { return nil, nil }
func (nopTable) Put(maps.Tunnel) error       { return nil }
func (nopTable) Delete(netip.Prefix) error   { return nil }

func benchKV(i int, rev int64) flannel.KV {
	return flannel.KV{Key: fmt.Sprintf("/p/subnets/10.%d.%d.0-24", 1+i/256, i%256),
		Value: fmt.Appendf(nil, `{"PublicIP":"172.20.%d.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:5c:00:%02x:%02x:%02x"}}`,
			i/250, 1+i%250, byte(i>>16), byte(i>>8), byte(i)),
		CreateRevision: rev, ModRevision: rev}
}

// benchKV6 is node i's dual-stack lease: benchKV's plus an IPv6 /64.
func benchKV6(i int, rev int64) flannel.KV {
	v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
	v6 := netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, byte(1 + i/65536), byte(i >> 8), byte(i)}), 64)
	return flannel.KV{Key: "/p/subnets/" + flannel.SubnetKeyDual(v4, v6),
		Value: fmt.Appendf(nil, `{"PublicIP":"172.20.%d.%d","PublicIPv6":"fd77::%x","BackendType":"vxlan",`+
			`"BackendData":{"VNI":1,"VtepMAC":"0e:5c:00:%02x:%02x:%02x"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:5c:00:%02x:%02x:%02x"}}`,
			i/250, 1+i%250, i+1, byte(i>>16), byte(i>>8), byte(i), byte(i>>16), byte(i>>8), byte(i)),
		CreateRevision: rev, ModRevision: rev}
}

// BenchmarkJoinDualStack is BenchmarkJoin in a dual-stack network: each
// join is one key, two subnets, two tunnels.
func BenchmarkJoinDualStack(b *testing.B) {
	cfg, _ := flannel.ParseConfig([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00::/32",` +
		`"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`))
	benchJoin(b, cfg, benchKV6)
}

// BenchmarkJoin is one join (a watch event through the index and the
// reconciler) with 100 and with 50,000 nodes known: the cost must not grow
// with the cluster (go test -run - -bench Join ./control/store/).
func BenchmarkJoin(b *testing.B) {
	cfg, _ := flannel.ParseConfig([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`))
	benchJoin(b, cfg, benchKV)
}

func benchJoin(b *testing.B, cfg *flannel.NetworkConfig, benchKV func(int, int64) flannel.KV) {
	for _, n := range []int{100, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			kvs := make([]flannel.KV, n)
			for i := range kvs {
				kvs[i] = benchKV(i, int64(i+1))
			}
			ix := newIndex(cfg, "/p", n)
			ix.update(putEvents(kvs), false)
			rec := reconcile.New(nopTable{}, cfg, reconcile.Self{}, nil, nil)
			all := ix.all()
			for _, c := range all {
				if c.Lease == nil {
					b.Fatalf("benchmark lease %s invalid: %v", c.Key, c.Invalid)
				}
			}
			if _, err := rec.ApplyBatch(peers.Batch{Full: true, Changes: all}); err != nil {
				b.Fatal(err)
			}
			i := n
			for b.Loop() {
				// A join, then the same node leaving, so the set stays n.
				for _, ev := range []Event{{Type: EventPut, KV: benchKV(i, int64(i+1))}, {Type: EventDelete, KV: flannel.KV{Key: benchKV(i, 0).Key}}} {
					dirty := ix.update([]Event{ev}, true)
					if _, err := rec.ApplyBatch(peers.Batch{Changes: ix.changes(dirty)}); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
