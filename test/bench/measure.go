package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/test/topo"
)

// Metric names, as results.json spells them, in report order.
const (
	mTCP1    = "tcp_1_gbps"
	mTCP4    = "tcp_4_gbps"
	mUDP64   = "udp64_pps"
	mUDP1400 = "udp1400_gbps"
	mRRp50   = "rr_p50_us"
	mRRp99   = "rr_p99_us"
	mCPU     = "cpu_ns_per_pkt"
	// mTCPCPU is the CPU time the single-stream TCP test costs per GB
	// received: iperf3's own accounting of its sender and receiver
	// processes, which (with tick-based accounting) includes the softirq
	// work the kernel runs in their context, plus the ksoftirqd threads'
	// time over the test, where the rest of the data path runs. It
	// measures cost, not speed, and so moves far less than Gbit/s when
	// other work shares the CPUs (whose own softirq work in ksoftirqd it
	// then counts too: compare rounds, not absolute values, there).
	mTCPCPU = "tcp_cpu_s_per_gb"
)

var allMetrics = []string{mTCP1, mTCP4, mUDP64, mUDP1400, mRRp50, mRRp99, mCPU, mTCPCPU}

// lowerIsBetter marks the metrics where a smaller number wins.
func lowerIsBetter(m string) bool { return m == mRRp50 || m == mRRp99 || m == mCPU || m == mTCPCPU }

// units for the table.
var metricUnit = map[string]string{
	mTCP1: "Gbit/s", mTCP4: "Gbit/s", mUDP64: "pkt/s", mUDP1400: "Gbit/s",
	mRRp50: "us", mRRp99: "us", mCPU: "ns/pkt", mTCPCPU: "CPU-s/GB",
}

const (
	iperfPort    = 5201
	sockperfPort = 11111
	udpPort      = 9000
)

// CPU placement (--pin). On an idle 2-core machine, where the sender and
// the receiver land decides the result more than the data plane does
// (measured: iperf3 host-gw 5.5-5.7 Gbit/s unpinned, 7.2-7.7 pinned
// apart). With pinning the sender (and the whole forwarding path, which
// runs in its softirq context through veths) is on senderCPU, the receiving
// process on receiverCPU. On a machine shared with other work a pinned
// thread cannot escape a busy CPU (sockperf p99 went from ~40 us to
// 0.4-1.6 ms in some rounds), so it is off by default.
var (
	pinCPUs     = false
	senderCPU   = 0
	receiverCPU = 1
)

func pinned() bool { return pinCPUs && runtime.NumCPU() >= 2 }

// servers are the long-running receivers in the destination pod.
func startServers(dst *topo.Pod) error {
	iperf := []string{"-s", "-B", dst.IP.String(), "-p", strconv.Itoa(iperfPort)}
	sockperf := []string{"sockperf", "server", "-i", dst.IP.String(), "-p", strconv.Itoa(sockperfPort)}
	if pinned() {
		iperf = append(iperf, "-A", strconv.Itoa(receiverCPU))
		sockperf = append([]string{"-c", strconv.Itoa(receiverCPU)}, sockperf...)
		if _, err := dst.Start("taskset", sockperf...); err != nil {
			return err
		}
	} else if _, err := dst.Start(sockperf[0], sockperf[1:]...); err != nil {
		return err
	}
	if _, err := dst.Start("iperf3", iperf...); err != nil {
		return err
	}
	return nil
}

// pinThread locks the calling goroutine to its OS thread and that thread
// to cpu; the returned func restores the thread's affinity and unlocks it.
// The thread must survive: a goroutine exiting while locked makes the
// runtime kill its thread, and with it (Pdeathsig) any server the lab
// happened to start from that thread.
func pinThread(cpu int) (restore func()) {
	if !pinned() {
		return func() {}
	}
	runtime.LockOSThread()
	var orig, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	return func() {
		if unix.SchedSetaffinity(0, &orig) == nil {
			runtime.UnlockOSThread()
		}
	}
}

// tcpResult is one iperf3 run.
type tcpResult struct {
	gbps      float64 // receiver's rate
	cpuSPerGB float64 // sender + receiver process CPU seconds per GB received
}

// iperf3TCP runs an iperf3 TCP test with streams parallel streams.
func iperf3TCP(ctx context.Context, src, dst *topo.Pod, streams int, d time.Duration) (tcpResult, error) {
	secs := strconv.Itoa(int(math.Max(1, math.Round(d.Seconds()))))
	args := []string{"-c", dst.IP.String(), "-p", strconv.Itoa(iperfPort), "-t", secs, "-J", "-P", strconv.Itoa(streams)}
	if pinned() {
		args = append(args, "-A", fmt.Sprintf("%d,%d", senderCPU, receiverCPU))
	}
	var out []byte
	var err error
	var softirqd time.Duration // ksoftirqd's time over the successful attempt
	// The server may still be starting: retry refused connections briefly.
	for attempt := 0; attempt < 30; attempt++ {
		k0 := ksoftirqdTime()
		out, err = src.Exec(ctx, "iperf3", args...)
		softirqd = ksoftirqdTime() - k0
		if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "unable to connect") && !strings.Contains(string(out), "busy") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return tcpResult{}, fmt.Errorf("iperf3: %w", err)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         float64 `json:"bytes"`
				Seconds       float64 `json:"seconds"`
			} `json:"sum_received"`
			CPU struct {
				HostTotal   float64 `json:"host_total"`   // % of wall time, the client (sender)
				RemoteTotal float64 `json:"remote_total"` // the server (receiver)
			} `json:"cpu_utilization_percent"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return tcpResult{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if res.Error != "" {
		return tcpResult{}, fmt.Errorf("iperf3: %s", res.Error)
	}
	r := tcpResult{gbps: res.End.SumReceived.BitsPerSecond / 1e9}
	if gb := res.End.SumReceived.Bytes / 1e9; gb > 0 {
		cpu := (res.End.CPU.HostTotal + res.End.CPU.RemoteTotal) / 100 * res.End.SumReceived.Seconds
		r.cpuSPerGB = (cpu + softirqd.Seconds()) / gb
	}
	return r, nil
}

// ksoftirqdTime is the CPU time (user + system) of every ksoftirqd thread.
func ksoftirqdTime() time.Duration {
	dirs, _ := os.ReadDir("/proc")
	var ticks uint64
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ... utime stime: fields 14 and 15, counted after the ")".
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.HasPrefix(s[strings.IndexByte(s, '(')+1:], "ksoftirqd/") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * time.Second / clockTick
}

var percentileRE = regexp.MustCompile(`percentile\s+([0-9.]+)\s*=\s*([0-9.]+)`)

// sockperfRR runs sockperf's UDP ping-pong and returns the p50 and p99
// latency in microseconds, as sockperf reports it (half the round trip).
func sockperfRR(ctx context.Context, src, dst *topo.Pod, d time.Duration) (p50, p99 float64, err error) {
	secs := strconv.Itoa(int(math.Max(1, math.Round(d.Seconds()))))
	var out []byte
	for attempt := 0; attempt < 20; attempt++ {
		args := []string{"sockperf", "ping-pong", "-i", dst.IP.String(), "-p", strconv.Itoa(sockperfPort), "-t", secs, "-m", "64"}
		if pinned() {
			args = append([]string{"taskset", "-c", strconv.Itoa(senderCPU)}, args...)
		}
		out, err = src.Exec(ctx, args[0], args[1:]...)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("sockperf: %w", err)
	}
	p50, p99 = math.NaN(), math.NaN()
	for _, m := range percentileRE.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "50.000":
			p50 = v
		case "99.000":
			p99 = v
		}
	}
	if math.IsNaN(p50) || math.IsNaN(p99) {
		return 0, 0, fmt.Errorf("sockperf: no p50/p99 in output: %s", out)
	}
	return p50, p99, nil
}

// cpuTimes is the aggregate "cpu" line of /proc/stat, in clock ticks.
type cpuTimes struct{ busy, total uint64 }

func readCPU() (cpuTimes, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[0] != "cpu" {
			continue
		}
		var v [8]uint64 // user nice system idle iowait irq softirq steal
		for i := range v {
			v[i], _ = strconv.ParseUint(fields[i+1], 10, 64)
		}
		busy := v[0] + v[1] + v[2] + v[5] + v[6] // steal is not our CPU
		return cpuTimes{busy: busy, total: busy + v[3] + v[4]}, nil
	}
	return cpuTimes{}, errors.New("/proc/stat: no cpu line")
}

// clockTick is USER_HZ, the unit of /proc/stat (100 on every Linux ABI we run on).
const clockTick = 100

type udpResult struct {
	pps, gbps    float64 // received datagrams/s, received payload Gbit/s
	cpuNsPerPkt  float64 // busy CPU (all CPUs) per received datagram
	sent, recvd  uint64  // in the measured window
	busyFraction float64 // of all CPUs during the window
}

// batcher is recvmmsg/sendmmsg on a UDP socket of either family
// (ipv4.Message and ipv6.Message are both socket.Message).
type batcher interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func batchConn(c *net.UDPConn) batcher {
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// udpNet is the UDP network of a's family.
func udpNet(a netip.Addr) string {
	if a.Is6() {
		return "udp6"
	}
	return "udp4"
}

// udpFlood sends size-byte datagrams from src to dst as fast as one sender
// goroutine can (sendmmsg, 64 per call) and counts what the receiver
// (recvmmsg) gets over d, after a short warm-up. Both sockets are created
// inside the pods' namespaces and used from ordinary goroutines.
func udpFlood(ctx context.Context, src, dst *topo.Pod, size int, d time.Duration) (udpResult, error) {
	var rconn, sconn *net.UDPConn
	err := dst.Do(func() error {
		var err error
		rconn, err = net.ListenUDP(udpNet(dst.IP), &net.UDPAddr{IP: dst.IP.AsSlice(), Port: udpPort})
		return err
	})
	if err != nil {
		return udpResult{}, fmt.Errorf("listen in %s: %w", dst.NS, err)
	}
	defer rconn.Close()
	setBuf(rconn, unix.SO_RCVBUFFORCE, 8<<20)
	err = src.Do(func() error {
		var err error
		sconn, err = net.DialUDP(udpNet(dst.IP), nil, &net.UDPAddr{IP: dst.IP.AsSlice(), Port: udpPort})
		return err
	})
	if err != nil {
		return udpResult{}, fmt.Errorf("dial in %s: %w", src.NS, err)
	}
	defer sconn.Close()

	const batch = 64
	var recvd, sent atomic.Uint64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(2)
	go func() { // receiver
		defer wg.Done()
		defer pinThread(receiverCPU)()
		pc := batchConn(rconn)
		msgs := make([]ipv4.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{make([]byte, 2048)}
		}
		for {
			n, err := pc.ReadBatch(msgs, 0)
			if err != nil {
				return // closed
			}
			recvd.Add(uint64(n))
		}
	}()
	go func() { // sender
		defer wg.Done()
		defer pinThread(senderCPU)()
		pc := batchConn(sconn)
		payload := make([]byte, size)
		msgs := make([]ipv4.Message, batch)
		for i := range msgs {
			msgs[i].Buffers = [][]byte{payload}
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := pc.WriteBatch(msgs, 0)
			if n > 0 {
				sent.Add(uint64(n))
			}
			if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.ECONNREFUSED) && !errors.Is(err, unix.EAGAIN) {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
	}()
	finish := func() {
		close(stop)
		sconn.SetWriteDeadline(time.Now())
		rconn.Close()
		wg.Wait()
	}

	select {
	case <-time.After(300 * time.Millisecond): // warm-up: caches, neighbour entries
	case <-ctx.Done():
		finish()
		return udpResult{}, ctx.Err()
	}
	c0, s0, cpu0, t0 := recvd.Load(), sent.Load(), mustCPU(), time.Now()
	select {
	case <-time.After(d):
	case <-ctx.Done():
		finish()
		return udpResult{}, ctx.Err()
	}
	c1, s1, cpu1, t1 := recvd.Load(), sent.Load(), mustCPU(), time.Now()
	finish()

	secs := t1.Sub(t0).Seconds()
	r := udpResult{sent: s1 - s0, recvd: c1 - c0}
	if r.recvd == 0 {
		return r, fmt.Errorf("no datagram received (%d sent)", r.sent)
	}
	r.pps = float64(r.recvd) / secs
	r.gbps = float64(r.recvd) * float64(size) * 8 / secs / 1e9
	busyNs := float64(cpu1.busy-cpu0.busy) * 1e9 / clockTick
	r.cpuNsPerPkt = busyNs / float64(r.recvd)
	if tot := cpu1.total - cpu0.total; tot > 0 {
		r.busyFraction = float64(cpu1.busy-cpu0.busy) / float64(tot)
	}
	return r, nil
}

func mustCPU() cpuTimes {
	c, _ := readCPU()
	return c
}

func setBuf(c *net.UDPConn, opt, size int) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size) })
}

// lookTools fails early when a tool the benchmark runs is missing.
func lookTools() error {
	var missing []string
	for _, t := range []string{"iperf3", "sockperf", "ethtool", "nsenter", "ping", "taskset"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (apt-get install %s)", strings.Join(missing, " "), strings.Join(missing, " "))
	}
	return nil
}
