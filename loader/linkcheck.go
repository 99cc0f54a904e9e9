package loader

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf/link"
)

// CheckLinks reports the first of the named pinned links that is missing
// or no longer attached to a device (its device was deleted, or someone
// detached it): the data plane has a hole there. weftd's health check
// calls it with the node's links as SetupNode left them.
func CheckLinks(pinPath string, names []string) error {
	for _, name := range names {
		pin := filepath.Join(pinPath, "links", name)
		l, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			return fmt.Errorf("program link %s: %w", name, err)
		}
		idx := linkIfindex(l)
		l.Close()
		if idx == 0 {
			return fmt.Errorf("program link %s is no longer attached to a device", name)
		}
	}
	return nil
}

// NodeLinks lists the pinned links that belong to the node itself (the
// underlay and host device programs), leaving out per-pod links, which
// come and go with pods.
func NodeLinks(pinPath string) ([]string, error) {
	names, err := Links(pinPath)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if len(n) < len(linkPodPrefix) || n[:len(linkPodPrefix)] != linkPodPrefix {
			out = append(out, n)
		}
	}
	return out, nil
}
