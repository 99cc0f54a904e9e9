// Command image writes the Weft container image as a docker-style image
// tarball (`docker load -i`, `ctr images import`), built without Docker:
// the static binaries (CGO_ENABLED=0) in one layer on an empty base, put
// together with go-containerregistry. The DaemonSet in deploy/kube-weft.yml
// runs it.
//
// The layout is deliberately minimal (no shell):
//
//	/usr/local/bin/weftd            the entrypoint
//	/usr/local/bin/weftctl
//	/usr/local/bin/weft-cni         installed onto the node by:
//	/usr/local/bin/weft-install-cni the DaemonSet's init container
//	/usr/sbin/nft                   + the shared libraries it loads
//	/tmp                            1777
//
// nft is there because weftd --ip-masq programs its masquerade rules through
// knftables, which runs the nft command. It is the build machine's Debian
// nftables (make image installs it when missing), copied with exactly the
// libraries ldd names, so it is the one dynamically linked program here.
//
// The layer's files carry a fixed timestamp and owner, so the same sources
// and host packages give the same layer digest.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/pflag"
)

const (
	// Version is the image's default version; deploy/kube-weft.yml
	// references Repository:Version (a test checks they agree).
	Version = "v0.1.0"
	// Repository is where the image is published.
	Repository = "ghcr.io/weftnet/weft"
	// BinDir is where the binaries live inside the image.
	BinDir = "/usr/local/bin"
	// Entrypoint is the image's entrypoint.
	Entrypoint = BinDir + "/weftd"
)

// Commands are the packages built into the image, by binary name.
var Commands = map[string]string{
	"weftd":            "./cmd/weftd",
	"weftctl":          "./cmd/weftctl",
	"weft-cni":         "./cmd/weft-cni",
	"weft-install-cni": "./cmd/weft-install-cni",
}

// HostTools are programs weftd runs, taken from the build machine with their
// shared libraries, by their path in the image.
var HostTools = []string{"/usr/sbin/nft"}

// epoch is every file's modification time and the image's creation time.
var epoch = time.Unix(0, 0).UTC()

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("image", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "bin/weft-image.tar", "image tarball to write")
	version := fs.String("version", Version, "image version (tag and org.opencontainers.image.version label)")
	src := fs.String("src", ".", "root of the Weft source tree")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "weft-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := BuildBinaries(ctx, *src, tmp); err != nil {
		return err
	}
	ref, err := Write(*out, tmp, *version)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s)\n", *out, ref)
	return nil
}

// BuildBinaries builds every command in Commands, static, into dir.
func BuildBinaries(ctx context.Context, src, dir string) error {
	args := []string{"build", "-trimpath", "-ldflags", "-s -w", "-o", dir + "/"}
	for _, pkg := range Commands {
		args = append(args, pkg)
	}
	cmd := exec.CommandContext(ctx, goBin(), args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build static binaries: %w\n%s", err, out)
	}
	return nil
}

func goBin() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// Write puts the binaries from binDir into an image tagged
// Repository:version and writes it as a tarball at out. It returns the tag.
func Write(out, binDir, version string) (name.Tag, error) {
	ref, err := name.NewTag(Repository + ":" + version)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image tag: %w", err)
	}
	layer, err := rootfsLayer(binDir)
	if err != nil {
		return name.Tag{}, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return name.Tag{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{Entrypoint}
	// Docker's default PATH: knftables finds nft (/usr/sbin) through it.
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "weft",
		"org.opencontainers.image.description": "Weft: eBPF/XDP VXLAN pod network, flannel-compatible",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.source":      "https://github.com/weftnet/weft",
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return name.Tag{}, fmt.Errorf("image config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return name.Tag{}, err
	}
	// Write next to out and rename, so a failed run never leaves a
	// truncated archive that looks like an image.
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return name.Tag{}, fmt.Errorf("write image %s: %w", out, err)
	}
	return ref, os.Rename(tmp, out)
}

// rootfsLayer is the one layer: the static binaries 0755 root, the host
// tools and their libraries, /tmp.
func rootfsLayer(binDir string) (v1.Layer, error) {
	files := map[string]string{} // path in the image -> file on this machine
	for _, n := range sortedNames() {
		files[BinDir+"/"+n] = filepath.Join(binDir, n)
	}
	for _, tool := range HostTools {
		if err := addHostTool(files, tool); err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var mkdirs func(p string, mode int64) error
	mkdirs = func(p string, mode int64) error {
		if p == "." || p == "/" || dirs[p] {
			return nil
		}
		if err := mkdirs(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		dirs[p] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
	}
	if err := mkdirs("tmp", 0o1777); err != nil {
		return nil, err
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		b, err := os.ReadFile(files[p]) // follows symlinks: the image gets the file itself
		if err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
		name := strings.TrimPrefix(p, "/")
		if err := mkdirs(filepath.Dir(name), 0o755); err != nil {
			return nil, err
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

// addHostTool adds the program at path on this machine, and every shared
// library ldd says it loads (at the same paths), to files.
func addHostTool(files map[string]string, path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("image needs %s from the build machine (Debian: apt-get install nftables, or make image): %w", path, err)
	}
	files[path] = path
	out, err := exec.Command("ldd", path).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", path, err)
	}
	libs, err := parseLdd(string(out))
	if err != nil {
		return fmt.Errorf("ldd %s: %w", path, err)
	}
	for _, l := range libs {
		files[l] = l
	}
	return nil
}

// parseLdd returns the absolute library paths in ldd's output:
// "libx.so.1 => /lib/.../libx.so.1 (0x...)" and the loader's
// "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
func parseLdd(out string) ([]string, error) {
	var libs []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 2 && f[1] == "=>":
			return nil, fmt.Errorf("library not found: %s", strings.TrimSpace(line))
		case strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

func sortedNames() []string {
	ns := make([]string, 0, len(Commands))
	for n := range Commands {
		ns = append(ns, n)
	}
	slices.Sort(ns) // a stable layer order
	return ns
}
