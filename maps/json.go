package maps

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
)

// The map types carry net.HardwareAddr, which encoding/json would print as
// base64. These methods print MACs the way people and etcd write them
// ("0e:77:00:00:00:02"), so `weftctl -o json` can be compared with leases.

type tunnelJSON struct {
	Subnet  netip.Prefix `json:"subnet"`
	Remote  netip.Addr   `json:"remote"`
	VtepMAC string       `json:"vtep_mac"`
	VNI     uint32       `json:"vni"`
	Mode    Mode         `json:"mode"`
}

// MarshalJSON writes the VTEP MAC as text.
func (t Tunnel) MarshalJSON() ([]byte, error) {
	return json.Marshal(tunnelJSON{t.Subnet, t.Remote, t.VtepMAC.String(), t.VNI, t.Mode})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (t *Tunnel) UnmarshalJSON(b []byte) error {
	var j tunnelJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	mac, err := parseMAC(j.VtepMAC)
	if err != nil {
		return fmt.Errorf("tunnel %s: vtep_mac: %w", j.Subnet, err)
	}
	*t = Tunnel{Subnet: j.Subnet, Remote: j.Remote, VtepMAC: mac, VNI: j.VNI, Mode: j.Mode}
	return nil
}

type endpointJSON struct {
	IP      netip.Addr `json:"ip"`
	IfIndex uint32     `json:"ifindex"`
	MAC     string     `json:"mac"`
	HostMAC string     `json:"host_mac"`
}

// MarshalJSON writes MACs as text.
func (e Endpoint) MarshalJSON() ([]byte, error) {
	return json.Marshal(endpointJSON{e.IP, e.IfIndex, e.MAC.String(), e.HostMAC.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (e *Endpoint) UnmarshalJSON(b []byte) error {
	var j endpointJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	mac, err := parseMAC(j.MAC)
	if err != nil {
		return fmt.Errorf("endpoint %s: mac: %w", j.IP, err)
	}
	host, err := parseMAC(j.HostMAC)
	if err != nil {
		return fmt.Errorf("endpoint %s: host_mac: %w", j.IP, err)
	}
	*e = Endpoint{IP: j.IP, IfIndex: j.IfIndex, MAC: mac, HostMAC: host}
	return nil
}

// MarshalJSON writes MACs as text.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // same fields, no methods: no recursion
	return json.Marshal(struct {
		plain
		UnderlayMAC string `json:"underlay_mac"`
		VtepMAC     string `json:"vtep_mac"`
	}{plain(c), c.UnderlayMAC.String(), c.VtepMAC.String()})
}

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	return net.ParseMAC(s)
}
