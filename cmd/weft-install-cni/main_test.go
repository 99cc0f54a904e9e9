package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestInstall(t *testing.T) {
	d := t.TempDir()
	bin := filepath.Join(d, "src", "weft-cni")
	conf := filepath.Join(d, "src", "cni-conf.json")
	os.MkdirAll(filepath.Dir(bin), 0o755)
	os.WriteFile(bin, []byte("#!binary"), 0o700)
	want, err := os.ReadFile("../weft-cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(conf, want, 0o600)
	binDir := filepath.Join(d, "opt", "cni", "bin")
	dest := filepath.Join(d, "etc", "cni", "net.d", "10-weft.conflist")
	args := []string{"--cni-bin-src", bin, "--cni-bin-dir", binDir, "--conf-src", conf, "--conf-dest", dest}

	for i := 0; i < 2; i++ { // a restarted init container installs again
		var out bytes.Buffer
		if err := run(args, &out, &out); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	fi, err := os.Stat(filepath.Join(binDir, "weft-cni"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("weft-cni: %v %v", fi, err)
	}
	got, _ := os.ReadFile(dest)
	if !bytes.Equal(got, want) {
		t.Fatalf("conflist = %q", got)
	}
	if fi, _ := os.Stat(dest); fi.Mode().Perm() != 0o644 {
		t.Fatalf("conflist mode %v", fi.Mode())
	}
	ents, _ := os.ReadDir(filepath.Dir(dest))
	if len(ents) != 1 {
		t.Fatalf("leftovers in the conf dir: %v", ents)
	}
}

func TestBadConflist(t *testing.T) {
	for name, c := range map[string]string{
		"not json":   "{",
		"no plugins": `{"cniVersion":"1.0.0","name":"weft","plugins":[]}`,
		"no type":    `{"cniVersion":"1.0.0","name":"weft","plugins":[{}]}`,
		"no name":    `{"cniVersion":"1.0.0","plugins":[{"type":"weft-cni"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			conf := filepath.Join(d, "c.json")
			bin := filepath.Join(d, "weft-cni")
			os.WriteFile(conf, []byte(c), 0o644)
			os.WriteFile(bin, []byte("x"), 0o755)
			dest := filepath.Join(d, "out", "10-weft.conflist")
			var out bytes.Buffer
			err := run([]string{"--cni-bin-src", bin, "--cni-bin-dir", filepath.Join(d, "bin"), "--conf-src", conf, "--conf-dest", dest}, &out, &out)
			if err == nil || !strings.Contains(err.Error(), "conflist") {
				t.Fatalf("err = %v", err)
			}
			// Nothing installed: a bad ConfigMap leaves the node as it was.
			if _, err := os.Stat(filepath.Join(d, "bin", "weft-cni")); err == nil {
				t.Fatal("weft-cni installed despite a bad conflist")
			}
		})
	}
}

func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-h"}, &out, &out); !errors.Is(err, pflag.ErrHelp) || !strings.Contains(out.String(), "--conf-dest") {
		t.Fatalf("err = %v, out = %s", err, out.String())
	}
}
