package daemon

import (
	"os"
	"runtime"
)

// MinProcs is the fewest Ps (GOMAXPROCS) a drover process runs with.
//
// Go sets GOMAXPROCS from the CPUs the process may use: 1 under `taskset -c 0`, a one-CPU
// cpuset, or a CPU limit of 1 or less in a container. drover's components block in fsync on
// every group commit, and a goroutine blocked in a system call keeps its P until the runtime's
// monitor takes it back, which it checks less often the quieter the process has been (up to
// every 10 ms). With one P, every device's frame and ack waits behind each fsync for that long:
// measured here with the servers pinned to one core (docs/performance.md, "The hot path"), the
// device's ack p50 went from 250–570 ms with one P to 2–5 ms with two, at 10,000 readings/s.
// A second P costs nothing while the first is busy (it only runs when a thread is blocked), so
// drover asks for two; an operator's GOMAXPROCS is kept as given.
const MinProcs = 2

// EnsureMinProcs raises GOMAXPROCS to MinProcs unless the GOMAXPROCS environment variable sets
// it. It returns the value before and after.
func EnsureMinProcs() (before, after int) {
	before = runtime.GOMAXPROCS(0)
	if _, set := os.LookupEnv("GOMAXPROCS"); set || before >= MinProcs {
		return before, before
	}
	runtime.GOMAXPROCS(MinProcs)
	return before, MinProcs
}
