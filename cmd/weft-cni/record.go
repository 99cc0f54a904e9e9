package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// record is what ADD made for one attachment, kept in
// <dataDir>/attachments/<host veth>.json. DEL relies on it when the pod's
// netns is gone; it is written as soon as the veth exists, so a plugin
// killed half-way still leaves DEL enough to clean up.
type record struct {
	Network     string         `json:"network"` // the CNI network name: GC only touches its own
	ContainerID string         `json:"containerID"`
	IfName      string         `json:"ifName"`
	Netns       string         `json:"netns"`
	HostIfName  string         `json:"hostIfName"`
	HostIfIndex int            `json:"hostIfIndex"`
	HostMAC     string         `json:"hostMAC"`
	PodMAC      string         `json:"podMAC"`
	IPs         []netip.Prefix `json:"ips"` // with the subnet length, as on the pod's interface
	PinPath     string         `json:"pinPath"`
}

func recordDir(dataDir string) string { return filepath.Join(dataDir, "attachments") }

func recordPath(dataDir, hostIf string) string {
	return filepath.Join(recordDir(dataDir), hostIf+".json")
}

// writeRecord replaces the record atomically (temp file, rename).
func writeRecord(dataDir string, r *record) error {
	dir := recordDir(dataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), recordPath(dataDir, r.HostIfName))
	}
	if err != nil {
		return fmt.Errorf("write record %s: %w", recordPath(dataDir, r.HostIfName), err)
	}
	return nil
}

// readRecord returns the record for hostIf, or nil if there is none.
func readRecord(dataDir, hostIf string) (*record, error) {
	b, err := os.ReadFile(recordPath(dataDir, hostIf))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	r := &record{}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("parse record %s: %w", recordPath(dataDir, hostIf), err)
	}
	return r, nil
}

func removeRecord(dataDir, hostIf string) error {
	if err := os.Remove(recordPath(dataDir, hostIf)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	return nil
}

// listRecords returns every record in dataDir (GC). Unreadable ones are
// reported, not skipped silently.
func listRecords(dataDir string) ([]*record, error) {
	ents, err := os.ReadDir(recordDir(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	var out []*record
	var errs []error
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		r, err := readRecord(dataDir, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r != nil {
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}
