package main

import (
	"fmt"
	"image/color"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/weftnet/weft/test/cluster"
)

type chartPanel struct {
	config     string
	metrics    []string
	dataplanes []cluster.DataPlane
	medians    map[cluster.DataPlane]map[string]float64
}

var dpColor = map[cluster.DataPlane]color.Color{
	cluster.KernelVXLAN:     color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff},
	cluster.KernelCollectMD: color.RGBA{R: 0xe6, G: 0x9f, B: 0x00, A: 0xff},
	cluster.WeftTC:          color.RGBA{R: 0x56, G: 0xb4, B: 0xe9, A: 0xff},
	cluster.WeftXDP:         color.RGBA{R: 0x00, G: 0x5a, B: 0xb5, A: 0xff},
	cluster.WeftDirect:      color.RGBA{R: 0x00, G: 0x9e, B: 0x73, A: 0xff},
}

// writeChart draws, per underlay configuration, grouped bars of each data
// plane's median divided by host-gw's, per metric, with the host-gw line at 1.
func writeChart(path string, env machineEnv, rounds int, panels []chartPanel) error {
	var plots [][]*plot.Plot
	for _, pn := range panels {
		p, err := ratioPlot(pn, env, rounds)
		if err != nil {
			return err
		}
		plots = append(plots, []*plot.Plot{p})
	}
	if len(plots) == 0 {
		return nil
	}
	const w, rowH = 13 * vg.Inch, 5 * vg.Inch
	img := vgimg.NewWith(vgimg.UseWH(w, rowH*vg.Length(len(plots))), vgimg.UseDPI(110))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadX: vg.Points(6), PadY: vg.Points(12)}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
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

func ratioPlot(pn chartPanel, env machineEnv, rounds int) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s underlay: median / host-gw median (Gbit/s, pkt/s: higher is better; rr latency, CPU/pkt, CPU/GB: lower is better)\n%s, kernel %s, %d rounds",
		pn.config, env.machine, env.kernel, rounds)
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.Y.Label.Text = "ratio to host-gw"
	// The legend sits inside the data area, top left, with its thumbnails to
	// the left of the names, pulled in from the frame: at the right edge
	// gonum draws the thumbnails flush with the canvas, and they were cut off.
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	p.Legend.YOffs = -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Legend.ThumbnailWidth = vg.Points(14)
	p.X.Tick.Label.Font.Size = vg.Points(10)

	base := pn.medians[cluster.HostGW]
	var dps []cluster.DataPlane
	for _, dp := range pn.dataplanes {
		if dp != cluster.HostGW && pn.medians[dp] != nil {
			dps = append(dps, dp)
		}
	}
	if base == nil || len(dps) == 0 {
		p.Title.Text += "\n(no host-gw or no other data plane measured: nothing to compare)"
		p.NominalX(pn.metrics...)
		return p, nil
	}
	barW := vg.Points(18)
	ymax := 1.2
	for i, dp := range dps {
		vals := make(plotter.Values, len(pn.metrics))
		for j, m := range pn.metrics {
			v, ok := pn.medians[dp][m]
			b, bok := base[m]
			if ok && bok && b != 0 {
				vals[j] = v / b
			}
			ymax = math.Max(ymax, vals[j]*1.7) // headroom for labels and the legend (about a third of the height)
		}
		bars, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, err
		}
		bars.Offset = barW * vg.Length(float64(i)-float64(len(dps)-1)/2)
		bars.Color = dpColor[dp]
		bars.LineStyle.Width = 0
		p.Add(bars)
		p.Legend.Add(string(dp), bars)

		// value labels above the bars
		xys := make(plotter.XYs, len(vals))
		labels := make([]string, len(vals))
		for j, v := range vals {
			xys[j] = plotter.XY{X: float64(j), Y: v}
			labels[j] = fmt.Sprintf("%.2f", v)
		}
		lb, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
		if err != nil {
			return nil, err
		}
		for k := range lb.TextStyle {
			lb.TextStyle[k].Font.Size = vg.Points(7)
			lb.TextStyle[k].XAlign = draw.XCenter
		}
		lb.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
		p.Add(lb)
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Color = color.RGBA{R: 0xcc, A: 0xff}
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	one.Width = vg.Points(1.2)
	p.Add(one)
	p.Legend.Add("host-gw = 1", one)
	p.NominalX(pn.metrics...)
	p.X.Min, p.X.Max = -0.6, float64(len(pn.metrics))-0.4
	p.Y.Min, p.Y.Max = 0, ymax
	p.Add(plotter.NewGrid())
	return p, nil
}
