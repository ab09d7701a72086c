package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// unit is one component of a target as the run group and /readyz see it.
type unit struct {
	name  string
	run   func(ctx context.Context) error
	ready func() error
}

// buildFunc builds a target's units once its flags are parsed; an error is a
// configuration error.
type buildFunc func(logger *slog.Logger, reg prometheus.Registerer) ([]unit, error)

// target is a long-running command: its own flags, then the common ones
// (ops server, logging, shutdown deadline), then the daemon plumbing.
type target struct {
	name      string
	summary   string
	opsListen string // default ops address: loopback, a port per target
	help      string // more about the command for -h, if the summary is not enough
	// setup defines the target's flags in fs and returns what builds it.
	setup func(fs *flag.FlagSet) buildFunc
	// subcommands are one-shot commands under the target's name (drover
	// storage-writer replay), run instead of the daemon when named first.
	subcommands map[string]func(args []string, stdout, stderr io.Writer) int
}

// envPrefix is the environment prefix of a command's flags: DROVER_FRONTEND,
// DROVER_STORAGE_WRITER. The commands of one group share theirs: "registry
// add" reads DROVER_REGISTRY_FILE, as "registry check" does.
func envPrefix(command string) string {
	command, _, _ = strings.Cut(command, " ")
	return daemon.EnvName("DROVER", command)
}

// main parses args, builds the target's units, serves /metrics, /healthz and
// /readyz, runs until a signal or a failure, and returns the exit status.
func (t target) main(_ string, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if sub, ok := t.subcommands[args[0]]; ok {
			return sub(args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("drover "+t.name, flag.ContinueOnError)
	build := t.setup(fs)
	opsCfg := daemon.OpsConfig{Listen: t.opsListen}
	opsCfg.RegisterFlags(fs)
	logCfg := daemon.DefaultLogConfig()
	logCfg.RegisterFlags(fs)
	shutdownTimeout := daemon.DefaultShutdownTimeout
	fs.DurationVar(&shutdownTimeout, "shutdown-timeout", shutdownTimeout,
		"longest graceful stop (`duration`, e.g. 30s) before the process exits anyway")
	if code, ok := parseFlags(fs, t.name, t.summary, t.help, args, stdout, stderr); !ok {
		return code
	}

	logger, err := logCfg.NewLogger(stderr)
	if err == nil {
		err = opsCfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", t.name, err)
		return 2
	}
	reg := prometheus.NewRegistry()
	b := readBuildInfo()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "drover_build_info",
			Help:        "Always 1; the labels say what is running.",
			ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "goversion": b.GoVersion, "target": t.name},
		}, func() float64 { return 1 }),
	)
	units, err := build(logger, reg)
	if err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", t.name, err)
		return 2
	}

	ops, err := daemon.NewOps(opsCfg, reg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", t.name, err)
		return 2
	}
	group := daemon.Group{Logger: logger, ShutdownTimeout: shutdownTimeout}
	// Added first, so stopped last: metrics and probes answer while the
	// components drain.
	group.Add("ops", ops.Run)
	for _, u := range units {
		ops.AddReadyCheck(u.name, u.ready)
		group.Add(u.name, u.run)
	}
	ctx, stop := daemon.SignalContext(context.Background(), logger)
	defer stop()
	procsBefore, procs := daemon.EnsureMinProcs()
	logger.Info("starting", "target", t.name, "version", b.Version, "commit", b.Commit, "gomaxprocs", procs)
	if procs != procsBefore {
		logger.Info("GOMAXPROCS raised: one P would stall every goroutine behind each fsync (set GOMAXPROCS to choose)",
			"from", procsBefore, "to", procs)
	}
	if err := group.Run(ctx); err != nil {
		logger.Error("stopped with error", "target", t.name, "err", err)
		return 1
	}
	logger.Info("stopped", "target", t.name)
	return 0
}

// parseFlags binds the environment to fs and parses args. -h prints the
// command's usage to stdout; an error prints it to stderr. When ok is false
// the command must return code.
func parseFlags(fs *flag.FlagSet, name, summary, help string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	return parseFlagsEnv(fs, name, envPrefix(name), summary, help, args, stdout, stderr)
}

// parseFlagsEnv is parseFlags with the environment prefix given.
func parseFlagsEnv(fs *flag.FlagSet, name, prefix, summary, help string, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: drover %s [flags]\n\n%s.\n", name, upperFirst(summary))
		if help != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(help))
		}
		fmt.Fprintf(w, "\nFlags (each also read from $%s_<FLAG>; a flag given here wins):\n", prefix)
		fs.PrintDefaults()
	}
	if err := daemon.BindEnv(fs, prefix); err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", name, err)
		return 2, false
	}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = stdout.Write(out.Bytes())
		return 0, false
	case err != nil:
		_, _ = stderr.Write(out.Bytes())
		return 2, false
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "drover %s: unexpected arguments %q\n", name, fs.Args())
		return 2, false
	}
	if err := daemon.CheckSecrets(fs); err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", name, err)
		return 2, false
	}
	return 0, true
}

// registerPrefixed defines the flags that register would define, named
// prefix+name and bound to the same values, leaving out those in skip.
func registerPrefixed(fs *flag.FlagSet, prefix string, register func(*flag.FlagSet), skip ...string) {
	inner := flag.NewFlagSet(prefix, flag.ContinueOnError)
	register(inner)
	inner.VisitAll(func(f *flag.Flag) {
		for _, s := range skip {
			if f.Name == s {
				return
			}
		}
		fs.Var(f.Value, prefix+f.Name, f.Usage)
	})
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
