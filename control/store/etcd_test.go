package store

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/weftnet/weft/test/etcdtest"
)

// testEtcd is a real single-member etcd on 127.0.0.1 (test/etcdtest),
// data in a temp dir, with the few verbs these tests use.
type testEtcd struct{ *etcdtest.Server }

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

func startEtcd(dir string) (*testEtcd, error) {
	s, err := etcdtest.Start(dir)
	if err != nil {
		return nil, err
	}
	return &testEtcd{s}, nil
}

func (e *testEtcd) start() error { return e.Restart() }

func (e *testEtcd) stop() { e.Stop() }

func (e *testEtcd) client(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := e.Client()
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
