package test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/test/lab"
	"github.com/weftnet/weft/test/topo"
)

func udpConnIn(nsPath string, laddr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := topo.Do(nsPath, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr))
		return err
	})
	return c, err
}

// transferTCP is lab.TransferTCP, kept under the tests' name.
func transferTCP(ctx context.Context, srcNS, dstNS string, dst netip.Addr, size int64) (lab.Transfer, error) {
	return lab.TransferTCP(ctx, srcNS, dstNS, dst, size)
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: "+what, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
