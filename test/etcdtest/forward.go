package etcdtest

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/test/tcpfwd"
)

// Forwarder exposes the server inside a lab namespace (see package tcpfwd
// for Partition, Heal and Close).
type Forwarder struct{ *tcpfwd.Forwarder }

// Expose starts a forwarder listening on addr inside the namespace that
// listen creates sockets in (pass a function that runs its argument there,
// e.g. topo.Do with the underlay's path). The returned URL is what daemons
// use as --etcd-endpoints.
func (s *Server) Expose(listen func(fn func() error) error, addr netip.AddrPort) (*Forwarder, error) {
	f, err := tcpfwd.Listen(listen, addr, s.ClientURL.Host)
	if err != nil {
		return nil, fmt.Errorf("expose etcd: %w", err)
	}
	fw := &Forwarder{f}
	s.forwarders = append(s.forwarders, fw)
	return fw, nil
}

// URL is the client URL daemons use.
func (f *Forwarder) URL() string { return "http://" + f.Addr.String() }
