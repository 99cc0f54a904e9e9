package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"time"

	"github.com/weftnet/weft/test/topo"
)

// Sockets belong to the namespace of the thread that creates them, so a
// listener or connection made inside topo.Do keeps working from any
// goroutine afterwards: traffic needs no helper processes.

// Ping sends count echo requests from the namespace at nsPath to dst and
// fails unless every one is answered. size > 0 sets the payload size with
// DF set (-M do).
func Ping(ctx context.Context, nsPath string, dst netip.Addr, count, size int) ([]byte, error) {
	args := []string{"--net=" + nsPath, "--", "ping", "-c", fmt.Sprint(count), "-W", "2", "-i", "0.2"}
	if size > 0 {
		args = append(args, "-M", "do", "-s", fmt.Sprint(size))
	}
	args = append(args, dst.String())
	out, err := exec.CommandContext(ctx, "nsenter", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ping %s from %s: %w", dst, nsPath, err)
	}
	return out, nil
}

// Transfer is what one TCP transfer moved and what arrived.
type Transfer struct {
	Bytes    int64
	SentSum  string // sha256 of what was sent
	RecvSum  string // sha256 of what arrived
	Duration time.Duration
}

// Intact reports whether every byte arrived unchanged.
func (r Transfer) Intact(size int64) bool { return r.Bytes == size && r.SentSum == r.RecvSum }

// Gbps is the transfer's goodput.
func (r Transfer) Gbps() float64 { return float64(r.Bytes) * 8 / r.Duration.Seconds() / 1e9 }

// TransferTCP streams size pseudo-random bytes from the srcNS namespace to
// a listener on dst in the dstNS namespace and hashes both ends.
func TransferTCP(ctx context.Context, srcNS, dstNS string, dst netip.Addr, size int64) (Transfer, error) {
	return PacedTransferTCP(ctx, srcNS, dstNS, dst, size, 0)
}

// PacedTransferTCP is TransferTCP at about rate bytes a second (0: as fast
// as it goes), so a transfer can last long enough to span an event.
func PacedTransferTCP(ctx context.Context, srcNS, dstNS string, dst netip.Addr, size, rate int64) (Transfer, error) {
	return transferTCP(ctx, srcNS, dstNS, netip.AddrPortFrom(dst, 0), netip.AddrPort{}, size, rate)
}

// TransferTCPVia is TransferTCP to a listener on listen (in dstNS) that the
// sender reaches by dialing dial, e.g. a Service address NATed to listen.
func TransferTCPVia(ctx context.Context, srcNS, dstNS string, listen, dial netip.AddrPort, size int64) (Transfer, error) {
	return transferTCP(ctx, srcNS, dstNS, listen, dial, size, 0)
}

// transferTCP listens on listen (port 0: any) and dials dial (invalid: the
// listener's own address).
func transferTCP(ctx context.Context, srcNS, dstNS string, listen, dial netip.AddrPort, size, rate int64) (Transfer, error) {
	var l net.Listener
	err := topo.Do(dstNS, func() error {
		var err error
		l, err = net.Listen(tcpNet(listen.Addr()), listen.String())
		return err
	})
	if err != nil {
		return Transfer{}, fmt.Errorf("listen in %s: %w", dstNS, err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	if !dial.IsValid() {
		dial = netip.AddrPortFrom(listen.Addr(), uint16(port))
	}

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

	var c net.Conn
	err = topo.Do(srcNS, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, tcpNet(dial.Addr()), dial.String())
		return err
	})
	if err != nil {
		return Transfer{}, fmt.Errorf("dial %s from %s: %w", dial, srcNS, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	start := time.Now()
	h := sha256.New()
	src := io.LimitReader(rand.NewChaCha8([32]byte{byte(port), byte(port >> 8)}), size)
	var w io.Writer = io.MultiWriter(c, h)
	if rate > 0 {
		w = &pacedWriter{w: w, rate: rate, start: start}
	}
	n, err := io.CopyBuffer(w, src, make([]byte, 64<<10))
	c.Close()
	if err != nil {
		return Transfer{}, fmt.Errorf("send after %d bytes: %w", n, err)
	}
	r := <-done
	if r.err != nil {
		return Transfer{}, fmt.Errorf("receive after %d bytes: %w", r.n, r.err)
	}
	return Transfer{Bytes: r.n, SentSum: hex.EncodeToString(h.Sum(nil)), RecvSum: r.sum, Duration: time.Since(start)}, nil
}

// tcpNet and udpNet name a's family for net.Listen and Dial: traffic to an
// IPv6 pod must not be answered from an IPv4 socket, and the other way round.
func tcpNet(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "tcp4"
	}
	return "tcp6"
}

func udpNet(a netip.Addr) string {
	if a.Unmap().Is4() {
		return "udp4"
	}
	return "udp6"
}

// pacedWriter sleeps after each write until the bytes written so far fit
// the rate.
type pacedWriter struct {
	w     io.Writer
	rate  int64
	start time.Time
	sent  int64
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.sent += int64(n)
	if ahead := time.Duration(float64(p.sent)/float64(p.rate)*float64(time.Second)) - time.Since(p.start); ahead > 0 {
		time.Sleep(ahead)
	}
	return n, err
}

// EchoUDP sends count datagrams of size bytes each from srcNS to an echo
// server on dst in dstNS, one at a time, and checks that every echo comes
// back byte for byte (sha256), so each datagram crosses the path both ways.
// A datagram whose echo does not arrive within a second is sent again, up
// to three times (UDP may lose one on a busy machine; a data plane that
// drops a kind of datagram loses all three). Returns how many needed a
// retry.
func EchoUDP(ctx context.Context, srcNS, dstNS string, dst netip.Addr, count, size int) (retries int, err error) {
	var srv net.PacketConn
	if err := topo.Do(dstNS, func() error {
		var err error
		srv, err = net.ListenPacket(udpNet(dst), netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return 0, fmt.Errorf("listen in %s: %w", dstNS, err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(buf[:n], from)
		}
	}()
	var c net.Conn
	if err := topo.Do(srcNS, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, udpNet(dst), srv.LocalAddr().String())
		return err
	}); err != nil {
		return 0, fmt.Errorf("dial from %s: %w", srcNS, err)
	}
	defer c.Close()
	rng := rand.NewChaCha8([32]byte{byte(size), byte(size >> 8)})
	msg, got := make([]byte, size), make([]byte, 65536)
	for i := 0; i < count; i++ {
		rng.Read(msg)
		msg[0], msg[1] = byte(i), byte(i>>8) // tell a late echo from this one
		want := sha256.Sum256(msg)
		ok := false
		for try := 0; try < 3 && !ok; try++ {
			if try > 0 {
				retries++
			}
			if ctx.Err() != nil {
				return retries, ctx.Err()
			}
			if _, err := c.Write(msg); err != nil {
				return retries, fmt.Errorf("send datagram %d (%d bytes): %w", i, size, err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, err := c.Read(got)
				if err != nil {
					break // timeout: send again
				}
				if n == size && sha256.Sum256(got[:n]) == want {
					ok = true
					break
				}
				if n != size || got[0] != msg[0] || got[1] != msg[1] {
					continue // a late echo of an earlier try
				}
				return retries, fmt.Errorf("datagram %d (%d bytes) came back changed", i, size)
			}
		}
		if !ok {
			return retries, fmt.Errorf("datagram %d of %d (%d bytes): no echo after 3 tries", i, count, size)
		}
	}
	return retries, nil
}
