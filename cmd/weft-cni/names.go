package main

import (
	"crypto/sha256"
	"encoding/hex"
)

// hostVethPrefix starts every host-side veth weft-cni makes, so an operator
// (and weftctl endpoints) can tell them apart from other plugins' vethN.
const hostVethPrefix = "weft"

// hostVethName is the host side's name for one attachment: "weft" plus 11
// hex digits of a hash of (container ID, interface name), 15 bytes, the
// kernel's limit. Deterministic, so DEL finds the veth even when the record
// is lost and the pod's netns is gone; the interface name is in the hash
// because one container may have several attachments (Multus).
func hostVethName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return hostVethPrefix + hex.EncodeToString(sum[:])[:15-len(hostVethPrefix)]
}
