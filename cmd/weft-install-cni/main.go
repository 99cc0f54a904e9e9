// Command weft-install-cni is the DaemonSet's init container
// (deploy/kube-weft.yml): it installs the weft-cni binary into the node's CNI
// bin directory and the conflist from the ConfigMap into the CNI config
// directory. The image is static and has no shell, so this replaces
// flannel's `cp` and install-conf. Each file is written to a temporary name
// in the target directory and renamed into place: the container runtime
// never reads a half-written conflist, and a weft-cni being executed while
// it is replaced keeps running from the old inode ("text file busy" cannot
// happen).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
)

type config struct {
	binSrc   string // the weft-cni binary to install
	binDir   string // the node's CNI bin directory
	confSrc  string // the conflist from the ConfigMap
	confDest string // where the runtime reads it
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "weft-install-cni:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := checkConflist(c.confSrc); err != nil {
		return err
	}
	dst := filepath.Join(c.binDir, "weft-cni")
	if err := install(c.binSrc, dst, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed %s\n", dst)
	if err := install(c.confSrc, c.confDest, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed %s\n", c.confDest)
	return nil
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := pflag.NewFlagSet("weft-install-cni", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.binSrc, "cni-bin-src", defaultBinSrc(), "the weft-cni binary to install")
	fs.StringVar(&c.binDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	fs.StringVar(&c.confSrc, "conf-src", "/etc/kube-flannel/cni-conf.json", "the CNI conflist to install (the ConfigMap's cni-conf.json)")
	fs.StringVar(&c.confDest, "conf-dest", "/etc/cni/net.d/10-weft.conflist", "where the container runtime reads the conflist")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: weft-install-cni [flags]\n\nInstalls weft-cni and its conflist on the node (the Weft DaemonSet's init container).\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return c, nil
}

// defaultBinSrc is weft-cni beside this executable (/usr/local/bin in the
// image).
func defaultBinSrc() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/bin/weft-cni"
	}
	return filepath.Join(filepath.Dir(exe), "weft-cni")
}

// checkConflist refuses a file the runtime would reject or ignore: not
// JSON, no name or cniVersion, or no plugin with a type. A bad ConfigMap
// must fail the init container loudly, not leave the node without a
// working CNI config.
func checkConflist(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read conflist: %w", err)
	}
	var l struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Plugins    []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("conflist %s: %w", path, err)
	}
	if l.CNIVersion == "" || l.Name == "" {
		return fmt.Errorf("conflist %s: cniVersion and name are required", path)
	}
	if len(l.Plugins) == 0 {
		return fmt.Errorf("conflist %s: no plugins", path)
	}
	for i, p := range l.Plugins {
		if p.Type == "" {
			return fmt.Errorf("conflist %s: plugin %d has no type", path, i)
		}
	}
	return nil
}

// install copies src to dst through a temporary file in dst's directory
// and a rename, with the given mode.
func install(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = io.Copy(tmp, in)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		return fmt.Errorf("install %s: %w", dst, err)
	}
	return nil
}
