package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weftnet/weft/control/flannel"
)

func TestWatchConfig(t *testing.T) {
	cli := shared.client(t)
	s := newTestStore(t, cli, bigNet)
	type result struct {
		cfg *flannel.NetworkConfig
		err error
	}
	got := make(chan result, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		s.WatchConfig(ctx, func(c *flannel.NetworkConfig, err error) { got <- result{c, err} })
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	next := func() result {
		t.Helper()
		select {
		case r := <-got:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no config callback within 10s")
		}
		return result{}
	}
	if r := next(); r.err != nil || r.cfg.Network.String() != "10.244.0.0/16" {
		t.Fatalf("first: %+v", r)
	}
	key := flannel.ConfigKey(s.Prefix())
	if _, err := cli.Put(testCtx(t), key, `{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}`); err != nil {
		t.Fatal(err)
	}
	if r := next(); r.err != nil || r.cfg.Network.String() != "10.99.0.0/16" {
		t.Fatalf("after a change: %+v", r)
	}
	if _, err := cli.Put(testCtx(t), key, `{"Network":`); err != nil {
		t.Fatal(err)
	}
	if r := next(); !errors.Is(r.err, ErrConfigInvalid) {
		t.Fatalf("after garbage: %+v, want ErrConfigInvalid", r)
	}
	if _, err := cli.Delete(testCtx(t), key); err != nil {
		t.Fatal(err)
	}
	if r := next(); !errors.Is(r.err, ErrConfigNotFound) {
		t.Fatalf("after delete: %+v, want ErrConfigNotFound", r)
	}
}
