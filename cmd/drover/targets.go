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
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/router"
	"github.com/drover-telemetry/drover/storagewriter"
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
livefeed and, with -simulate N, a fleet of N simulated vehicles, all in this
process and connected over loopback ZeroMQ and WebSocket, exactly as they
would be in separate processes. Each component keeps its own flags under its
name as a prefix: the frontend's -listen is -frontend.listen here (env
DROVER_ALL_FRONTEND_LISTEN). What all wires itself has no flag: every queue
lives under -data, the frontend and the router share one device registry,
the router keeps a durable subscriber queue for each sink, and the writers
and the livefeed connect to the router's -router.store-listen and
-router.live-pub on loopback. The links between the components are mutual
TLS under a cluster key made up in memory at each start, so that even
another user of this machine cannot reach them; there is no key file to
give, and -insecure-links does not exist here.`

// setupAll wires one router, one frontend, one storage writer per sink, one
// livefeed and optionally a simulated fleet in one process.
func setupAll(fs *flag.FlagSet) buildFunc {
	dataDir := "data"
	fs.StringVar(&dataDir, "data", dataDir,
		"`directory` holding every queue (DIR/frontend, DIR/router, DIR/storage-writer-SINK), the lake (DIR/lake) and, with -simulate, the registry")
	sinks := daemon.StringList{storagewriter.SinkLake}
	fs.Var(&sinks, "sinks", "comma-separated `sinks`, one storage writer each: influx, lake")
	simDevices := 0
	fs.IntVar(&simDevices, "simulate", simDevices,
		"`number` of simulated vehicles sending to the frontend; 0 for none")
	registryPath := ""
	fs.StringVar(&registryPath, "registry", registryPath,
		"device registry `file` shared by the frontend and the router; default DIR/registry.json, written from the fleet with -simulate")
	influxCfg := storagewriter.DefaultConfig().Influx
	fs.StringVar(&influxCfg.URL, "influx-url", influxCfg.URL, "InfluxDB `URL` for the influx sink")
	fs.StringVar(&influxCfg.Database, "influx-database", influxCfg.Database, "InfluxDB `database` for the influx sink")
	links := []string{"cluster-key-file", "insecure-links"} // all makes its own key
	fe := frontend.DefaultConfig()
	registerPrefixed(fs, "frontend.", fe.RegisterFlags, append(links, "queue-dir", "routers", "registry")...)
	rt := router.DefaultConfig()
	registerPrefixed(fs, "router.", rt.RegisterFlags, append(links, "queue-dir", "registry", "subscribers", "fixed-subscribers")...)
	lf := livefeed.DefaultConfig()
	registerPrefixed(fs, "livefeed.", lf.RegisterFlags, append(links, "routers")...)
	simOpts := defaultSimOptions()
	registerPrefixed(fs, "sim.", simOpts.fleet.RegisterFlags, "frontends", "devices", "token-seed")

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
		key, err := clusterlink.GenerateKey()
		if err != nil {
			return nil, err
		}
		linkCfg := clusterlink.Config{Keys: []clusterlink.Key{key}}
		frontendURL, err := loopbackURL("frontend.listen", fe.Listen)
		if err != nil {
			return nil, err
		}
		if registryPath == "" {
			registryPath = filepath.Join(dataDir, "registry.json")
		}
		if simDevices > 0 {
			simOpts.fleet.Devices = simDevices
			simOpts.fleet.URLs = []string{frontendURL}
			simOpts.fleet.TokenSeed = "drover-all"
			simOpts.summary, simOpts.progress = "", 0
			if err := sim.WriteRegistry(registryPath, simOpts.fleet); err != nil {
				return nil, fmt.Errorf("simulate: %w", err)
			}
		}
		store, err := registry.NewStore(registryPath, logger, reg)
		if err != nil {
			return nil, fmt.Errorf("registry: %w (give -registry, or -simulate N to have one written)", err)
		}

		rt.QueueDir = filepath.Join(dataDir, "router")
		rt.RegistryStore = store
		rt.Subscribers = nil
		rt.FixedSubscribers = true
		rt.Links, fe.Links, lf.Links = linkCfg, linkCfg, linkCfg
		fe.QueueDir = filepath.Join(dataDir, "frontend")
		fe.RegistryStore, fe.Registry = store, registryPath
		// The components connect on loopback, and the router binds there
		// too: nothing outside this process holds the key anyway.
		fe.Routers = make([]string, 1)
		if fe.Routers[0], err = loopbackEndpoint("router.listen", rt.Listen); err != nil {
			return nil, err
		}
		lf.Routers = make([]string, 1)
		if lf.Routers[0], err = loopbackEndpoint("router.live-pub", rt.LivePub); err != nil {
			return nil, err
		}
		storeEndpoint, err := loopbackEndpoint("router.store-listen", rt.StoreListen)
		if err != nil {
			return nil, err
		}
		rt.Listen, rt.LivePub, rt.StoreListen = fe.Routers[0], lf.Routers[0], storeEndpoint

		// Added in start order; the group stops them in reverse: the fleet
		// and the frontend first, the router (which the frontend drains to)
		// and the registry last.
		units := []unit{{name: "registry", run: store.Run, ready: func() error { return nil }}}
		var writers []*storagewriter.Writer
		for _, sink := range sinks {
			cfg := storagewriter.DefaultConfig()
			cfg.Sink = sink
			cfg.Routers = []string{storeEndpoint}
			cfg.QueueDir = filepath.Join(dataDir, "storage-writer-"+sink)
			cfg.Influx.URL, cfg.Influx.Database = influxCfg.URL, influxCfg.Database
			cfg.Lake.Dir = filepath.Join(dataDir, "lake")
			cfg.Links = linkCfg
			w, err := storagewriter.New(cfg, logger, reg)
			if err != nil {
				return nil, err
			}
			rt.Subscribers = append(rt.Subscribers, w.Name())
			writers = append(writers, w)
		}
		r, err := router.New(rt, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "router", run: r.Run, ready: r.Ready})
		for _, w := range writers {
			units = append(units, unit{name: "storage-writer/" + w.Name(), run: w.Run, ready: w.Ready})
		}
		l, err := livefeed.New(lf, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "livefeed", run: l.Run, ready: l.Ready})
		f, err := frontend.New(fe, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "frontend", run: f.Run, ready: f.Ready})
		if simDevices > 0 {
			su, err := newSim(simOpts, logger, reg)
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
