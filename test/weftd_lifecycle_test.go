package test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/test/lab"
)

// waitHealth polls /healthz until its status code is code and, for 503,
// the body names reason.
func waitHealth(t *testing.T, n *lab.Node, code int, reason string, timeout time.Duration) {
	t.Helper()
	var (
		got  int
		body string
		err  error
	)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		got, body, err = n.Get("/healthz")
		if err == nil && got == code && strings.Contains(body, reason) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("node %s: /healthz %d %q (%v) after %v, want %d naming %q", n.Name, got, body, err, timeout, code, reason)
}

// TestWeftdLifecycle: weftd notices, within seconds, what happens to its
// own lease, the network config, etcd and its program links after it is
// ready, repairs what it can and otherwise turns unready saying why.
func TestWeftdLifecycle(t *testing.T) {
	c := newLab(t, "")
	// A 5 s lease TTL makes the renewal deadline 5 s.
	n := mustAddWeftNode(t, c, "n1", "--subnet-lease-ttl", "5s")
	cli := etcdClient(t, c)
	own := leaseKey(c, n.Subnet)
	ownValue := func() string {
		t.Helper()
		resp, err := cli.Get(t.Context(), own)
		if err != nil || len(resp.Kvs) == 0 {
			return ""
		}
		return string(resp.Kvs[0].Value)
	}
	mine := ownValue()
	if mine == "" {
		t.Fatal("no own lease in etcd")
	}
	waitHealth(t, n, http.StatusOK, "", 5*time.Second)

	t.Run("OwnKeyDeleted", func(t *testing.T) {
		deleteKey(t, cli, own)
		start := time.Now()
		for ownValue() != mine {
			if time.Since(start) > 5*time.Second {
				t.Fatal("own lease not written again within 5s")
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("own lease back after %v", time.Since(start).Round(time.Millisecond))
		if metric(t, n, "weft_own_lease_repairs_total") < 1 {
			t.Error("repair not counted")
		}
		waitHealth(t, n, http.StatusOK, "", 5*time.Second)
	})

	t.Run("ConfigChanged", func(t *testing.T) {
		cfgKey := flannel.ConfigKey(c.EtcdPrefix)
		putKey(t, cli, cfgKey, strings.Replace(c.Opts.NetConfig, `"VNI":1`, `"VNI":2`, 1))
		waitHealth(t, n, http.StatusServiceUnavailable, "network config in etcd changed", 10*time.Second)
		if metric(t, n, "weft_config_changed") != 1 {
			t.Error("weft_config_changed not set")
		}
		running(t, c, n)
		putKey(t, cli, cfgKey, c.Opts.NetConfig)
		waitHealth(t, n, http.StatusOK, "", 10*time.Second)
	})

	t.Run("StoreUnreachable", func(t *testing.T) {
		c.Fwd.Partition(n.Topo.UnderlayIP)
		healed := false
		defer func() {
			if !healed {
				c.Fwd.Heal(n.Topo.UnderlayIP)
			}
		}()
		waitHealth(t, n, http.StatusServiceUnavailable, "no answer from etcd", 15*time.Second)
		if metric(t, n, "weft_store_reachable") != 0 {
			t.Error("weft_store_reachable still 1")
		}
		// Unready, yet alive: the DaemonSet's liveness probe (/livez) must not
		// restart weftd through an etcd outage.
		if code, body, err := n.Get("/livez"); err != nil || code != http.StatusOK {
			t.Errorf("/livez during the etcd outage: %d %q (%v), want 200", code, body, err)
		}
		c.Fwd.Heal(n.Topo.UnderlayIP)
		healed = true
		waitHealth(t, n, http.StatusOK, "", 20*time.Second)
		// The lease expired during the outage; the same subnet is back.
		for start := time.Now(); ownValue() != mine; time.Sleep(100 * time.Millisecond) {
			if time.Since(start) > 15*time.Second {
				t.Fatal("own lease not re-acquired after the outage")
			}
		}
	})

	t.Run("LinkMissing", func(t *testing.T) {
		// Detach the host device's program behind weftd's back.
		l, err := link.LoadPinnedLink(filepath.Join(n.PinPath, "links", "host"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Unpin(); err != nil {
			t.Fatal(err)
		}
		l.Close()
		waitHealth(t, n, http.StatusServiceUnavailable, "program link host", 10*time.Second)
		if metric(t, n, "weft_program_links_missing") != 1 {
			t.Error("weft_program_links_missing not set")
		}
		// A restart re-attaches it.
		if err := stopWeftd(t, c, n, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.StartWeftd(n, "--subnet-lease-ttl", "5s"); err != nil {
			t.Fatal(err)
		}
		waitHealth(t, n, http.StatusOK, "", 10*time.Second)
	})

	t.Run("SetupFailureReleasesLease", func(t *testing.T) {
		// Pins of another layout make the data plane setup fail after the
		// lease is held: weftd must give the lease back and say why.
		if err := stopWeftd(t, c, n, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := n.Topo.Do(func() error { return loader.TeardownNode(n.PinPath, "") }); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(n.PinPath, "layout-99"), 0o700); err != nil {
			t.Fatal(err)
		}
		startWeftdNoWait(t, c, n, "--subnet-lease-ttl", "5s")
		select {
		case <-c.Lab.Exited(n.Cmd):
		case <-time.After(20 * time.Second):
			t.Fatal("weftd kept running over pins of another layout")
		}
		if log := n.Log(); !strings.Contains(log, "pin layout 99") || !strings.Contains(log, "released the subnet lease") {
			t.Fatalf("weftd log does not say why and that it released the lease:\n%s", log)
		}
		if v := ownValue(); v != "" {
			t.Fatalf("lease still published after a failed setup: %q", v)
		}
		os.RemoveAll(n.PinPath)
		if err := c.StartWeftd(n, "--subnet-lease-ttl", "5s"); err != nil {
			t.Fatal(err)
		}
		if got := ownValue(); got != mine {
			t.Fatalf("lease after restart %q, want %q", got, mine)
		}
	})

	t.Run("SubnetTaken", func(t *testing.T) {
		other := strings.Replace(mine, n.Topo.UnderlayIP.String(), "192.0.2.77", 1)
		putKey(t, cli, own, other)
		waitHealth(t, n, http.StatusServiceUnavailable, "subnet taken", 5*time.Second)
		if metric(t, n, "weft_own_lease_lost") != 1 {
			t.Error("weft_own_lease_lost not set")
		}
		running(t, c, n) // stays up to say so
	})
}
