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

// BenchmarkJoin is one join (a watch event through the index and the
// reconciler) with 100 and with 50,000 nodes known: the cost must not grow
// with the cluster (go test -run - -bench Join ./control/store/).
func BenchmarkJoin(b *testing.B) {
	cfg, _ := flannel.ParseConfig([]byte(`{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`))
	for _, n := range []int{100, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			kvs := make([]flannel.KV, n)
			for i := range kvs {
				kvs[i] = benchKV(i, int64(i+1))
			}
			ix := newIndex(cfg, "/p", n)
			ix.update(putEvents(kvs), false)
			rec := reconcile.New(nopTable{}, cfg, reconcile.Self{}, nil, nil)
			if _, err := rec.ApplyBatch(peers.Batch{Full: true, Changes: ix.all()}); err != nil {
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
