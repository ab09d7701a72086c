// Command capacity prints drover's capacity plans (internal/capacity): pods,
// requests, limits and queue volumes for the three scenarios of issue 19, or
// for a fleet of your own, from the measured figures.
//
//	go run ./scripts/capacity                          the three scenarios, as docs/capacity.md shows them
//	go run ./scripts/capacity -devices 50000 -rate 5000 -frame 1
//	go run ./scripts/capacity -figures my-figures.json (figures measured on your hardware)
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/drover-telemetry/drover/internal/capacity"
)

func main() {
	devices := flag.Int("devices", 0, "plan for this many connected devices instead of the three scenarios")
	rate := flag.Float64("rate", 0, "with -devices: readings per second at the peak, all devices together")
	frame := flag.Float64("frame", 1, "with -devices: readings per frame")
	figures := flag.String("figures", "", "figures `file` in internal/capacity/figures.json's format (default: the measured ones)")
	flag.Parse()

	f := capacity.Measured()
	if *figures != "" {
		b, err := os.ReadFile(*figures)
		if err == nil {
			f, err = capacity.ParseFigures(b)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "capacity:", err)
			os.Exit(2)
		}
	}
	scenarios := capacity.Scenarios()
	if *devices > 0 {
		if *rate <= 0 || *frame < 1 {
			fmt.Fprintln(os.Stderr, "capacity: -devices needs -rate > 0 and -frame >= 1")
			os.Exit(2)
		}
		scenarios = []capacity.Scenario{{Name: "custom", Devices: *devices, Rate: *rate, FrameReadings: *frame,
			About: fmt.Sprintf("%d devices, %.0f readings/s, %.0f readings a frame", *devices, *rate, *frame)}}
	}
	p := capacity.DefaultPolicy()
	var plans []capacity.Plan
	for _, s := range scenarios {
		plans = append(plans, capacity.Compute(s, f, p))
	}
	capacity.WriteMarkdown(os.Stdout, plans, f, p)
}
