package etcdtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
)

// Forwarder accepts TCP connections on an address inside another network
// namespace and relays them to the server's loopback port.
type Forwarder struct {
	Addr netip.AddrPort // where daemons connect (inside the namespace)
	ln   net.Listener
	dst  string

	mu      sync.Mutex
	blocked map[netip.Addr]bool
	conns   map[net.Conn]netip.Addr
	closed  bool
}

// Expose starts a forwarder listening on addr inside the namespace that
// listen creates sockets in (pass a function that runs its argument there,
// e.g. topo.Do with the underlay's path). The returned URL is what daemons
// use as --etcd-endpoints.
func (s *Server) Expose(listen func(fn func() error) error, addr netip.AddrPort) (*Forwarder, error) {
	f := &Forwarder{Addr: addr, dst: s.ClientURL.Host, blocked: map[netip.Addr]bool{}, conns: map[net.Conn]netip.Addr{}}
	err := listen(func() error {
		var err error
		f.ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("expose etcd on %s: %w", addr, err)
	}
	s.forwarders = append(s.forwarders, f)
	go f.serve()
	return f, nil
}

// URL is the client URL daemons use.
func (f *Forwarder) URL() string { return "http://" + f.Addr.String() }

func (f *Forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		src := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
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
