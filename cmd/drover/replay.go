package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/storagewriter"
)

const replayHelp = `
Writes the records of a storage writer's dead-letter files (the records its
sink refused for good) to the sink again, once the cause is fixed: a field
type changed in InfluxDB, a retention policy too short, a bug fixed. Give it
the writer's own flags (or its environment: the same DROVER_STORAGE_WRITER_*
variables): it finds the files in the writer's -dead-letter-dir and builds
the sink as the writer does. The sinks are idempotent, so replaying a record
twice is harmless.

What the sink still refuses goes, with the new reason, to a new dead-letter
file, and so do the lines that hold no record (undecodable queue entries);
then each replayed file is removed (unless -keep). A running writer's
current file is skipped: it is closed at the writer's next start or after
-dead-letter-file-age. With the lake, the replay's files are named
NAME-replay-*.parquet.

Prints one line per file and a summary to standard output. Exit status: 0
when every record is now in the sink; 1 when something is left (skipped,
refused again, carried over) or the sink failed; 2 for a usage error.`

// runReplay is drover storage-writer replay.
func runReplay(args []string, stdout, stderr io.Writer) int {
	const name = "storage-writer replay"
	fs := flag.NewFlagSet("drover "+name, flag.ContinueOnError)
	cfg := storagewriter.DefaultConfig()
	cfg.RegisterFlags(fs)
	var opts storagewriter.ReplayOptions
	fs.Var((*daemon.StringList)(&opts.Files), "files",
		"comma-separated dead-letter `files` to replay (default: every file of this writer in -dead-letter-dir, oldest first)")
	fs.BoolVar(&opts.Keep, "keep", false, "keep the replayed files (default: remove each once its lines are in the sink or a new dead-letter file)")
	opts.RetryFor = storagewriter.DefaultReplayRetryFor
	fs.DurationVar(&opts.RetryFor, "retry-for", opts.RetryFor,
		"how long (`duration`) a transient sink failure (store down) is retried before the replay gives up")
	logCfg := daemon.DefaultLogConfig()
	logCfg.RegisterFlags(fs)
	// The writer's environment applies: kubectl exec into a writer's pod
	// and run the replay with the same configuration.
	if code, ok := parseFlagsEnv(fs, name, envPrefix("storage-writer"), "replay dead-letter files into the writer's sink", replayHelp, args, stdout, stderr); !ok {
		return code
	}
	// A replay writes to the sink and dials no router: the writer's link
	// settings do not matter, and it needs no cluster key.
	if cfg.Links.KeyFile == "" && len(cfg.Links.Keys) == 0 {
		cfg.Links.Insecure = true
	}
	logger, err := logCfg.NewLogger(stderr)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", name, err)
		return 2
	}
	ctx, stop := daemon.SignalContext(context.Background(), logger)
	defer stop()
	rep, err := storagewriter.Replay(ctx, cfg, opts, logger)
	printReplay(stdout, rep)
	if err != nil {
		fmt.Fprintf(stderr, "drover %s: %v\n", name, err)
		return 1
	}
	if !rep.Done() {
		return 1
	}
	return 0
}

// printReplay writes one line per file and a summary.
func printReplay(w io.Writer, rep storagewriter.ReplayReport) {
	var written, refused, carried, left int
	for _, f := range rep.Files {
		written += f.Written
		refused += f.RefusedAgain
		carried += f.CarriedOver
		switch {
		case f.Skipped != "":
			left++
			fmt.Fprintf(w, "skipped  %s: %s\n", f.Path, f.Skipped)
			continue
		case f.Err != nil:
			left++
			fmt.Fprintf(w, "failed   %s: %d records written before: %v; the file is kept\n", f.Path, f.Written, f.Err)
			continue
		}
		var parts []string
		parts = append(parts, fmt.Sprintf("%d records: %d written, %d refused again", f.Records, f.Written, f.RefusedAgain))
		if f.CarriedOver > 0 {
			parts = append(parts, fmt.Sprintf("%d lines without a record carried over", f.CarriedOver))
		}
		if f.Torn > 0 {
			parts = append(parts, fmt.Sprintf("%d torn last line dropped (its record was dead-lettered again)", f.Torn))
		}
		if f.Removed {
			parts = append(parts, "removed")
		} else {
			parts = append(parts, "kept")
		}
		fmt.Fprintf(w, "replayed %s: %s\n", f.Path, strings.Join(parts, "; "))
	}
	for _, p := range rep.NewFiles {
		fmt.Fprintf(w, "new dead-letter file %s (what was refused again or carried over)\n", p)
	}
	status := "done: every record is in the sink"
	if !rep.Done() {
		status = "not done: see the lines above"
	}
	fmt.Fprintf(w, "%d files: %d records written, %d refused again, %d lines carried over, %d files skipped or failed; %s\n",
		len(rep.Files), written, refused, carried, left, status)
}
