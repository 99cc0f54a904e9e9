package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestKubeDependencies keeps weftd's Kubernetes client to the two API groups
// it calls (control/kube/client.go). client-go's clientset links every
// group and registers them all at init; with it weftd's binary was 79 MB
// and its VmRSS at 10,000 nodes 53-58 MB, of which ~36 MB were the binary's
// own pages (issue 11's target is 40 MB). gentype drags in client-go's fake
// clients, strategic-merge-patch and the OpenAPI models.
func TestKubeDependencies(t *testing.T) {
	goBin := os.Getenv("GO") // as the Makefile sets it; go test puts its go first on PATH
	if goBin == "" {
		goBin = "go"
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	groups := map[string]bool{"k8s.io/api/core/v1": true, "k8s.io/api/authorization/v1": true}
	banned := map[string]bool{"k8s.io/client-go/kubernetes": true, "k8s.io/client-go/kubernetes/scheme": true,
		"k8s.io/client-go/gentype": true, "k8s.io/client-go/testing": true}
	for _, p := range strings.Fields(string(out)) {
		if banned[p] || strings.HasPrefix(p, "k8s.io/api/") && !groups[p] {
			t.Errorf("weftd links %s; it should call the apiserver through control/kube's own client (see its client.go)", p)
		}
	}
}
