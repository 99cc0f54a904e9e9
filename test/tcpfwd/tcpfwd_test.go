package tcpfwd

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// here runs fn in the test's own namespace: the relay logic does not care
// which namespace the listener lives in.
func here(fn func() error) error { return fn() }

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends one line and reads it back, or reports the failure.
func roundTrip(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	_, err := bufio.NewReader(c).ReadString('\n')
	return err
}

func TestRelayPartitionHeal(t *testing.T) {
	f, err := Listen(here, netip.MustParseAddrPort("127.0.0.1:0"), echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Addr.Port() == 0 {
		t.Fatal("Addr does not hold the port taken")
	}

	c, err := net.Dial("tcp", f.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c); err != nil {
		t.Fatalf("relay: %v", err)
	}

	f.Partition(netip.MustParseAddr("127.0.0.1"))
	if err := roundTrip(c); err == nil {
		t.Fatal("an open connection survived Partition")
	}
	if c2, err := net.Dial("tcp", f.Addr.String()); err == nil {
		if roundTrip(c2) == nil {
			t.Fatal("a new connection got through while partitioned")
		}
		c2.Close()
	}

	f.Heal(netip.MustParseAddr("127.0.0.1"))
	c3, err := net.Dial("tcp", f.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := roundTrip(c3); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
}
