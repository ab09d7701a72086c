package main

import (
	"flag"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/router"
	"github.com/drover-telemetry/drover/storagewriter"
)

// TestAllExposesComponentFlags: every flag of a split target is a flag of
// drover all under the component's prefix, with the same meaning and
// default, except the few that all wires itself (and says so in -h). A flag
// added to a component without reaching all, or a wired one that all still
// shows, fails here.
func TestAllExposesComponentFlags(t *testing.T) {
	all := flag.NewFlagSet("all", flag.ContinueOnError)
	setupAll(all)
	for _, c := range []struct {
		prefix   string
		register func(*flag.FlagSet)
		wired    []string
		defaults map[string]string // defaults all sets differently, on purpose
	}{
		{"frontend.", func(fs *flag.FlagSet) { c := frontend.DefaultConfig(); c.RegisterFlags(fs) },
			slices.Concat([]string{"queue-dir", "routers", "registry", "cluster-key-file", "insecure-links", "resolve-interval", "dns-server"}, allFollowFlags), nil},
		{"router.", func(fs *flag.FlagSet) { c := router.DefaultConfig(); c.RegisterFlags(fs) },
			slices.Concat([]string{"queue-dir", "registry", "subscribers", "fixed-subscribers", "cluster-key-file", "insecure-links"}, allFollowFlags), nil},
		{"storage-writer.", func(fs *flag.FlagSet) { c := storagewriter.DefaultConfig(); c.RegisterFlags(fs) },
			[]string{"routers", "sink", "name", "queue-dir", "lake-dir", "cluster-key-file", "insecure-links", "resolve-interval", "dns-server"}, map[string]string{"influx-create-database": "true"}},
		{"livefeed.", func(fs *flag.FlagSet) { c := livefeed.DefaultConfig(); c.RegisterFlags(fs) },
			slices.Concat([]string{"routers", "cluster-key-file", "insecure-links", "cache-dir", "resolve-interval", "dns-server"}, allFollowFlags), nil},
		{"sim.", func(fs *flag.FlagSet) { o := defaultSimOptions(); o.fleet.RegisterFlags(fs) },
			[]string{"frontends", "devices", "token-seed", "token-seed-file"}, nil},
	} {
		own := flag.NewFlagSet(c.prefix, flag.ContinueOnError)
		c.register(own)
		own.VisitAll(func(f *flag.Flag) {
			got := all.Lookup(c.prefix + f.Name)
			if slices.Contains(c.wired, f.Name) {
				if got != nil {
					t.Errorf("drover all has -%s%s, which it wires itself", c.prefix, f.Name)
				}
				return
			}
			if got == nil {
				t.Errorf("drover all lacks -%s%s (%s)", c.prefix, f.Name, f.Usage)
				return
			}
			want := f.DefValue
			if d, ok := c.defaults[f.Name]; ok {
				want = d
			}
			if got.Usage != f.Usage || got.DefValue != want {
				t.Errorf("-%s%s: usage %q, default %q; want %q, %q", c.prefix, f.Name, got.Usage, got.DefValue, f.Usage, want)
			}
		})
		all.VisitAll(func(f *flag.Flag) {
			if name, ok := strings.CutPrefix(f.Name, c.prefix); ok && own.Lookup(name) == nil {
				t.Errorf("drover all has -%s, which no component has", f.Name)
			}
		})
	}
	// The short forms are the writer's flags under another name.
	if err := all.Parse([]string{"-influx-url", "http://influx:8086", "-influx-database", "fleet"}); err != nil {
		t.Fatal(err)
	}
	if u, d := all.Lookup("storage-writer.influx-url").Value.String(), all.Lookup("storage-writer.influx-database").Value.String(); u != "http://influx:8086" || d != "fleet" {
		t.Errorf("-influx-url and -influx-database set %q and %q", u, d)
	}
}

// TestStatusLine: the line gives rates over the interval and what waits for
// each sink, from the metrics the components export.
func TestStatusLine(t *testing.T) {
	reg := prometheus.NewRegistry()
	stored := prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_frontend_readings_stored_total"})
	conns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_frontend_connections"})
	clients := prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_livefeed_clients"})
	written := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_writer_records_written_total"}, []string{"writer"})
	depth := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_queue_depth_bytes"}, []string{"queue"})
	reg.MustRegister(stored, conns, clients, written, depth)
	s := &status{g: reg, sinks: []string{"lake", "influx"}}
	prev, err := s.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	stored.Add(50_000)
	conns.Set(1000)
	clients.Set(2)
	written.WithLabelValues("lake").Add(49_000)
	written.WithLabelValues("influx").Add(10_000)
	depth.WithLabelValues("frontend").Set(0)
	depth.WithLabelValues("router").Set(2048)
	depth.WithLabelValues("sub-influx").Set(3 << 20)
	depth.WithLabelValues("writer-influx").Set(1 << 20)
	cur, err := s.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	cur.at = prev.at.Add(5 * time.Second)
	got := s.line(prev, cur)
	want := "drover all: 1,000 devices, 10,000 readings/s acked | written/s: lake 9,800, influx 2,000 | live clients: 2 | waiting: frontend 0 B, router 2 KiB, lake 0 B, influx 4.0 MiB"
	if got != want {
		t.Errorf("status line\n got %s\nwant %s", got, want)
	}
}

// TestAllSpreadsSimulatedStarts: drover all staggers the simulated devices
// over one reading period, so that their readings are not all sent in the
// same instant of each second; a -sim.connect-rate given (0 included) is
// kept.
func TestAllSpreadsSimulatedStarts(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want float64
	}{
		{nil, 1000},                                 // 1,000 devices at 1 Hz: over 1 s
		{[]string{"-sim.rate", "0.5"}, 500},         // over 2 s
		{[]string{"-sim.connect-rate", "0"}, 0},     // all at once, as asked
		{[]string{"-sim.connect-rate", "250"}, 250}, // as asked
		{[]string{"-sim.rate", "0"}, 0},             // connect and hold: nothing to spread
	} {
		fs := flag.NewFlagSet("all", flag.ContinueOnError)
		cfg := sim.DefaultConfig()
		registerPrefixed(fs, "sim.", cfg.RegisterFlags)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		cfg.Devices = 1000
		spreadSimStarts(fs, &cfg)
		if cfg.ConnectRate != tc.want {
			t.Errorf("%v: connect rate %v, want %v", tc.args, cfg.ConnectRate, tc.want)
		}
	}
}
