package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"

	"github.com/weftnet/weft/loader"
	"github.com/weftnet/weft/maps"
)

// commonFlags are the flags every subcommand takes.
type commonFlags struct {
	pinPath string
	output  string
}

func newFlagSet(e *env, name, summary string) (*pflag.FlagSet, *commonFlags) {
	fs := pflag.NewFlagSet("weftctl "+name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	cf := &commonFlags{}
	fs.StringVar(&cf.pinPath, "pin-path", loader.DefaultPinPath, "directory the node's maps are pinned under")
	fs.StringVarP(&cf.output, "output", "o", "table", "output format: table or json")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: weftctl %s [flags]\n\n%s\n\nFlags:\n%s", name, summary, fs.FlagUsages())
	}
	return fs, cf
}

// parse parses args and validates the common flags.
func parse(fs *pflag.FlagSet, cf *commonFlags, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %v", errUsage, fs.Args())
	}
	if cf.output != "table" && cf.output != "json" {
		return fmt.Errorf("%w: -o %q: want table or json", errUsage, cf.output)
	}
	return nil
}

// setup parses a subcommand's flags (extra adds its own) and opens the
// pinned maps; the caller closes them.
func setup(e *env, name, summary string, args []string, extra func(*pflag.FlagSet)) (*maps.Set, *commonFlags, error) {
	fs, cf := newFlagSet(e, name, summary)
	if extra != nil {
		extra(fs)
	}
	if err := parse(fs, cf, args); err != nil {
		return nil, nil, err
	}
	s, err := openMaps(cf)
	if err != nil {
		return nil, nil, err
	}
	return s, cf, nil
}

func openMaps(cf *commonFlags) (*maps.Set, error) {
	s, err := maps.OpenPinned(cf.pinPath)
	if errors.Is(err, maps.ErrNotPinned) {
		return nil, fmt.Errorf("no Weft data plane pinned at %s (is this node set up? see --pin-path): %w", cf.pinPath, err)
	}
	return s, err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer, header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	return tw
}

func row(tw *tabwriter.Writer, cols ...any) {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = fmt.Sprint(c)
	}
	fmt.Fprintln(tw, strings.Join(s, "\t"))
}

// tunnelRow is a tunnel and the traffic exchanged with its remote node.
// Fields are spelled out (not an embedded maps.Tunnel, whose MarshalJSON
// would swallow the traffic columns); names match maps.Tunnel's JSON.
type tunnelRow struct {
	Subnet    netip.Prefix `json:"subnet"`
	Remote    netip.Addr   `json:"remote"`
	VtepMAC   string       `json:"vtep_mac"`
	VNI       uint32       `json:"vni"`
	Mode      maps.Mode    `json:"mode"`
	TxPackets uint64       `json:"tx_packets"`
	TxBytes   uint64       `json:"tx_bytes"`
	RxPackets uint64       `json:"rx_packets"`
	RxBytes   uint64       `json:"rx_bytes"`
}

func runTunnels(e *env, args []string) error {
	s, cf, err := setup(e, "tunnels", "List remote pod subnets and the node each is reached through.", args, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	tunnels, err := s.Tunnels.All()
	if err != nil {
		return err
	}
	peers, err := s.PeerStats.All()
	if err != nil {
		return err
	}
	byRemote := map[netip.Addr]maps.PeerStats{}
	for _, p := range peers {
		byRemote[p.Remote] = p
	}
	sort.Slice(tunnels, func(i, j int) bool { return tunnels[i].Subnet.Addr().Less(tunnels[j].Subnet.Addr()) })
	rows := make([]tunnelRow, 0, len(tunnels))
	for _, t := range tunnels {
		p := byRemote[t.Remote]
		rows = append(rows, tunnelRow{Subnet: t.Subnet, Remote: t.Remote, VtepMAC: t.VtepMAC.String(), VNI: t.VNI, Mode: t.Mode,
			TxPackets: p.TxPackets, TxBytes: p.TxBytes, RxPackets: p.RxPackets, RxBytes: p.RxBytes})
	}
	if cf.output == "json" {
		return writeJSON(e.stdout, rows)
	}
	tw := table(e.stdout, "SUBNET", "REMOTE", "VTEP-MAC", "VNI", "MODE", "TX-PKTS", "TX-BYTES", "RX-PKTS", "RX-BYTES")
	for _, r := range rows {
		row(tw, r.Subnet, r.Remote, r.VtepMAC, r.VNI, r.Mode, r.TxPackets, r.TxBytes, r.RxPackets, r.RxBytes)
	}
	return tw.Flush()
}

// endpointRow adds the host-side interface name, resolved in the caller's
// network namespace (run weftctl in the node's namespace).
type endpointRow struct {
	IP        netip.Addr `json:"ip"`
	Interface string     `json:"interface"`
	IfIndex   uint32     `json:"ifindex"`
	MAC       string     `json:"mac"`
	HostMAC   string     `json:"host_mac"`
}

func runEndpoints(e *env, args []string) error {
	s, cf, err := setup(e, "endpoints", "List the local pods the data plane delivers to.", args, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	eps, err := s.Endpoints.All()
	if err != nil {
		return err
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].IP.Less(eps[j].IP) })
	rows := make([]endpointRow, 0, len(eps))
	for _, ep := range eps {
		name := "?"
		if ifi, err := net.InterfaceByIndex(int(ep.IfIndex)); err == nil {
			name = ifi.Name
		}
		rows = append(rows, endpointRow{IP: ep.IP, Interface: name, IfIndex: ep.IfIndex, MAC: ep.MAC.String(), HostMAC: ep.HostMAC.String()})
	}
	if cf.output == "json" {
		return writeJSON(e.stdout, rows)
	}
	tw := table(e.stdout, "IP", "INTERFACE", "IFINDEX", "MAC", "GATEWAY-MAC")
	for _, r := range rows {
		row(tw, r.IP, r.Interface, r.IfIndex, r.MAC, r.HostMAC)
	}
	return tw.Flush()
}

func runStats(e *env, args []string) error {
	var all bool
	s, cf, err := setup(e, "stats", "Show why packets went where they went (summed across CPUs), and traffic per remote node.", args, func(fs *pflag.FlagSet) { fs.BoolVar(&all, "all", false, "include counters that are zero") })
	if err != nil {
		return err
	}
	defer s.Close()
	counters, err := s.Stats.All()
	if err != nil {
		return err
	}
	peers, err := s.PeerStats.All()
	if err != nil {
		return err
	}
	sort.Slice(peers, func(i, j int) bool { return peers[i].Remote.Less(peers[j].Remote) })
	// Peers past the last counter slot share one (maps/slots.go).
	var other *maps.PeerStats
	if o, err := s.PeerStats.Overflow(); err != nil {
		return err
	} else if o.TxPackets+o.RxPackets != 0 {
		other = &o
	}
	if !all {
		shown := counters[:0]
		for _, c := range counters {
			if c.Packets != 0 {
				shown = append(shown, c)
			}
		}
		counters = shown
	}
	if cf.output == "json" {
		return writeJSON(e.stdout, struct {
			Counters []maps.Counter   `json:"counters"`
			Peers    []maps.PeerStats `json:"peers"`
			Other    *maps.PeerStats  `json:"peers_without_slot,omitempty"`
		}{counters, peers, other})
	}
	tw := table(e.stdout, "COUNTER", "PACKETS", "BYTES", "VERDICT")
	for _, c := range counters {
		verdict := "forward"
		switch {
		case c.IsDrop():
			verdict = "drop"
		case strings.HasPrefix(c.Name, "pass_"):
			verdict = "kernel"
		}
		row(tw, c.Name, c.Packets, c.Bytes, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(peers) > 0 || other != nil {
		fmt.Fprintln(e.stdout)
		tw = table(e.stdout, "PEER", "TX-PKTS", "TX-BYTES", "RX-PKTS", "RX-BYTES")
		for _, p := range peers {
			row(tw, p.Remote, p.TxPackets, p.TxBytes, p.RxPackets, p.RxBytes)
		}
		if other != nil {
			row(tw, "(peers without a counter slot)", other.TxPackets, other.TxBytes, other.RxPackets, other.RxBytes)
		}
		return tw.Flush()
	}
	return nil
}

// nodeStatus is what `weftctl status` reports.
type nodeStatus struct {
	PinPath    string       `json:"pin_path"`
	Configured bool         `json:"configured"`
	Config     *maps.Config `json:"config,omitempty"`
	Links      []string     `json:"links"`
	Tunnels    int          `json:"tunnels"`
	Endpoints  int          `json:"endpoints"`
	Drops      uint64       `json:"drops"`
	Decap      string       `json:"decap"`       // xdp, tc, or none (no underlay program attached)
	WeftdAlive bool         `json:"weftd_alive"` // a weftd holds this pin path now
	WeftdPID   int          `json:"weftd_pid,omitempty"`
}

// decapMode reads the receive path from the pinned links: XDP decap keeps
// the tc program too, so XDP wins.
func decapMode(links []string) string {
	mode := "none"
	for _, l := range links {
		switch l {
		case loader.LinkUnderlayXDP:
			return string(loader.DecapXDP)
		case loader.LinkUnderlayTC:
			mode = string(loader.DecapTC)
		}
	}
	return mode
}

func runStatus(e *env, args []string) error {
	s, cf, err := setup(e, "status", "Show this node's data-plane config, attached programs and table sizes.", args, nil)
	if err != nil {
		return err
	}
	defer s.Close()
	st := nodeStatus{PinPath: cf.pinPath}
	if c, err := s.Config.Get(); err == nil {
		st.Config, st.Configured = &c, true
	} else if !errors.Is(err, maps.ErrNotConfigured) {
		return err
	}
	if st.Links, err = loader.Links(cf.pinPath); err != nil {
		return err
	}
	tunnels, err := s.Tunnels.All()
	if err != nil {
		return err
	}
	eps, err := s.Endpoints.All()
	if err != nil {
		return err
	}
	counters, err := s.Stats.All()
	if err != nil {
		return err
	}
	st.Tunnels, st.Endpoints = len(tunnels), len(eps)
	for _, c := range counters {
		if c.IsDrop() {
			st.Drops += c.Packets
		}
	}
	if st.Links == nil {
		st.Links = []string{}
	}
	st.Decap = decapMode(st.Links)
	if st.WeftdPID, st.WeftdAlive, err = loader.DaemonAlive(cf.pinPath); err != nil {
		return err
	}
	if cf.output == "json" {
		return writeJSON(e.stdout, st)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	kv := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	kv("Pin path", st.PinPath)
	if st.Config == nil {
		kv("Config", "not set (programs pass everything to the kernel)")
	} else {
		c := st.Config
		kv("Underlay", fmt.Sprintf("%s (ifindex %d, %s, MTU %d)", addrs(c.UnderlayIP, c.UnderlayIP6), c.UnderlayIfIndex, c.UnderlayMAC, c.MTU))
		kv("Host device", fmt.Sprintf("ifindex %d, %s", c.HostIfIndex, addrs(c.HostIP, c.HostIP6)))
		kv("VTEP", fmt.Sprintf("%s, VNI %d, UDP port %d, source ports [%d, %d)", c.VtepMAC, c.VNI, c.Port, c.SrcPortMin, c.SrcPortMax))
		kv("Pin layout", c.Layout)
	}
	if st.WeftdAlive {
		kv("weftd", fmt.Sprintf("running (pid %d)", st.WeftdPID))
	} else {
		kv("weftd", "not running (the pinned data plane keeps forwarding; nothing follows the cluster)")
	}
	kv("Decap", st.Decap)
	kv("Attached", fmt.Sprintf("%d links: %s", len(st.Links), strings.Join(st.Links, " ")))
	kv("Tunnels", st.Tunnels)
	kv("Endpoints", st.Endpoints)
	kv("Drops", st.Drops)
	return tw.Flush()
}

// addrs prints a node's IPv4 and IPv6 address of one kind, leaving out a
// family it has none of ("none" when neither).
func addrs(v4, v6 netip.Addr) string {
	var out []string
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			out = append(out, a.String())
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
