package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"sigs.k8s.io/yaml"
)

// TestImage builds the image the way `make image` does, opens the archive
// again with go-containerregistry (as `docker load` would read it), checks
// its config and files, and runs the entrypoint chrooted into the rootfs.
func TestImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestImage needs root (chroot into the extracted rootfs); run the tests as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins := t.TempDir()
	t0 := time.Now()
	if err := BuildBinaries(ctx, "../..", bins); err != nil {
		t.Fatal(err)
	}
	t.Logf("static binaries built in %v", time.Since(t0))
	out := filepath.Join(t.TempDir(), "weft-image.tar")
	ref, err := Write(out, bins, Version)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(out)
	t.Logf("%s: %d bytes", ref, fi.Size())

	tag, err := name.NewTag(Repository + ":" + Version)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatalf("open the archive by its tag: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != "/usr/local/bin/weftd" {
		t.Errorf("entrypoint %q", got)
	}
	if len(cf.Config.Env) != 1 || !strings.HasPrefix(cf.Config.Env[0], "PATH=") {
		t.Fatalf("env %q", cf.Config.Env)
	}
	path := strings.Split(strings.TrimPrefix(cf.Config.Env[0], "PATH="), ":")
	for _, p := range append([]string{Entrypoint}, HostTools...) {
		if !slices.Contains(path, filepath.Dir(p)) {
			t.Errorf("PATH %q lacks %s", path, filepath.Dir(p))
		}
	}
	if cf.OS != "linux" || cf.Config.Labels["org.opencontainers.image.version"] != Version {
		t.Errorf("os %q, labels %v", cf.OS, cf.Config.Labels)
	}

	// The rootfs as a runtime would unpack it.
	root := t.TempDir()
	extract(t, img, root)
	for n := range Commands {
		p := filepath.Join(root, "usr/local/bin", n)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v", n, fi.Mode())
		}
		f, err := elf.Open(p)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP { // Go binaries must not need the loader
				t.Errorf("%s is dynamically linked", n)
			}
		}
		f.Close()
	}
	for _, tool := range HostTools {
		if fi, err := os.Stat(filepath.Join(root, tool)); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v", tool, fi, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("/tmp: %v %v", fi, err)
	}

	// The entrypoint runs in the image's rootfs alone.
	for _, c := range []struct {
		bin, arg, want string
	}{
		{Entrypoint, "--help", "Usage: weftd"},
		{"/usr/local/bin/weftctl", "--help", "tunnels"},
		{"/usr/local/bin/weft-install-cni", "--help", "--conf-dest"},
	} {
		cmd := exec.CommandContext(ctx, c.bin, c.arg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		cmd.Env = cf.Config.Env
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("chroot %s %s %s: %v\n%s", root, c.bin, c.arg, err, b)
			continue
		}
		if !bytes.Contains(b, []byte(c.want)) {
			t.Errorf("%s %s: output lacks %q:\n%s", c.bin, c.arg, c.want, b)
		}
	}
}

// TestImageNft: the nft weftd --ip-masq runs works from the image's own
// libraries. It runs chrooted into the rootfs and in a new, empty network
// namespace of its own, so the machine's rule set is never touched.
func TestImageNft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestImageNft needs root (chroot, a network namespace); run the tests as root")
	}
	bins := t.TempDir()
	for n := range Commands { // the Go binaries do not matter here
		if err := os.WriteFile(filepath.Join(bins, n), []byte("x"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "img.tar")
	if _, err := Write(out, bins, "test"); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag(Repository + ":test")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	extract(t, img, root)
	cmd := exec.Command("/usr/sbin/nft", "-f", "-")
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Cloneflags: syscall.CLONE_NEWNET}
	cmd.Dir = "/"
	cmd.Stdin = strings.NewReader("add table ip weft_image_test\nlist tables\n")
	b, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(b, []byte("table ip weft_image_test")) {
		t.Fatalf("nft in the image: %v\n%s", err, b)
	}
}

func TestParseLdd(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n"
	got, err := parseLdd(out)
	want := []string{"/lib/x86_64-linux-gnu/libnftables.so.1", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("parseLdd = %q, %v; want %q", got, err, want)
	}
	if _, err := parseLdd("\tlibgone.so.1 => not found\n"); err == nil {
		t.Fatal("a missing library was not reported")
	}
}

// extract unpacks the image's flattened filesystem into dir, as a
// runtime would.
func extract(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		mode := h.FileInfo().Mode()
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		default:
			t.Fatalf("unexpected entry %s (type %c)", h.Name, h.Typeflag)
		}
		if err == nil {
			err = os.Chmod(p, mode&(os.ModePerm|os.ModeSticky))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestManifestReferencesImage: the DaemonSet runs the image this builds.
func TestManifestReferencesImage(t *testing.T) {
	b, err := os.ReadFile("../kube-weft.yml")
	if err != nil {
		t.Fatal(err)
	}
	want := Repository + ":" + Version
	n := 0
	for _, doc := range strings.Split(string(b), "\n---") {
		var o struct {
			Kind string
			Spec struct {
				Template struct {
					Spec struct {
						Containers, InitContainers []struct{ Image string }
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		if o.Kind != "DaemonSet" {
			continue
		}
		for _, c := range append(o.Spec.Template.Spec.Containers, o.Spec.Template.Spec.InitContainers...) {
			n++
			if c.Image != want {
				t.Errorf("manifest image %q, want %q", c.Image, want)
			}
		}
	}
	if n == 0 {
		t.Fatal("no DaemonSet containers in the manifest")
	}
}
