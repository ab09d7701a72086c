// Command drover is the one binary of the drover telemetry pipeline. Each
// component is a subcommand: drover frontend, router, storage-writer,
// livefeed; drover all runs them all in one process, drover sim drives a
// simulated fleet, drover api is the control plane and drover ctl its
// command-line client, and drover version says what was built.
//
// Every flag of a subcommand can also come from the environment, as
// DROVER_<COMMAND>_<FLAG> in upper case with "-" and "." turned into "_"
// (DROVER_FRONTEND_QUEUE_DIR, DROVER_ALL_ROUTER_LISTEN); a flag on the
// command line wins. Exit status: 0 after a clean stop, 1 after a failure,
// 2 for a usage or configuration error.
package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/drover-telemetry/drover/api/ctl"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one subcommand of drover.
type command struct {
	name    string
	summary string
	run     func(name string, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	cmds := []command{}
	for _, t := range targets() {
		cmds = append(cmds, command{name: t.name, summary: t.summary, run: t.main})
	}
	cmds = append(cmds, command{name: "registry", summary: registrySummary, run: runRegistry})
	cmds = append(cmds, command{name: "ctl", summary: "operator tasks against drover api: add, import, export, list, suspend devices; rotate tokens; live-client tokens",
		run: func(_ string, args []string, stdout, stderr io.Writer) int { return ctl.Main(args, stdout, stderr) }})
	return append(cmds, command{name: "version", summary: "print the version, commit and Go version", run: runVersion})
}

// run dispatches args to a subcommand and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(c.name, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "drover: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: drover <command> [flags]

drover carries vehicle telemetry from devices to storage and to live screens
without losing an acknowledged reading. Each component is a command of this
one binary.

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprint(w, `
Every flag can also be set in the environment as DROVER_<COMMAND>_<FLAG>,
upper case, with - and . as _ (e.g. DROVER_FRONTEND_QUEUE_DIR); a flag given
on the command line wins over the environment.

Run 'drover <command> -h' for the flags of a command.
`)
}
