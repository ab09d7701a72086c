package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/sim"
)

// simOptions are drover sim's flags: the fleet's, and what to do around it.
type simOptions struct {
	fleet         sim.Config
	writeRegistry string        // write the fleet's registry file here first
	registryOnly  bool          // write the registry and stop
	summary       string        // write the JSON summary here at the end ("-": stdout)
	progress      time.Duration // progress line interval; 0: none
	timeline      string        // write a JSON line per second here (empty: none)
	acked         string        // write every device's highest acked seq here at the end (empty: none)
	script        string        // a scripted trip every device drives (empty: the vehicle model)
	// waitFor, when set, must return nil before the devices start (drover
	// all: the frontend listens), so that no first connect is refused.
	waitFor func() error
}

func defaultSimOptions() simOptions {
	return simOptions{fleet: sim.DefaultConfig(), summary: "-", progress: 5 * time.Second}
}

func (o *simOptions) registerFlags(fs *flag.FlagSet) {
	o.fleet.RegisterFlags(fs)
	fs.StringVar(&o.writeRegistry, "write-registry", o.writeRegistry,
		"write the registry `file` of this fleet (ids, token hashes, fleets) before starting, for the frontends' -registry")
	fs.BoolVar(&o.registryOnly, "registry-only", o.registryOnly,
		"only write the -write-registry file, then exit")
	fs.StringVar(&o.summary, "summary", o.summary,
		"write the JSON summary to this `file` when the fleet stops (- for standard output, empty for none)")
	fs.DurationVar(&o.progress, "progress", o.progress,
		"print a progress line to standard error this often (`duration`); 0 for none")
	fs.StringVar(&o.timeline, "timeline", o.timeline,
		"write a JSON line per second to this `file`: sent and acked readings, ack p50 and p99, connected (empty for none)")
	fs.StringVar(&o.acked, "acked", o.acked,
		"write every device's highest acked seq to this `file` when the fleet stops (JSON: device → seq), to check storage per device (empty for none)")
	fs.StringVar(&o.script, "script", o.script,
		"scripted trip `file` (JSON: legs to drive, stop, go silent; docs/simulator.md) every device drives instead of the vehicle model")
}

// newSim returns the simulator's unit: a fleet that runs until ctx ends or,
// with -readings or -duration, until it is done (which stops the process).
func newSim(o simOptions, logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
	if o.writeRegistry != "" {
		if err := sim.WriteRegistry(o.writeRegistry, o.fleet); err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
	}
	if o.registryOnly {
		if o.writeRegistry == "" {
			return nil, fmt.Errorf("sim: -registry-only needs -write-registry")
		}
		done := func(context.Context) error { return nil }
		return []unit{{name: "sim", run: done, ready: func() error { return nil }}}, nil
	}
	if o.script != "" {
		sc, err := sim.LoadScript(o.script)
		if err != nil {
			return nil, fmt.Errorf("sim: %w", err)
		}
		o.fleet.Script = sc
	}
	fleet, err := sim.New(o.fleet, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	run := func(ctx context.Context) error {
		if o.waitFor != nil && !waitReady(ctx, o.waitFor) {
			return nil // stopped before the frontend was ready
		}
		if o.progress > 0 {
			go fleet.Progress(os.Stderr, o.progress)
		}
		// SIGUSR1 drops every connection at once (a stampede on demand, for load scripts).
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		defer signal.Stop(usr1)
		go func() {
			for {
				select {
				case <-usr1:
					fleet.Stampede()
				case <-fleet.Done():
					return
				}
			}
		}()
		timelineDone := make(chan error, 1)
		if o.timeline != "" {
			tf, err := os.Create(o.timeline)
			if err != nil {
				return fmt.Errorf("sim: create timeline: %w", err)
			}
			go func() {
				err := fleet.Timeline(tf, time.Second)
				if cerr := tf.Close(); err == nil && cerr != nil {
					err = fmt.Errorf("close timeline: %w", cerr)
				}
				timelineDone <- err
			}()
		} else {
			timelineDone <- nil
		}
		err := fleet.Run(ctx)
		// Run has closed Done: the timeline writes its last line and returns.
		if terr := <-timelineDone; terr != nil {
			logger.Error("sim: timeline", "err", terr)
		}
		if o.acked != "" {
			b, jerr := json.Marshal(fleet.Acked())
			if jerr == nil {
				jerr = os.WriteFile(o.acked, append(b, '\n'), 0o644)
			}
			if jerr != nil {
				logger.Error("sim: write acked seqs", "err", jerr)
			}
		}
		if o.summary != "" {
			sum := fleet.Summary()
			sum.ProcessCPUSeconds = processCPUSeconds()
			b, jerr := json.MarshalIndent(sum, "", "  ")
			if jerr == nil {
				b = append(b, '\n')
				if o.summary == "-" {
					_, jerr = os.Stdout.Write(b)
				} else {
					jerr = os.WriteFile(o.summary, b, 0o644)
				}
			}
			if jerr != nil {
				logger.Error("sim: write summary", "err", jerr)
			}
		}
		return err
	}
	return []unit{{name: "sim", run: run, ready: fleet.Ready}}, nil
}

// waitReady polls ready until it returns nil (true) or ctx ends (false).
func waitReady(ctx context.Context, ready func() error) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for ready() != nil {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// processCPUSeconds is this process's CPU time so far (user + system), 0 if unknown.
func processCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return math.Round((tv(ru.Utime)+tv(ru.Stime))*1000) / 1000
}
