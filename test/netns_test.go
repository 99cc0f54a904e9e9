package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/test/topo"
)

// Sockets belong to the namespace of the thread that creates them, so a
// listener or connection made inside topo.Do keeps working from any
// goroutine afterwards: traffic generators need no helper processes.

func listenTCPIn(nsPath string, addr netip.AddrPort) (net.Listener, error) {
	var l net.Listener
	err := topo.Do(nsPath, func() error {
		var err error
		l, err = net.Listen("tcp4", addr.String())
		return err
	})
	return l, err
}

func dialTCPIn(ctx context.Context, nsPath string, addr netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := topo.Do(nsPath, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp4", addr.String())
		return err
	})
	return c, err
}

func udpConnIn(nsPath string, laddr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := topo.Do(nsPath, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr))
		return err
	})
	return c, err
}

// transferResult is what one TCP transfer moved and what arrived.
type transferResult struct {
	Bytes    int64
	SentSum  string
	RecvSum  string
	Duration time.Duration
}

func (r transferResult) Gbps() float64 {
	return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e9
}

// transferTCP streams size pseudo-random bytes from the src namespace to a
// listener in the dst namespace and hashes both ends.
func transferTCP(ctx context.Context, srcNS, dstNS string, dst netip.Addr, size int64) (transferResult, error) {
	l, err := listenTCPIn(dstNS, netip.AddrPortFrom(dst, 0))
	if err != nil {
		return transferResult{}, fmt.Errorf("listen in %s: %w", dstNS, err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port

	type recv struct {
		sum string
		n   int64
		err error
	}
	done := make(chan recv, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- recv{err: err}
			return
		}
		defer c.Close()
		if dl, ok := ctx.Deadline(); ok {
			c.SetDeadline(dl)
		}
		h := sha256.New()
		n, err := io.Copy(h, c)
		done <- recv{sum: hex.EncodeToString(h.Sum(nil)), n: n, err: err}
	}()

	c, err := dialTCPIn(ctx, srcNS, netip.AddrPortFrom(dst, uint16(port)))
	if err != nil {
		return transferResult{}, fmt.Errorf("dial %s:%d from %s: %w", dst, port, srcNS, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	start := time.Now()
	h := sha256.New()
	src := io.LimitReader(rand.NewChaCha8([32]byte{byte(port), byte(port >> 8)}), size)
	n, err := io.Copy(io.MultiWriter(c, h), src)
	c.Close()
	if err != nil {
		return transferResult{}, fmt.Errorf("send after %d bytes: %w", n, err)
	}
	r := <-done
	if r.err != nil {
		return transferResult{}, fmt.Errorf("receive after %d bytes: %w", r.n, r.err)
	}
	return transferResult{Bytes: r.n, SentSum: hex.EncodeToString(h.Sum(nil)), RecvSum: r.sum, Duration: time.Since(start)}, nil
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
