package test

// Helpers for the Service tests: echo backends in pod namespaces, clients
// that accept an answer only from the address they asked (so an un-NATed
// reply is a failure, not a success), and netfilter rules of the kind
// kube-proxy writes.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/test/topo"
)

// startEcho serves TCP and UDP echo on addr inside nsPath until the test ends.
func startEcho(t *testing.T, nsPath string, addr netip.AddrPort) {
	t.Helper()
	var l net.Listener
	var u *net.UDPConn
	err := topo.Do(nsPath, func() error {
		var err error
		if l, err = net.Listen("tcp4", addr.String()); err != nil {
			return err
		}
		u, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("echo on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close(); u.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				buf := make([]byte, 256)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			u.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// echoOnce sends a token to svc over proto ("tcp" or "udp") from nsPath and
// wants it back. Connected sockets take replies only from svc, so a reply
// that escaped un-NATing (source = the backend) never arrives.
func echoOnce(ctx context.Context, nsPath, proto string, svc netip.AddrPort) error {
	var c net.Conn
	err := topo.Do(nsPath, func() error {
		var err error
		c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, proto+"4", svc.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("%s dial %s: %w", proto, svc, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	token := []byte(fmt.Sprintf("weft-%s-%d", proto, time.Now().UnixNano()))
	if _, err := c.Write(token); err != nil {
		return fmt.Errorf("%s write to %s: %w", proto, svc, err)
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("%s read from %s: %w", proto, svc, err)
	}
	if !bytes.Equal(buf[:n], token) {
		return fmt.Errorf("%s from %s: got %q, want %q", proto, svc, buf[:n], token)
	}
	return nil
}

// checkEcho retries echoOnce until it works or 10 s pass (rules and
// endpoints may still be settling), then reports the last error.
func checkEcho(t *testing.T, nsPath, proto string, svc netip.AddrPort) {
	t.Helper()
	ctx := testCtx(t, 15*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for {
		if err = echoOnce(ctx, nsPath, proto, svc); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s to %s from %s: %v", proto, svc, filepath.Base(nsPath), err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nftApply loads an nft script into a node's namespace.
func nftApply(t *testing.T, n *topo.Node, script string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rules.nft")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := n.Exec(testCtx(t, 10*time.Second), "nft", "-f", f); err != nil {
		t.Fatalf("nft -f in %s: %v\n%s\n%s", n.Name, err, out, script)
	}
}

// kubeStyleDNAT is what kube-proxy writes for one ClusterIP port, in
// nftables: DNAT in prerouting to the backend, and the hairpin case (the
// backend calling its own Service) marked for masquerade in postrouting.
type kubeStyleDNAT struct {
	svc     netip.AddrPort
	backend netip.AddrPort
}

func kubeStyleRules(table string, svcs []kubeStyleDNAT) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n", table)
	b.WriteString("  chain pre { type nat hook prerouting priority dstnat; policy accept;\n")
	for _, s := range svcs {
		for _, l4 := range []string{"tcp", "udp"} {
			fmt.Fprintf(&b, "    ip daddr %s %s dport %d ip saddr %s meta mark set 0x4000\n", s.svc.Addr(), l4, s.svc.Port(), s.backend.Addr())
			fmt.Fprintf(&b, "    ip daddr %s %s dport %d dnat to %s\n", s.svc.Addr(), l4, s.svc.Port(), s.backend)
		}
	}
	b.WriteString("  }\n  chain post { type nat hook postrouting priority srcnat; policy accept;\n")
	b.WriteString("    meta mark 0x4000 masquerade\n  }\n}\n")
	return b.String()
}
