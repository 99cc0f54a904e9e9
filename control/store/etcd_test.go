package store

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// testEtcd is a real single-member etcd on 127.0.0.1, data in a temp dir.
type testEtcd struct {
	dir                string
	clientURL, peerURL url.URL
	srv                *embed.Etcd
}

// shared serves every test that does not stop etcd; tests isolate
// themselves with their own key prefix.
var shared *testEtcd

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-store-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared, err = startEtcd(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start etcd:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	shared.stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeLoopbackURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

func startEtcd(dir string) (*testEtcd, error) {
	c, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	p, err := freeLoopbackURL()
	if err != nil {
		return nil, err
	}
	e := &testEtcd{dir: dir, clientURL: c, peerURL: p}
	return e, e.start()
}

func (e *testEtcd) start() error {
	cfg := embed.NewConfig()
	cfg.Name = "weft-test"
	cfg.Dir = e.dir
	cfg.ListenClientUrls = []url.URL{e.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{e.clientURL}
	cfg.ListenPeerUrls = []url.URL{e.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{e.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Short ticks make etcd's minimum lease TTL 1s, so expiry tests are quick.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	srv, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	select {
	case <-srv.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		srv.Close()
		return fmt.Errorf("etcd in %s not ready after 60s", e.dir)
	}
	e.srv = srv
	return nil
}

func (e *testEtcd) stop() {
	if e.srv != nil {
		e.srv.Close()
		e.srv = nil
	}
}

func (e *testEtcd) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.clientURL.String()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

var prefixSeq atomic.Int64

// testPrefix gives each test (and each -count repetition) its own network
// in the shared etcd.
func testPrefix(t *testing.T) string {
	return fmt.Sprintf("/test/%s-%d/coreos.com/network",
		strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()), prefixSeq.Add(1))
}

// newTestStore writes config under a fresh prefix and returns a store on it.
func newTestStore(t *testing.T, cli *clientv3.Client, config string) *Store {
	t.Helper()
	prefix := testPrefix(t)
	ctx := testCtx(t)
	if _, err := cli.Put(ctx, prefix+"/config", config); err != nil {
		t.Fatal(err)
	}
	return New(cli, prefix, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), nil)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
