// Package tcpfwd relays TCP from an address inside a lab network namespace
// to a server on loopback in the caller's namespace. Test servers (etcd,
// kube-apiserver) listen on 127.0.0.1 where the test talks to them directly;
// daemons in node namespaces reach them through a forwarder on an underlay
// address, as they would reach a real control plane. Because every relayed
// connection passes through here, a test can cut one node off (Partition)
// and let it back (Heal) without touching the data plane or the server.
package tcpfwd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
)

// Forwarder accepts TCP connections on Addr inside a network namespace and
// relays each to a fixed loopback destination.
type Forwarder struct {
	Addr netip.AddrPort // where clients connect (inside the namespace)
	ln   net.Listener
	dst  string

	mu      sync.Mutex
	blocked map[netip.Addr]bool
	conns   map[net.Conn]netip.Addr
	closed  bool
}

// Listen starts a forwarder on addr inside the namespace that listen creates
// sockets in (pass a function that runs its argument there, e.g. topo.Do
// with the underlay's path) and relays to dst, a host:port reachable from
// the caller's own namespace (normally 127.0.0.1:<port>). Port 0 in addr
// takes a free port; Addr then holds it.
func Listen(listen func(fn func() error) error, addr netip.AddrPort, dst string) (*Forwarder, error) {
	f := &Forwarder{Addr: addr, dst: dst, blocked: map[netip.Addr]bool{}, conns: map[net.Conn]netip.Addr{}}
	err := listen(func() error {
		var err error
		f.ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("forward %s to %s: %w", addr, dst, err)
	}
	// Port 0 picks a free port: report the one taken.
	if ap, err := netip.ParseAddrPort(f.ln.Addr().String()); err == nil {
		f.Addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	go f.serve()
	return f, nil
}

func (f *Forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		src := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
		f.mu.Lock()
		if f.blocked[src] || f.closed {
			f.mu.Unlock()
			c.Close()
			continue
		}
		f.conns[c] = src
		f.mu.Unlock()
		go f.relay(c)
	}
}

// relay copies both ways; the upstream dial happens on an ordinary thread,
// so it reaches the server's loopback in the caller's namespace.
func (f *Forwarder) relay(c net.Conn) {
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		c.Close()
	}()
	up, err := net.Dial("tcp", f.dst)
	if err != nil {
		return
	}
	defer up.Close()
	f.mu.Lock()
	f.conns[up] = f.conns[c]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, up)
		f.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// Partition cuts every connection from src and refuses new ones until Heal.
func (f *Forwarder) Partition(src netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked[src] = true
	for c, from := range f.conns {
		if from == src {
			c.Close()
		}
	}
}

// Heal lets src connect again.
func (f *Forwarder) Heal(src netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.blocked, src)
}

// Close stops accepting and cuts every relayed connection.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
