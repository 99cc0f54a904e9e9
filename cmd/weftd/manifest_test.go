package main

import (
	"bytes"
	"net"
	"path"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/control/flannel"
	"github.com/weftnet/weft/deploy"
)

func must[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	v, err := f()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestManifestWeftdArgs runs the DaemonSet's weftd command line and
// environment, as the kubelet would give them (downward API values filled
// in), through weftd's own flag parser, and checks that the files weftd then
// uses are where the pod mounts them.
func TestManifestWeftdArgs(t *testing.T) {
	ds, cm, c := must(t, deploy.DaemonSet), must(t, deploy.ConfigMap), must(t, deploy.Weftd)
	fieldValues := map[string]string{"metadata.name": "kube-weft-ds-x7k2p", "metadata.namespace": "kube-weft", "spec.nodeName": "node1"}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			v, ok := fieldValues[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("env %s: unexpected fieldRef %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom != nil:
			t.Fatalf("env %s: only fieldRef is expected", e.Name)
		default:
			env[e.Name] = e.Value
		}
	}
	kept := append(slicesClone(c.Command[1:]), c.Args...)
	var stderr bytes.Buffer
	cfg, err := parseFlags(kept, func(k string) string { return env[k] }, &stderr)
	if err != nil {
		t.Fatalf("weftd %v with env %v: %v\n%s", kept, env, err, stderr.String())
	}
	if !cfg.KubeSubnetMgr || cfg.Kube.NodeName != "node1" {
		t.Fatalf("the manifest does not run weftd in kube mode on its node: %+v", cfg.Kube)
	}

	// The files weftd reads and writes are on the pod's mounts.
	mounts := map[string]string{} // mount path -> volume
	for _, m := range c.VolumeMounts {
		mounts[strings.TrimSuffix(m.MountPath, "/")] = m.Name
	}
	for what, p := range map[string]string{"--net-config-path": cfg.Kube.NetConfPath, "--subnet-file": cfg.SubnetFile, "--pin-path": cfg.PinPath} {
		if _, ok := mounts[path.Dir(p)]; !ok {
			t.Errorf("%s %s is not on a volume mount (mounts %v)", what, p, mounts)
		}
	}
	if mounts[path.Dir(cfg.Kube.NetConfPath)] != "" {
		var vol *corev1.Volume
		for i := range ds.Spec.Template.Spec.Volumes {
			if v := &ds.Spec.Template.Spec.Volumes[i]; v.Name == mounts[path.Dir(cfg.Kube.NetConfPath)] {
				vol = v
			}
		}
		if vol == nil || vol.ConfigMap == nil || vol.ConfigMap.Name != cm.Name {
			t.Errorf("%s is not mounted from ConfigMap %s", cfg.Kube.NetConfPath, cm.Name)
		}
		key := path.Base(cfg.Kube.NetConfPath)
		if _, err := flannel.ParseConfig([]byte(cm.Data[key])); err != nil {
			t.Errorf("ConfigMap %s key %s: %v", cm.Name, key, err)
		}
	}

	// The probes ask the address weftd serves on with these flags.
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("weftd container probe %+v, want httpGet", p)
		}
		if got := net.JoinHostPort(p.HTTPGet.Host, p.HTTPGet.Port.String()); got != cfg.MetricsAddr {
			t.Errorf("probe %s asks %s, weftd serves on --metrics-addr %s", p.HTTPGet.Path, got, cfg.MetricsAddr)
		}
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }
