package test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"time"

	"github.com/weftnet/weft/test/topo"
)

// iperf3 runs a 3-second TCP test from pod src to pod dst and returns the
// receiver's Gbit/s.
func iperf3(c *staticCluster, src, dst *topo.Pod) (float64, error) {
	server, err := dst.Start("iperf3", "-s", "-1", "-B", dst.IP.String())
	if err != nil {
		return 0, fmt.Errorf("start iperf3 server: %w", err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var out []byte
	for attempt := 0; attempt < 20; attempt++ { // the server needs a moment to listen
		time.Sleep(100 * time.Millisecond)
		out, err = exec.Command("nsenter", "--net="+src.NSPath, "--", "iperf3", "-c", dst.IP.String(), "-t", "3", "-J").Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %w: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("parse iperf3 output: %w", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

func sortStrings(s []string) []string {
	sort.Strings(s)
	return s
}
