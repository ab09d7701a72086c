// Command benchreport turns the results of scripts/bench-e2e.sh into documentation: the
// markdown tables between the bench-e2e markers of docs/performance.md (the rest of the
// document is left as it is) and PNG plots of throughput and latency over time in docs/img/.
//
//	(cd internal/bench/benchreport && go build -o /tmp/benchreport .)
//	/tmp/benchreport -results bench-out/e2e -doc docs/performance.md -img docs/img
//
// It is a Go module of its own (go.mod here, replace directive to the
// repository root), as bench/natspeer is: its plotting library, gonum/plot,
// stays out of drover's go.mod. make test vets and tests it.
//
// Scenarios that were not run (SCENARIOS picks a subset) are marked as such in the tables.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	var (
		results = flag.String("results", "bench-out/e2e", "the `dir` bench-e2e.sh wrote (one folder per scenario, run.json)")
		doc     = flag.String("doc", "docs/performance.md", "the markdown `file` whose bench-e2e section to replace")
		img     = flag.String("img", "docs/img", "write the plots into this `dir`")
	)
	flag.Parse()
	if err := generate(*results, *doc, *img); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}
