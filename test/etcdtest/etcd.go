// Package etcdtest runs a real single-member etcd (the embed package) for
// tests, benchmarks and the lab: on 127.0.0.1 in the caller's network
// namespace, and exposed into a lab's underlay through a forwarder, so
// daemons in node namespaces reach it at an underlay address while the test
// itself talks to it on loopback. The forwarder can cut one node off
// (Partition) to simulate a lost connection without touching the data
// plane.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one etcd member on loopback.
type Server struct {
	Dir        string
	ClientURL  url.URL // http://127.0.0.1:<port>
	peerURL    url.URL
	srv        *embed.Etcd
	forwarders []*Forwarder
}

// Start runs etcd with its data in dir (created if missing).
func Start(dir string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd data dir: %w", err)
	}
	c, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	p, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, ClientURL: c, peerURL: p}
	return s, s.start()
}

func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

func (s *Server) start() error {
	cfg := embed.NewConfig()
	cfg.Name = "weft-test"
	cfg.Dir = s.Dir
	cfg.ListenClientUrls = []url.URL{s.ClientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.ClientURL}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Short ticks: quick elections and a 1s minimum lease TTL for expiry tests.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return errors.New("start etcd: not ready after 30s")
	}
	s.srv = e
	return nil
}

// Stop shuts etcd down; its data stays in Dir for Restart. Forwarders keep
// listening and refuse nothing, but every connection fails while stopped.
func (s *Server) Stop() {
	if s.srv != nil {
		s.srv.Close()
		<-s.srv.Server.StopNotify()
		s.srv = nil
	}
}

// Restart starts a stopped server again on the same ports and data.
func (s *Server) Restart() error {
	if s.srv != nil {
		return nil
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the old ports may linger briefly
		if err = s.start(); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Close stops the server and every forwarder.
func (s *Server) Close() {
	for _, f := range s.forwarders {
		f.Close()
	}
	s.Stop()
}

// Client returns a client on loopback; the caller closes it.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.ClientURL.String()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

// Put writes one key with a fresh client (a convenience for tests).
func (s *Server) Put(ctx context.Context, key, value string) error {
	cli, err := s.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	_, err = cli.Put(ctx, key, value)
	return err
}
