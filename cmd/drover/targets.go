package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/router"
	storagewriter "github.com/drover-telemetry/drover/storage-writer"
)

// Default ops ports: one per target so that split processes on one host do
// not collide, and clear of Prometheus's own 9090.
func targets() []target {
	return []target{
		{name: "frontend", summary: "device WebSocket server: acks after fsync, drains to every router", opsListen: ":9180", setup: setupFrontend},
		{name: "router", summary: "fan-in from frontends: durable queue, enrichment, live. and store. lanes", opsListen: ":9181", setup: setupRouter},
		{name: "storage-writer", summary: "durable subscriber writing the store. lane to InfluxDB or the Parquet lake", opsListen: ":9182", setup: setupStorageWriter},
		{name: "livefeed", summary: "live WebSocket API and map for web and mobile clients", opsListen: ":9183", setup: setupLivefeed},
		{name: "all", summary: "every component in one process, wired on loopback, queues under -data (start here)", opsListen: ":9184", setup: setupAll, help: allHelp},
		{name: "sim", summary: "simulated fleet of devices sending readings to frontends", opsListen: ":9185", setup: setupSim},
	}
}

func setupFrontend(fs *flag.FlagSet) buildFunc {
	cfg := frontend.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		f, err := frontend.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "frontend", run: f.Run, ready: f.Ready}}, nil
	}
}

func setupRouter(fs *flag.FlagSet) buildFunc {
	cfg := router.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		r, err := router.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "router", run: r.Run, ready: r.Ready}}, nil
	}
}

func setupStorageWriter(fs *flag.FlagSet) buildFunc {
	cfg := storagewriter.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		w, err := storagewriter.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "storage-writer", run: w.Run, ready: w.Ready}}, nil
	}
}

func setupLivefeed(fs *flag.FlagSet) buildFunc {
	cfg := livefeed.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		f, err := livefeed.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "livefeed", run: f.Run, ready: f.Ready}}, nil
	}
}

func setupSim(fs *flag.FlagSet) buildFunc {
	cfg := defaultSimOptions()
	cfg.registerFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		return newSim(cfg, logger, reg)
	}
}

const allHelp = `
Runs one router, one frontend, one storage writer per entry of -sinks, one
livefeed and, with -simulate N, a fleet of N simulated vehicles, all in this process.
Each component keeps its own flags under its name as a prefix: the
frontend's -listen is -frontend.listen here (env DROVER_ALL_FRONTEND_LISTEN).
What all wires itself has no flag: every queue lives under -data, and the
frontend, the storage writers and the livefeed connect on loopback to the
router's -router.listen, -router.store-pub and -router.live-pub.`

// setupAll wires one router, one frontend, one storage writer per sink, one
// livefeed and optionally a simulated fleet in one process. The components
// keep their own flags under a prefix (-frontend.listen, -router.store-pub,
// env DROVER_ALL_FRONTEND_LISTEN...), except those that all derives: every
// queue directory comes from -data, and every component connects to the one
// router's endpoints on loopback.
func setupAll(fs *flag.FlagSet) buildFunc {
	dataDir := "data"
	fs.StringVar(&dataDir, "data", dataDir,
		"`directory` holding every queue: DIR/frontend, DIR/router, DIR/storage-writer-SINK")
	sinks := daemon.StringList{storagewriter.SinkLake}
	fs.Var(&sinks, "sinks", "comma-separated `sinks`, one storage writer each: influx, lake")
	simDevices := 0
	fs.IntVar(&simDevices, "simulate", simDevices,
		"`number` of simulated devices sending to the frontend; 0 for none")
	fe := frontend.DefaultConfig()
	registerPrefixed(fs, "frontend.", fe.RegisterFlags, "queue-dir", "routers")
	rt := router.DefaultConfig()
	registerPrefixed(fs, "router.", rt.RegisterFlags, "queue-dir")
	lf := livefeed.DefaultConfig()
	registerPrefixed(fs, "livefeed.", lf.RegisterFlags, "routers")

	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		if dataDir == "" {
			return nil, errors.New("data: empty")
		}
		if len(sinks) == 0 {
			return nil, errors.New("sinks: none given")
		}
		if err := os.MkdirAll(dataDir, 0o755); err != nil {
			return nil, fmt.Errorf("data: %w", err)
		}
		var err error
		rt.QueueDir = filepath.Join(dataDir, "router")
		fe.QueueDir = filepath.Join(dataDir, "frontend")
		fe.Routers = make([]string, 1)
		if fe.Routers[0], err = loopbackEndpoint("router.listen", rt.Listen); err != nil {
			return nil, err
		}
		lf.Routers = make([]string, 1)
		if lf.Routers[0], err = loopbackEndpoint("router.live-pub", rt.LivePub); err != nil {
			return nil, err
		}
		storePub, err := loopbackEndpoint("router.store-pub", rt.StorePub)
		if err != nil {
			return nil, err
		}

		// Added in start order; the group stops them in reverse: the fleet
		// and the frontend first, the router (which the frontend drains to)
		// last.
		var units []unit
		r, err := router.New(rt, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "router", run: r.Run, ready: r.Ready})
		for _, sink := range sinks {
			cfg := storagewriter.DefaultConfig()
			cfg.Sink = sink
			cfg.Routers = []string{storePub}
			cfg.QueueDir = filepath.Join(dataDir, "storage-writer-"+sink)
			w, err := storagewriter.New(cfg, logger, reg)
			if err != nil {
				return nil, err
			}
			units = append(units, unit{name: "storage-writer/" + w.Name(), run: w.Run, ready: w.Ready})
		}
		l, err := livefeed.New(lf, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "livefeed", run: l.Run, ready: l.Ready})
		var simOpts *simOptions
		if simDevices > 0 {
			sc := defaultSimOptions()
			sc.fleet.Devices = simDevices
			sc.summary, sc.progress = "", 0
			fu, err := loopbackURL("frontend.listen", fe.Listen)
			if err != nil {
				return nil, err
			}
			sc.fleet.URLs = []string{fu}
			// The simulated devices must be in the frontend's registry:
			// unless one was given, all writes the fleet's own.
			if fe.Registry == frontend.DefaultConfig().Registry {
				sc.writeRegistry = filepath.Join(dataDir, "registry.json")
				fe.Registry = sc.writeRegistry
			}
			simOpts = &sc
		}
		f, err := frontend.New(fe, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "frontend", run: f.Run, ready: f.Ready})
		if simOpts != nil {
			su, err := newSim(*simOpts, logger, reg)
			if err != nil {
				return nil, err
			}
			units = append(units, su...)
		}
		return units, nil
	}
}

// loopbackEndpoint turns an endpoint that is bound on every interface
// (tcp://*:5555) into one to connect to on loopback (tcp://127.0.0.1:5555).
func loopbackEndpoint(flagName, bind string) (string, error) {
	if err := daemon.ValidateEndpoint(bind, true); err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	rest, ok := strings.CutPrefix(bind, "tcp://")
	if !ok {
		return bind, nil // ipc and inproc connect to what they bind
	}
	host, port, _ := net.SplitHostPort(rest)
	if port == "0" || port == "*" {
		return "", fmt.Errorf("%s: %q: all connects its components to this endpoint, so it needs a fixed port", flagName, bind)
	}
	return "tcp://" + net.JoinHostPort(loopbackHost(host), port), nil
}

// loopbackURL is the WebSocket URL on loopback of a server listening on
// addr.
func loopbackURL(flagName, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	if port == "0" {
		return "", fmt.Errorf("%s: %q: the simulator connects to this address, so it needs a fixed port", flagName, addr)
	}
	return "ws://" + net.JoinHostPort(loopbackHost(host), port), nil
}

func loopbackHost(host string) string {
	switch host {
	case "", "*", "0.0.0.0":
		return "127.0.0.1"
	case "::":
		return "::1"
	}
	return host
}
