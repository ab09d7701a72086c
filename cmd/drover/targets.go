package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/alerts"
	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/router"
	"github.com/drover-telemetry/drover/storagewriter"
)

// Default ops ports: one per target so that split processes on one host do
// not collide, and clear of Prometheus's own 9090; on loopback, so that only
// the host sees them unless -ops-listen says otherwise.
func targets() []target {
	return []target{
		{name: "frontend", summary: "device WebSocket server: acks after fsync, drains to every router", opsListen: "127.0.0.1:9180", setup: setupFrontend},
		{name: "router", summary: "fan-in from frontends: durable queue, enrichment, live. and store. lanes", opsListen: "127.0.0.1:9181", setup: setupRouter},
		{name: "storage-writer", summary: "durable subscriber writing the store. lane to InfluxDB or the Parquet lake", opsListen: "127.0.0.1:9182", setup: setupStorageWriter,
			help: storageWriterHelp, subcommands: map[string]func([]string, io.Writer, io.Writer) int{"replay": runReplay}},
		{name: "livefeed", summary: "live WebSocket API and map for web and mobile clients", opsListen: "127.0.0.1:9183", setup: setupLivefeed},
		{name: "all", summary: "every component in one process, wired on loopback, queues under -data (start here)", opsListen: "127.0.0.1:9184", setup: setupAll, help: allHelp},
		{name: "sim", summary: "simulated fleet of devices sending readings to frontends", opsListen: "127.0.0.1:9185", setup: setupSim},
		{name: "api", summary: "control plane: REST API for devices, credentials, fleets, operators, and the change feed", opsListen: "127.0.0.1:9186", setup: setupAPI},
		{name: "alerts", summary: "alert engine: geofence, driving and vehicle-health rules on the store lane; webhooks, InfluxDB, lake, live", opsListen: "127.0.0.1:9187", setup: setupAlerts, help: alertsHelp},
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

func setupAPI(fs *flag.FlagSet) buildFunc {
	cfg := api.DefaultConfig()
	cfg.RegisterFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		a, err := api.New(cfg, logger, reg)
		if err != nil {
			return nil, err
		}
		return []unit{{name: "api", run: a.Run, ready: a.Ready}}, nil
	}
}

func setupSim(fs *flag.FlagSet) buildFunc {
	cfg := defaultSimOptions()
	cfg.registerFlags(fs)
	return func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error) {
		return newSim(cfg, logger, reg)
	}
}

const storageWriterHelp = `
Records the sink refuses for good go to dead-letter files; once the cause is
fixed, 'drover storage-writer replay' (with this writer's flags) writes them
again: see 'drover storage-writer replay -h'.`

const allHelp = `
Runs one router, one frontend, one storage writer per entry of -sinks, one
livefeed, the control plane, the alert engine and, with -simulate N, a fleet
of N simulated vehicles (started once the frontend listens), all in this
process and connected over loopback ZeroMQ and WebSocket, exactly as they
would be in separate processes. Each component keeps its own flags under its
name as a prefix: the frontend's
-listen is -frontend.listen here (env DROVER_ALL_FRONTEND_LISTEN); the
storage writers share the -storage-writer.* flags (-storage-writer.influx-url,
-storage-writer.lake-compact-interval, ...). What all wires itself has no
flag: every queue and the lake live under -data, the frontend and the router
share one copy of the device registry, which follows this process's own
control plane (-registry FILE uses a file instead), the router keeps a
durable subscriber queue for
each sink, each writer is named after its sink, and the writers and the
livefeed connect to the router's -router.store-listen and -router.live-pub
on loopback. Unlike drover storage-writer, all creates a missing InfluxDB
database (-storage-writer.influx-create-database).

Every -status-interval (5s) a status line on standard output says what
happened meanwhile: devices connected, readings acked per second, records
written per second by each sink, live clients, and what waits in the
queues (the log goes to standard error).

With -simulate, the livefeed runs as with -livefeed.dev: without a clients
file or dev token it makes up a token and logs the live map's URL with it.
The simulated vehicles start spread over one reading period (-sim.connect-rate
defaults to vehicles × -sim.rate here), so that their readings are spread over
each second as a real fleet's are, instead of all arriving in the same instant.

The control plane (drover api) keeps its SQLite file and first admin key
under DIR/api; drover ctl talks to it. The frontend, the router and the
livefeed follow it on loopback with a follower key it writes to
DIR/api/follower-key, and keep their last copy under DIR (registry.cache,
livefeed/tokens.cache), so that they serve devices while it is down. With
-simulate, the simulated vehicles are registered through it (created when
missing: drover ctl list shows them, and what you change of them stays).

The alert engine (drover alerts, docs/alerts.md) runs here too: a durable
subscriber of the router under DIR/alerts, its rule set followed from the
control plane with the follower key (or -alerts.rules FILE), its alerts to
the API, the live map, webhooks, the lake's alerts table (DIR/lake-alerts,
with the lake sink) and, with -alerts.influx and the influx sink, InfluxDB.

The links between the components are mutual TLS under a cluster key made up
in memory at each start, so that even another user of this machine cannot
reach them; there is no key file to give, and -insecure-links does not exist
here.`

// setupAll wires one router, one frontend, one storage writer per sink, one
// livefeed and optionally a simulated fleet in one process.
func setupAll(fs *flag.FlagSet) buildFunc {
	dataDir := "data"
	fs.StringVar(&dataDir, "data", dataDir,
		"`directory` holding every queue (DIR/frontend, DIR/router, DIR/storage-writer-SINK), the lake (DIR/lake), the control plane (DIR/api) and the registry's cached copy")
	sinks := daemon.StringList{storagewriter.SinkLake}
	fs.Var(&sinks, "sinks", "comma-separated `sinks`, one storage writer each: influx, lake")
	simDevices := 0
	fs.IntVar(&simDevices, "simulate", simDevices,
		"`number` of simulated vehicles sending to the frontend; 0 for none")
	registryPath := ""
	fs.StringVar(&registryPath, "registry", registryPath,
		"device registry `file` shared by the frontend and the router, instead of following the control plane (this process's own API); with -simulate it is written from the fleet")
	statusEvery := DefaultStatusInterval
	fs.DurationVar(&statusEvery, "status-interval", statusEvery,
		"print a status line to standard output this often (`duration`): readings acked/s, written/s by sink, live clients, queues; 0 for none")
	// The writers' flags, but what all wires itself (allWiredWriterFlags).
	// On a laptop, a missing InfluxDB database is created.
	sw := storagewriter.DefaultConfig()
	sw.Influx.CreateDatabase = true
	registerPrefixed(fs, "storage-writer.", sw.RegisterFlags, slices.Concat(allLinkFlags, allWiredWriterFlags, allResolveFlags)...)
	// The short forms all had before it exposed every writer flag.
	fs.Var(fs.Lookup("storage-writer.influx-url").Value, "influx-url", "InfluxDB `URL` for the influx sink: short for -storage-writer.influx-url")
	fs.Var(fs.Lookup("storage-writer.influx-database").Value, "influx-database", "InfluxDB `database` for the influx sink: short for -storage-writer.influx-database")
	links := slices.Concat(allLinkFlags, allResolveFlags) // all makes its own key and wires its own endpoints
	fe := frontend.DefaultConfig()
	registerPrefixed(fs, "frontend.", fe.RegisterFlags, slices.Concat(links, allFollowFlags, []string{"queue-dir", "routers", "registry"})...)
	rt := router.DefaultConfig()
	registerPrefixed(fs, "router.", rt.RegisterFlags, slices.Concat(links, allFollowFlags, []string{"queue-dir", "registry", "subscribers", "fixed-subscribers"})...)
	lf := livefeed.DefaultConfig()
	registerPrefixed(fs, "livefeed.", lf.RegisterFlags, slices.Concat(links, allFollowFlags, []string{"routers", "cache-dir"})...)
	simOpts := defaultSimOptions()
	registerPrefixed(fs, "sim.", simOpts.fleet.RegisterFlags, "frontends", "devices", "token-seed", "token-seed-file")
	apiCfg := api.DefaultConfig()
	registerPrefixed(fs, "api.", apiCfg.RegisterFlags, "data-dir", "follower-key-file")
	alertsCfg := alerts.DefaultConfig()
	registerPrefixed(fs, "alerts.", alertsCfg.RegisterFlags, append(slices.Clone(links),
		"routers", "name", "data-dir", "api-url", "api-key", "api-key-file", "api-ca-file", "lake-dir", "queue-max-bytes")...)
	alertsInflux := false
	fs.BoolVar(&alertsInflux, "alerts.influx", alertsInflux, "write the alerts measurement to the influx sink's InfluxDB too (with -sinks influx)")

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
		// The control plane, SQLite under DIR/api, built first: the data
		// path follows it (unless -registry names a file).
		apiCfg.DataDir = filepath.Join(dataDir, "api")
		apiCfg.FollowerKeyFile = filepath.Join(apiCfg.DataDir, "follower-key")
		if simDevices > 0 {
			// A simulated fleet is a development run: the livefeed may make
			// up a dev token (and log the map's URL with it).
			lf.Dev = true
			simOpts.fleet.Devices = simDevices
			simOpts.fleet.URLs = []string{frontendURL}
			spreadSimStarts(fs, &simOpts.fleet)
			simOpts.fleet.TokenSeed = "drover-all"
			simOpts.summary, simOpts.progress = "", 0
			if registryPath == "" {
				// Registered through the control plane, so that drover ctl
				// lists them; created when missing, so that what an
				// operator changed of them survives a restart.
				apiCfg.Seed = simSeed(simOpts.fleet)
			} else if err := sim.WriteRegistry(registryPath, simOpts.fleet); err != nil {
				return nil, fmt.Errorf("simulate: %w", err)
			}
		}
		wireMapEditing(&lf, &apiCfg)
		a, err := api.New(apiCfg, logger, reg)
		if err != nil {
			return nil, err
		}
		var store *registry.Store
		if registryPath != "" {
			if store, err = registry.NewStore(registryPath, logger, reg); err != nil {
				return nil, fmt.Errorf("registry: %w", err)
			}
			fe.Registry = registryPath
		} else {
			apiURL, err := loopbackHTTP("api.listen", apiCfg.Listen)
			if err != nil {
				return nil, err
			}
			follow := registry.DefaultFollowConfig()
			follow.API = apiclient.Config{URL: apiURL, KeyFile: apiCfg.FollowerKeyFile}
			follow.Cache = filepath.Join(dataDir, "registry.cache")
			follow.NotBefore = a.Started()
			if store, err = registry.NewFollower(follow, logger, reg); err != nil {
				return nil, fmt.Errorf("registry: %w", err)
			}
			fe.Follow.API = follow.API // presence reports
			lf.API, lf.CacheDir, lf.NotBefore = follow.API, filepath.Join(dataDir, "livefeed"), a.Started()
			lf.RegistryStore = store // hides the vehicles of retired devices
		}

		rt.QueueDir = filepath.Join(dataDir, "router")
		rt.RegistryStore = store
		rt.Subscribers = nil
		rt.FixedSubscribers = true
		rt.Links, fe.Links, lf.Links = linkCfg, linkCfg, linkCfg
		fe.QueueDir = filepath.Join(dataDir, "frontend")
		fe.RegistryStore = store
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
		// and the frontend first, the router (which the frontend drains to),
		// the registry, and the control plane (which the registry follows)
		// last.
		units := []unit{{name: "api", run: a.Run, ready: a.Ready}, {name: "registry", run: store.Run, ready: func() error { return nil }}}
		var writers []*storagewriter.Writer
		for _, sink := range sinks {
			cfg := sw
			cfg.Sink, cfg.Name = sink, ""
			cfg.Routers = []string{storeEndpoint}
			cfg.QueueDir = filepath.Join(dataDir, "storage-writer-"+sink)
			cfg.Lake.Dir = filepath.Join(dataDir, "lake")
			cfg.Links = linkCfg
			w, err := storagewriter.New(cfg, logger, reg)
			if err != nil {
				return nil, err
			}
			rt.Subscribers = append(rt.Subscribers, w.Name())
			writers = append(writers, w)
		}
		// The alert engine: a durable subscriber like the writers, its rule
		// set from -alerts.rules or else followed from the API of this
		// process (with its follower key), its lane read by the
		// livefeed, its alerts to the lake's alerts table (and InfluxDB).
		alertsCfg.Routers = []string{storeEndpoint}
		alertsCfg.DataDir = filepath.Join(dataDir, "alerts")
		alertsCfg.Links = linkCfg
		if alertsCfg.AlertPub, err = loopbackEndpoint("alerts.alert-pub", alertsCfg.AlertPub); err != nil {
			return nil, err
		}
		if slices.Contains(sinks, storagewriter.SinkLake) {
			alertsCfg.Lake.Dir = filepath.Join(dataDir, "lake-alerts")
		}
		if alertsInflux && slices.Contains(sinks, storagewriter.SinkInflux) {
			measurement := alertsCfg.Influx.Measurement
			alertsCfg.Influx = sw.Influx
			alertsCfg.Influx.Measurement = measurement
		}
		if alertsCfg.RulesFile == "" {
			if alertsCfg.APIURL, err = loopbackHTTP("api.listen", apiCfg.Listen); err != nil {
				return nil, err
			}
			keyFile := apiCfg.FollowerKeyFile
			alertsCfg.APIKeyFunc = func() (string, error) {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return "", fmt.Errorf("drover all follows the API with its follower key, and %w (give -alerts.rules FILE to use a rules file instead)", err)
				}
				return strings.TrimSpace(string(b)), nil
			}
		}
		alertsUnit, err := alerts.New(alertsCfg, logger, reg)
		if err != nil {
			return nil, err
		}
		rt.Subscribers = append(rt.Subscribers, alertsCfg.Name)
		lf.Alerts = []string{alertsCfg.AlertPub}

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
		if e := alertsUnit; e != nil {
			units = append(units, unit{name: "alerts", run: e.Run, ready: e.Ready})
		}
		f, err := frontend.New(fe, logger, reg)
		if err != nil {
			return nil, err
		}
		units = append(units, unit{name: "frontend", run: f.Run, ready: f.Ready})
		if simDevices > 0 {
			simOpts.waitFor = f.Ready
			su, err := newSim(simOpts, logger, reg)
			if err != nil {
				return nil, err
			}
			units = append(units, su...)
		}
		if g, ok := reg.(prometheus.Gatherer); ok && statusEvery > 0 {
			names := make([]string, len(writers))
			for i, w := range writers {
				names[i] = w.Name()
			}
			st := &status{g: g, w: os.Stdout, every: statusEvery, sinks: names, logger: logger}
			units = append(units, unit{name: "status", run: st.run, ready: func() error { return nil }})
		}
		return units, nil
	}
}

// allWiredWriterFlags are the storage writer's flags that drover all sets
// itself: one writer per -sinks entry, named after its sink, its queue and
// the lake under -data, connected to the router of the same process.
// allLinkFlags are the link flags of every component: drover all makes its
// own cluster key in memory, so it offers none of them.
var allLinkFlags = []string{"cluster-key-file", "insecure-links"}

var allWiredWriterFlags = []string{"routers", "sink", "name", "queue-dir", "lake-dir"}

// allResolveFlags say how dns+tcp:// router endpoints are followed: all
// connects its components to its one router on loopback.
var allResolveFlags = []string{"resolve-interval", "dns-server"}

// allFollowFlags are the flags of following the control plane, which
// drover all wires to its own API.
var allFollowFlags = []string{"registry-api", "registry-api-key", "registry-api-key-file", "registry-api-ca-file", "registry-cache"}

// simSeed is the simulated fleet as devices for the control plane to
// create (api.Config.Seed).
func simSeed(cfg sim.Config) []api.ImportRow {
	devs := sim.Devices(cfg)
	rows := make([]api.ImportRow, len(devs))
	for i, d := range devs {
		rows[i] = api.ImportRow{ID: d.ID, Fleet: d.Fleet, Class: d.Class, Region: d.Region, TokenSHA256: d.TokenSHA256}
	}
	return rows
}

// loopbackHTTP is the http:// URL on loopback of a server listening on
// addr.
func loopbackHTTP(flagName, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flagName, err)
	}
	if port == "0" {
		return "", fmt.Errorf("%s: %q: the frontend, router and livefeed follow the API at this address, so it needs a fixed port", flagName, addr)
	}
	return "http://" + net.JoinHostPort(loopbackHost(host), port), nil
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

// spreadSimStarts staggers the simulated devices' first connections over
// one reading period (-sim.connect-rate = devices × -sim.rate) unless
// -sim.connect-rate was given. A device's reading clock starts when it
// does, so with all of them starting at once every reading of the fleet was
// sent in the same few milliseconds of each second: 1,000 frames queued
// behind each other in the frontend, and the ack latency measured that
// burst (issue 20, docs/performance.md "All-in-one"). Real fleets are not
// phase-locked; this spreads the phases as theirs are.
func spreadSimStarts(fs *flag.FlagSet, cfg *sim.Config) {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "sim.connect-rate" })
	if given || cfg.Rate <= 0 || cfg.Devices <= 1 {
		return
	}
	cfg.ConnectRate = float64(cfg.Devices) * cfg.Rate
}
