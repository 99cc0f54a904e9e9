package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// result is one store at one node count: one object of scale.json. The
// first eight fields are issue 11's; the rest say where they come from.
type result struct {
	Store            string  `json:"store"`
	Nodes            int     `json:"nodes"`
	BulkRatio        float64 `json:"bulk_ratio_vs_netlink"` // flannel's netlink time / Weft's map writes, programming only
	ColdStartMS      float64 `json:"cold_start_ms"`         // weftd process start -> all entries in the map
	JoinP50MS        float64 `json:"join_p50_ms"`
	JoinP99MS        float64 `json:"join_p99_ms"`
	FlannelJoinP50MS float64 `json:"flannel_join_p50_ms"`
	RSSMB            float64 `json:"rss_mb"` // weftd VmRSS after the joins

	WeftProgramMS    float64 `json:"weft_program_ms"`
	FlannelProgramMS float64 `json:"flannel_program_ms"`
	FlannelListMS    float64 `json:"flannel_list_ms"` // the store list + decode, apart from programming
	JoinMaxMS        float64 `json:"join_max_ms"`
	FlannelJoinP99MS float64 `json:"flannel_join_p99_ms"`
	RSSHWMMB         float64 `json:"rss_hwm_mb"`
	RSSAnonMB        float64 `json:"rss_anon_mb"` // heap and stacks
	RSSFileMB        float64 `json:"rss_file_mb"` // the binary's pages mapped in
	Joins            int     `json:"joins"`
	Rounds           int     `json:"weft_cold_start_rounds"` // cold_start_ms and weft_program_ms are medians of these
	LoadAvg          float64 `json:"load_avg_1m"`            // the machine is shared: its load when the count started
}

func writeJSON(path string, rows []result) error {
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func printTable(w io.Writer, env machineEnv, rows []result) {
	fmt.Fprintf(w, "\nControl plane scale (%s, kernel %s)\n", env.machine, env.kernel)
	fmt.Fprintf(w, "%-6s %7s %12s %12s %9s %10s %10s %12s %8s %8s %9s %6s\n", "store", "nodes", "weft write", "netlink", "ratio",
		"cold start", "join p50", "join p99", "fl. p50", "RSS MB", "anon MB", "load")
	for _, r := range rows {
		fmt.Fprintf(w, "%-6s %7d %10.1fms %10.1fms %8.0fx %8.0fms %8.2fms %10.2fms %6.2fms %8.1f %9.1f %6.2f\n", r.Store, r.Nodes,
			r.WeftProgramMS, r.FlannelProgramMS, r.BulkRatio, r.ColdStartMS, r.JoinP50MS, r.JoinP99MS, r.FlannelJoinP50MS, r.RSSMB, r.RSSAnonMB, r.LoadAvg)
	}
}

var storeColor = []color.Color{
	color.RGBA{R: 0x00, G: 0x5a, B: 0xb5, A: 0xff},
	color.RGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0xff},
}

// flannelLine tells flannel's way apart per store: grey, solid for the
// first store, dotted for the second.
var flannelLine = []struct {
	color  color.Color
	dashes []vg.Length
}{
	{color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff}, nil},
	{color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}, []vg.Length{vg.Points(1.5), vg.Points(2.5)}},
}

// readJSON reads rows writeJSON wrote (for --replot).
func readJSON(path string) ([]result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rows []result
	if err := json.Unmarshal(b, &rows); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rows, nil
}

// writeChart draws join latency and weftd RSS against node count (log
// scale), per store, with flannel's join latency beside Weft's.
func writeChart(path string, env machineEnv, rows []result) error {
	var stores []string
	for _, r := range rows {
		if len(stores) == 0 || stores[len(stores)-1] != r.Store {
			stores = append(stores, r.Store)
		}
	}
	lat := newPlot(fmt.Sprintf("one join -> entry in the map (ms, log)\n%s, kernel %s", env.machine, env.kernel), "ms")
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	mem := newPlot("weftd RSS after the joins (MB)", "MB")
	for i, s := range stores {
		var p50, p99, fl, rss, anon plotter.XYs
		for _, r := range rows {
			if r.Store != s {
				continue
			}
			x := float64(r.Nodes)
			p50 = append(p50, plotter.XY{X: x, Y: max(r.JoinP50MS, 0.001)})
			p99 = append(p99, plotter.XY{X: x, Y: max(r.JoinP99MS, 0.001)})
			fl = append(fl, plotter.XY{X: x, Y: max(r.FlannelJoinP50MS, 0.001)})
			rss = append(rss, plotter.XY{X: x, Y: r.RSSMB})
			anon = append(anon, plotter.XY{X: x, Y: r.RSSAnonMB})
		}
		c := storeColor[i%len(storeColor)]
		if err := addLine(lat, "weft "+s+" p50", p50, c, nil); err != nil {
			return err
		}
		if err := addLine(lat, "weft "+s+" p99", p99, c, []vg.Length{vg.Points(4), vg.Points(3)}); err != nil {
			return err
		}
		fline := flannelLine[i%len(flannelLine)]
		if err := addLine(lat, "flannel way "+s+" p50", fl, fline.color, fline.dashes); err != nil {
			return err
		}
		if err := addLine(mem, "weftd "+s+" VmRSS", rss, c, nil); err != nil {
			return err
		}
		if err := addLine(mem, "weftd "+s+" anonymous (heap, stacks)", anon, c, []vg.Length{vg.Points(4), vg.Points(3)}); err != nil {
			return err
		}
	}
	// Whole decades, so the log axis has labelled ticks at both ends.
	lat.Y.Min = math.Pow(10, math.Floor(math.Log10(lat.Y.Min)))
	lat.Y.Max = math.Pow(10, math.Ceil(math.Log10(lat.Y.Max)))
	target := plotter.NewFunction(func(float64) float64 { return 40 })
	target.Color, target.Dashes = color.RGBA{R: 0xcc, A: 0xff}, []vg.Length{vg.Points(2), vg.Points(2)}
	mem.Add(target)
	mem.Legend.Add("target 40 MB at 10,000", target)
	mem.Y.Min = 0

	const w, h = 12 * vg.Inch, 4.5 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(100))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadX: vg.Points(16), PadY: vg.Points(6)}
	canvases := plot.Align([][]*plot.Plot{{lat, mem}}, tiles, dc)
	lat.Draw(canvases[0][0])
	mem.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.X.Label.Text = "remote nodes (log)"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	return p
}

func addLine(p *plot.Plot, name string, xys plotter.XYs, c color.Color, dashes []vg.Length) error {
	if len(xys) == 0 {
		return nil
	}
	l, pts, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, l.Dashes, pts.Color = c, dashes, c
	p.Add(l, pts)
	p.Legend.Add(name, l, pts)
	return nil
}
