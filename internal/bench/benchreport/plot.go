package main

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// series is one line of a plot.
type series struct {
	name string
	xys  plotter.XYs
	dash bool
}

// humanTicks labels the default ticks as 250k, 1.5M.
type humanTicks struct{}

// Ticks implements plot.Ticker.
func (humanTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = human(ts[i].Value)
		}
	}
	return ts
}

// human formats v as 250k or 1.5M.
func human(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return trimFloat(v/1e6) + "M"
	case a >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}

func trimFloat(v float64) string { return fmt.Sprintf("%.4g", v) }

// logMsTicks labels a log axis in milliseconds at 1, 2, 5 × powers of ten.
type logMsTicks struct{}

// Ticks implements plot.Ticker.
func (logMsTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); math.Pow(10, e) <= hi; e++ {
		for m := 1; m <= 9; m++ {
			v := float64(m) * math.Pow(10, e)
			if v < lo || v > hi {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = human(v)
			}
			ts = append(ts, t)
		}
	}
	return ts
}

// save draws the series into a PNG of 9 × 5 inches.
func save(p *plot.Plot, ss []series, file string) error {
	i := 0
	for _, s := range ss {
		if len(s.xys) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", s.name, err)
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.6)
		if s.dash {
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
		}
		p.Add(l)
		p.Legend.Add(s.name, l)
		i++
	}
	// Headroom above the lines for the legend, top right.
	if maxY := maxOf(ss); maxY > 0 {
		if _, log := p.Y.Scale.(plot.LogScale); log {
			p.Y.Max = maxY * 5
		} else {
			p.Y.Max = maxY * 1.35
		}
	}
	if i == 0 {
		p.Title.Text += ": no scenario run"
		p.Y.Scale, p.Y.Tick.Marker = plot.LinearScale{}, plot.DefaultTicks{}
		p.Y.Min, p.Y.Max = 0, 1
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	p.BackgroundColor = color.White
	if err := p.Save(9*vg.Inch, 5*vg.Inch, file); err != nil {
		return fmt.Errorf("save %s: %w", file, err)
	}
	return nil
}

// plotThroughput draws readings/s acknowledged per second by each throughput run.
func plotThroughput(r *results, file string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Durably acknowledged readings per second (DURATION=%s, end to end %s)", r.Run.Duration, r.Run.PipelineDuration)
	p.X.Label.Text = "seconds since the start of the run"
	p.Y.Label.Text = "readings/s acked"
	p.Y.Tick.Marker = humanTicks{}
	p.Y.Min = 0
	var ss []series
	simLine := func(name string, run *simRun) {
		if run == nil {
			return
		}
		var xys plotter.XYs
		for _, pt := range run.Timeline {
			xys = append(xys, plotter.XY{X: pt.T, Y: pt.AckedPerSecond})
		}
		ss = append(ss, series{name: name, xys: xys})
	}
	natsLine := func(name string, run *natsRun, dash bool) {
		if run == nil {
			return
		}
		var xys plotter.XYs
		for _, pt := range run.Timeline {
			xys = append(xys, plotter.XY{X: pt.T, Y: pt.AckedReadingsPerSecond})
		}
		ss = append(ss, series{name: name, xys: xys, dash: dash})
	}
	simLine("drover ingest (fsync), as fast as acks allow", r.Throughput)
	simLine("drover end to end, offered load (acks at the frontend)", r.Pipeline)
	natsLine("NATS JetStream, sync_interval: always (fsync)", r.NATSAlways, true)
	natsLine("NATS JetStream, default sync (no fsync per ack)", r.NATSDflt, true)
	return save(p, ss, file)
}

// plotLatency draws the per-second ack latency at 10,000 readings/s and the live latency, on a
// log scale.
func plotLatency(r *results, file string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Latency per second of the run, p50 and p99 (DURATION=%s)", r.Run.Duration)
	p.X.Label.Text = "seconds since the start of the run"
	p.Y.Label.Text = "milliseconds (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = logMsTicks{}
	var ss []series
	// A log scale has no 0: an interval without a sample is left out.
	add := func(name string, dash bool, n int, at func(int) (x, y float64)) {
		var xys plotter.XYs
		for i := range n {
			if x, y := at(i); y > 0 {
				xys = append(xys, plotter.XY{X: x, Y: y})
			}
		}
		ss = append(ss, series{name: name, xys: xys, dash: dash})
	}
	if l := r.Latency; l != nil {
		tl := l.Timeline
		add("ack p50, 10,000 readings/s (device's view)", false, len(tl), func(i int) (float64, float64) { return tl[i].T, tl[i].AckP50Ms })
		add("ack p99, 10,000 readings/s", true, len(tl), func(i int) (float64, float64) { return tl[i].T, tl[i].AckP99Ms })
	}
	if tl := r.LiveTimeline; len(tl) > 0 {
		add("live p50, device time → WebSocket client", false, len(tl), func(i int) (float64, float64) { return tl[i].T, tl[i].P50Ms })
		add("live p99", true, len(tl), func(i int) (float64, float64) { return tl[i].T, tl[i].P99Ms })
	}
	return save(p, ss, file)
}

// maxOf returns the largest y of the series (0 when none).
func maxOf(ss []series) float64 {
	m := 0.0
	for _, s := range ss {
		for _, xy := range s.xys {
			m = max(m, xy.Y)
		}
	}
	return m
}
