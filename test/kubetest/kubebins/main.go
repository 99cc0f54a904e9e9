// Command kubebins builds (once per machine) and prints the real
// kube-apiserver and kube-proxy the tests use; `make kube-bins` runs it
// before `go test` so the cold build never runs inside a test timeout.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/weftnet/weft/test/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	b, err := kubetest.Binaries(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubebins:", err)
		os.Exit(1)
	}
	fmt.Printf("kube-apiserver %s\nkube-proxy     %s\n(%s in %s)\n", b.APIServer, b.KubeProxy, kubetest.Version, time.Since(start).Round(time.Millisecond))
}
