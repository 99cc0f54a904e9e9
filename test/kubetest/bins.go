package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the Kubernetes release the tests run; test/kubetest/tools/go.mod
// pins the same release (k8s.io/kubernetes and every staging module).
const Version = "v1.34.2"

// BinDirEnv overrides where the built binaries are cached.
const BinDirEnv = "WEFT_KUBE_BIN_DIR"

// Bins are the paths of the real Kubernetes binaries the tests run.
type Bins struct {
	APIServer string
	KubeProxy string
}

// stampName marks a cache directory whose binaries were built and ran
// --version successfully; it holds the version line.
const stampName = "ok"

// BinDir is the cache directory: $WEFT_KUBE_BIN_DIR, else
// /var/cache/weft/kube-<Version> when writable (root, CI), else the user's
// cache directory.
func BinDir() string {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d
	}
	sys := filepath.Join("/var/cache/weft", "kube-"+Version)
	if os.MkdirAll(sys, 0o755) == nil && unix.Access(sys, unix.W_OK) == nil {
		return sys
	}
	if uc, err := os.UserCacheDir(); err == nil {
		return filepath.Join(uc, "weft", "kube-"+Version)
	}
	return filepath.Join(os.TempDir(), "weft-kube-"+Version)
}

func binsIn(dir string) Bins {
	return Bins{APIServer: filepath.Join(dir, "kube-apiserver"), KubeProxy: filepath.Join(dir, "kube-proxy")}
}

// cached returns the binaries if a previous build completed in dir.
func cached(dir string) (Bins, bool) {
	b := binsIn(dir)
	if _, err := os.Stat(filepath.Join(dir, stampName)); err != nil {
		return Bins{}, false
	}
	for _, p := range []string{b.APIServer, b.KubeProxy} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return Bins{}, false
		}
	}
	return b, true
}

// Binaries returns kube-apiserver and kube-proxy at Version, building them
// from the tools module into BinDir() the first time on a machine (about 4
// minutes cold; `make kube-bins` does it before `go test`, so no test
// timeout pays for it). A file lock keeps concurrent test processes from
// building twice: the second waits and then finds the cache filled.
func Binaries(ctx context.Context) (Bins, error) {
	dir := BinDir()
	if b, ok := cached(dir); ok {
		return b, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Bins{}, fmt.Errorf("kube binaries cache: %w", err)
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return Bins{}, err
	}
	defer unlock()
	if b, ok := cached(dir); ok { // built by whoever held the lock
		return b, nil
	}
	if err := build(ctx, dir); err != nil {
		return Bins{}, err
	}
	b, _ := cached(dir)
	return b, nil
}

// lockDir takes an exclusive flock on dir/.lock, polling so ctx can cancel
// the wait.
func lockDir(ctx context.Context, dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kube binaries lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("kube binaries lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for another kube binaries build: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// toolsDir is the tools module next to this file: tests always run from a
// source checkout, so the path compiled in is where the module lives.
func toolsDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locate test/kubetest/tools: no caller information")
	}
	d := filepath.Join(filepath.Dir(file), "tools")
	if _, err := os.Stat(filepath.Join(d, "go.mod")); err != nil {
		return "", fmt.Errorf("locate test/kubetest/tools: %w", err)
	}
	return d, nil
}

// build compiles both commands into a temporary directory beside dir,
// checks each runs --version and reports Version, and only then moves them
// in and writes the stamp, so an interrupted build leaves no half cache.
func build(ctx context.Context, dir string) error {
	src, err := toolsDir()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return fmt.Errorf("kube binaries build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	// The version variables are what a release build sets; without them
	// the binaries call themselves v0.0.0-master.
	ldflags := strings.Join([]string{"-s", "-w",
		"-X k8s.io/component-base/version.gitVersion=" + Version,
		"-X k8s.io/component-base/version.gitMajor=" + major(Version),
		"-X k8s.io/component-base/version.gitMinor=" + minor(Version),
		"-X k8s.io/client-go/pkg/version.gitVersion=" + Version,
	}, " ")
	cmd := exec.CommandContext(ctx, goBin(), "build", "-trimpath", "-ldflags", ldflags, "-o", tmp+"/",
		"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-proxy")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly -buildvcs=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build kube binaries %s in %s: %w\n%s", Version, src, err, out.Bytes())
	}
	tb := binsIn(tmp)
	var stamp []string
	for _, p := range []string{tb.APIServer, tb.KubeProxy} {
		v, err := exec.CommandContext(ctx, p, "--version").CombinedOutput()
		if err != nil || !strings.Contains(string(v), Version) {
			return fmt.Errorf("verify %s --version: %v: %q", filepath.Base(p), err, v)
		}
		stamp = append(stamp, filepath.Base(p)+": "+strings.TrimSpace(string(v)))
		if err := os.Rename(p, filepath.Join(dir, filepath.Base(p))); err != nil {
			return fmt.Errorf("install %s: %w", filepath.Base(p), err)
		}
	}
	stamp = append(stamp, fmt.Sprintf("built in %s", time.Since(start).Round(time.Second)))
	return os.WriteFile(filepath.Join(dir, stampName), []byte(strings.Join(stamp, "\n")+"\n"), 0o644)
}

// goBin is $GO (as the Makefile sets it), else go from PATH (go test puts
// its own toolchain first on PATH).
func goBin() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// major and minor split "v1.34.2" into "1" and "34".
func major(v string) string { return strings.Split(strings.TrimPrefix(v, "v"), ".")[0] }
func minor(v string) string { return strings.Split(strings.TrimPrefix(v, "v"), ".")[1] }
