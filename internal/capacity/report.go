package capacity

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// WriteMarkdown writes the plans as docs/capacity.md shows them: one table
// per scenario, then the figures used with their sources.
func WriteMarkdown(w io.Writer, plans []Plan, f Figures, p Policy) {
	for _, pl := range plans {
		s := pl.Scenario
		fmt.Fprintf(w, "### Scenario (%s): %s\n\n", s.Name, s.About)
		fmt.Fprintf(w, "Peak: %s devices, %s readings/s, %s frames/s.\n\n", thousands(float64(s.Devices)), thousands(s.Rate),
			thousands(s.Rate/s.FrameReadings))
		fmt.Fprintf(w, "| pods | replicas | CPU request (each) | memory request / limit (each) | queue volume (each) | CPU used at the peak (all) |\n")
		fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|\n")
		row := func(name string, p Pods) {
			vol := "—"
			if p.Volume > 0 {
				vol = Quantity(p.Volume)
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s / %s | %s | %.2f cores |\n", name, p.Replicas, CPU(p.CPUMilli),
				Quantity(p.Memory), Quantity(p.MemoryLimit), vol, p.Cores)
		}
		row("frontend", pl.Frontend)
		row("router", pl.Router)
		row("storage-writer influx", pl.WriterInflux)
		row("storage-writer lake", pl.WriterLake)
		row("livefeed", pl.Livefeed)
		row("api", pl.API)
		fmt.Fprintf(w, "\nInfluxDB itself: **%.2f cores** for the points at the peak. Stampede: every device back within %.0f s is %s connections/s, %.2f cores of accepts over the frontends. Frontends' `-max-connections`: %s.\n\n",
			pl.InfluxdCores, p.StampedeSeconds, thousands(pl.StampedeAccepts), pl.StampedeCores, thousands(float64(pl.MaxConnections)))
	}
	fmt.Fprintf(w, "### The figures\n\n| figure | value | source |\n|---|---:|---|\n")
	all := f.all()
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "| `%s` | %s | %s |\n", n, trim(all[n].Value), all[n].Source)
	}
}

func trim(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// thousands formats a number with thousands separators, rounded.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
