package ipmasq_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/control/ipmasq"
	"github.com/weftnet/weft/test/topo"
)

var network = netip.MustParsePrefix("10.244.0.0/16")

// node is a fresh network namespace (a topo lab node) for one test, so the
// rules never reach the machine's own netfilter.
func node(t *testing.T) *topo.Node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("ipmasq tests need root (network namespaces, nftables); run them as root")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("nft not found: apt-get install -y nftables (make deps)")
	}
	l, err := topo.New(topo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	n, err := l.AddNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func nftList(t *testing.T, n *topo.Node, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Exec(ctx, "nft", args...)
	if err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func ensure(t *testing.T, n *topo.Node) {
	t.Helper()
	err := n.Do(func() error {
		nft, err := ipmasq.New()
		if err != nil {
			return err
		}
		return ipmasq.Ensure(context.Background(), nft, network)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, n *topo.Node) {
	t.Helper()
	err := n.Do(func() error {
		nft, err := ipmasq.New()
		if err != nil {
			return err
		}
		return ipmasq.Remove(context.Background(), nft)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEnsureRemoveIdempotent: any number of Ensure calls leave exactly one
// copy of the rules, any number of Remove calls leave no table, and a table
// that is not Weft's is never touched.
func TestEnsureRemoveIdempotent(t *testing.T) {
	n := node(t)
	nftList(t, n, "add", "table", "ip", "someone-else")
	nftList(t, n, "add", "chain", "ip", "someone-else", "post", "{ type nat hook postrouting priority srcnat; }")
	nftList(t, n, "add", "rule", "ip", "someone-else", "post", "masquerade")

	want, err := ipmasq.Rules(network)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		ensure(t, n)
		table := nftList(t, n, "list", "table", "ip", ipmasq.Table)
		for _, r := range want {
			// nft prints "fully-random" as given and the rest as written.
			if c := strings.Count(table, r); c != 1 {
				t.Errorf("after Ensure #%d: rule %q appears %d times in\n%s", i+1, r, c, table)
			}
		}
		if c := strings.Count(table, "masquerade"); c != 1 {
			t.Errorf("after Ensure #%d: %d masquerade rules, want 1:\n%s", i+1, c, table)
		}
	}
	for i := 0; i < 2; i++ {
		remove(t, n)
		if tables := nftList(t, n, "list", "tables"); strings.Contains(tables, "table ip "+ipmasq.Table+"\n") {
			t.Errorf("after Remove #%d: table still there:\n%s", i+1, tables)
		}
	}
	if other := nftList(t, n, "list", "table", "ip", "someone-else"); strings.Count(other, "masquerade") != 1 {
		t.Errorf("another table was changed:\n%s", other)
	}
}

func TestRulesIPv6(t *testing.T) {
	got, err := ipmasq.Rules(netip.MustParsePrefix("fd00:10:244::/48"))
	want := []string{
		"ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return",
		"ip6 saddr fd00:10:244::/48 ip6 daddr ff00::/8 return",
		"ip6 saddr fd00:10:244::/48 masquerade fully-random",
	}
	if err != nil || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []netip.Prefix{{}, netip.MustParsePrefix("::ffff:10.0.0.0/104")} {
		if _, err := ipmasq.Rules(bad); !errors.Is(err, ipmasq.ErrNetwork) {
			t.Errorf("%v: %v, want ErrNetwork", bad, err)
		}
	}
}

// TestEnsureRemoveIPv6: the IPv6 rules live in their own table (ip6 weft),
// beside the IPv4 one, and go with Remove without touching it.
func TestEnsureRemoveIPv6(t *testing.T) {
	n := node(t)
	network6 := netip.MustParsePrefix("fd00:10:244::/48")
	ensure(t, n)
	for range 2 {
		if err := n.Do(func() error {
			nft, err := ipmasq.New6()
			if err != nil {
				return err
			}
			return ipmasq.Ensure(context.Background(), nft, network6)
		}); err != nil {
			t.Fatal(err)
		}
	}
	table := nftList(t, n, "list", "table", "ip6", ipmasq.Table)
	want, _ := ipmasq.Rules(network6)
	for _, r := range want {
		if c := strings.Count(table, r); c != 1 {
			t.Errorf("rule %q appears %d times in\n%s", r, c, table)
		}
	}
	if err := n.Do(func() error {
		nft, err := ipmasq.New6()
		if err != nil {
			return err
		}
		return ipmasq.Remove(context.Background(), nft)
	}); err != nil {
		t.Fatal(err)
	}
	tables := nftList(t, n, "list", "tables")
	if strings.Contains(tables, "table ip6 "+ipmasq.Table+"\n") || !strings.Contains(tables, "table ip "+ipmasq.Table+"\n") {
		t.Errorf("after removing the IPv6 table:\n%s", tables)
	}
}
